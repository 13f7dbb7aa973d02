"""A matrix of evaluations: every spec given, crossed with every ``--model`` given for each role.

``proctor submit`` queues the matrix on a server as one batch, and ``proctor run --parallel K``
runs it here; both expand it with ``expand`` so that they mean the same thing by it. A role named
once (``--model judge=...``) applies to every cell; a role named several times multiplies the
cells. The ``ROLE=URL@NAME`` values themselves are parsed by their one owner,
``proctor.evals.spec.apply_model_override``, when each cell is run: here only the role before
``=`` is looked at, to group them.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from proctor.errors import CRASH_EXIT_CODE, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_SAMPLE_ERRORS

CODES_BEST_TO_WORST = (EXIT_OK, EXIT_SAMPLE_ERRORS, EXIT_INTERRUPTED, EXIT_BAD_INPUT, CRASH_EXIT_CODE)
"""Exit codes of ``proctor run`` from best to worst: done, some samples errored, interrupted, bad
input, crashed. A matrix exits with the worst of its runs' codes."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One evaluation of the matrix: a spec and the ``--model`` values it runs with."""

    spec: Path
    models: tuple[str, ...]
    """One ``ROLE=URL@NAME`` per role that was named, in the order the roles were first given."""
    varied: tuple[str, ...]
    """The values among ``models`` whose role was named more than once: what sets this cell apart."""

    @property
    def varied_roles(self) -> tuple[str, ...]:
        return tuple(_role(value) for value in self.varied)

    def label(self, names: Mapping[str, str]) -> str:
        """The models that set this cell apart, as a table shows them (``qwen``, or
        ``subject=qwen judge=gpt``); the subject's when none varies.

        ``names``: each role's model name (or URL), as the caller's parser of ``ROLE=URL@NAME``
        read this cell's models.
        """
        roles = self.varied_roles or ("subject",)
        if len(roles) == 1:
            return names.get(roles[0]) or "-"
        return " ".join(f"{role}={names.get(role) or '-'}" for role in roles)


def _role(value: str) -> str:
    return value.partition("=")[0]


def is_matrix(specs: Sequence[Path], models: Sequence[str]) -> bool:
    """More than one evaluation: several specs, or one role named by several ``--model`` values."""
    roles = [_role(m) for m in models]
    return len(specs) > 1 or len(roles) != len(set(roles))


def expand(specs: Sequence[Path], models: Sequence[str]) -> list[Cell]:
    """The cross product, spec by spec, then in the order the models were given."""
    by_role: dict[str, list[str]] = {}
    for value in models:
        by_role.setdefault(_role(value), [])
        if value not in by_role[_role(value)]:
            by_role[_role(value)].append(value)
    varies = {role for role, values in by_role.items() if len(values) > 1}
    cells = []
    for spec in specs:
        for combo in itertools.product(*by_role.values()):
            varied = tuple(value for value in combo if _role(value) in varies)
            cells.append(Cell(spec=spec, models=tuple(combo), varied=varied))
    return cells


def run_names(cells: Sequence[Cell], task_names: Sequence[str], labels: Sequence[str]) -> list[str]:
    """A run directory name per cell, the same on every invocation of the same command.

    ``TASK`` alone when no model varies (what a single ``proctor run`` would use), else
    ``TASK--LABEL`` (``Cell.label``); names that would still collide (two specs named alike, one
    model name on two URLs) get a short digest of the cell's spec path and models.
    """
    names = [
        _slug(task if not cell.varied else f"{task}--{label}")
        for cell, task, label in zip(cells, task_names, labels, strict=True)
    ]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name}-{_digest(cell)}" if counts[name] > 1 else name for name, cell in zip(names, cells, strict=True)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-.")[:100] or "run"


def _digest(cell: Cell) -> str:
    key = "\n".join([str(cell.spec.resolve()), *cell.models])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def worst_exit(codes: Iterable[int]) -> int:
    """The worst exit code by ``CODES_BEST_TO_WORST``; any other code (a signal, say) counts as a crash."""
    rank = {code: i for i, code in enumerate(CODES_BEST_TO_WORST)}
    return CODES_BEST_TO_WORST[max((rank.get(code, len(CODES_BEST_TO_WORST) - 1) for code in codes), default=0)]


def new_batch_id() -> str:
    """``b`` and 80 random bits in lower-case base32: a valid job-id-shaped token, safe in any shell."""
    return "b" + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()
