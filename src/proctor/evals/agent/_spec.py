"""Turning pydantic validation errors of a solver/scorer section into one ``SpecError``.

The factories receive only their own section of the spec, so they prefix every location with
the section's name (``solver.max_turns: expected an integer``) for the person editing the YAML.
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
    "extra_forbidden": "unknown key (check its spelling; see docs/agents.md)",
}


def format_errors(where: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"] if not _noise(p))
        msg = _PLAIN.get(err["type"], err["msg"])
        given = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and isinstance(given, (str, int, float, bool)):
            msg = f"{msg} (got {given!r})"
        lines.append(f"{where}{loc}: {msg}")
    return "; ".join(dict.fromkeys(lines))


def _noise(part: Any) -> bool:
    return isinstance(part, str) and (part in {"str", "int", "float"} or "[" in part or part.startswith("function-"))


def validate(model: type[M], data: Mapping[str, Any], where: str) -> M:
    """``model.model_validate(data)``, errors raised as a ``SpecError`` naming ``where.key``."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping of options")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(format_errors(where, exc)) from None
