"""Turning pydantic validation errors into messages for the person editing the YAML.

Used for the whole spec and for each solver/scorer/tool section. Component factories receive
only their own section, so they prefix every location with the section's name
(``solver.max_turns: expected an integer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from proctor.errors import SpecError

M = TypeVar("M", bound=BaseModel)

_PLAIN = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key (check its spelling; see docs/spec.md)",
}


def plain_message(err: Any) -> str:
    """One pydantic error as a short sentence, with the offending value where it helps."""
    msg: str = _PLAIN.get(err["type"], err["msg"].removeprefix("Value error, "))
    given = err.get("input")
    if err["type"] not in ("missing", "extra_forbidden") and isinstance(given, (str, int, float, bool)):
        msg = f"{msg} (got {given!r})"
    return msg


def location(parts: Any) -> str:
    """``models.subject.retry`` / ``tools[2].timeout`` from a pydantic location tuple."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts if not _noise(p)).lstrip(".")


def format_errors(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = location(err["loc"])
        key = f"{where}.{loc}" if loc and not loc.startswith("[") else f"{where}{loc}"
        lines.append(f"{key}: {plain_message(err)}")
    return "; ".join(dict.fromkeys(lines))


def _noise(part: Any) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "float"} or "[" in part or part.startswith("function-"))


def validate_options(model: type[M], data: Mapping[str, Any], where: str) -> M:
    """``model.model_validate(data)``, errors raised as a ``SpecError`` naming ``where.key``."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping of options")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(format_errors(where, exc)) from None
