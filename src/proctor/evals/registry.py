"""Resolving ``solver:`` / ``scorer:`` types to their implementations.

Built-ins register themselves on import; heavier ones (the agent loop, the judge) are imported
only when a spec names them, so a plain run does not pay for them at start-up.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from proctor.errors import SpecError
from proctor.evals.spec import ComponentConfig
from proctor.evals.types import SCORERS, SOLVERS, Scorer, Solver

_LAZY_SOLVERS = {"agent": "proctor.evals.agent"}
_LAZY_SCORERS = {"judge": "proctor.evals.judge", "busy_numeric": "proctor.testing.busy"}


def _ensure_builtins() -> None:
    importlib.import_module("proctor.evals.solvers")
    importlib.import_module("proctor.evals.scorers")


def _lookup(kind: str, config: ComponentConfig, registry: dict[str, Any], lazy: dict[str, str]) -> Any:
    _ensure_builtins()
    if config.type not in registry and config.type in lazy:
        importlib.import_module(lazy[config.type])
    if config.type not in registry and "." in config.type:
        # A custom component given as "package.module:factory" or "package.module.factory".
        module_name, _, attr = config.type.replace(":", ".").rpartition(".")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise SpecError(f"{kind}.type: cannot load {config.type!r}: {exc}") from None
    if config.type not in registry:
        known = ", ".join(sorted({*registry, *lazy}))
        raise SpecError(f"{kind}.type: unknown {kind} {config.type!r}; known: {known}")
    return registry[config.type]


def build_solver(config: ComponentConfig, *, base_dir: Path | None = None) -> Solver:
    """A factory marked ``resolves_paths`` gets the spec's folder as ``base_dir`` (unless the spec
    gives one), so relative paths in its options mean the same as everywhere else in a spec."""
    factory = _lookup("solver", config, SOLVERS, _LAZY_SOLVERS)
    options = config.options
    if base_dir is not None and getattr(factory, "resolves_paths", False):
        options.setdefault("base_dir", str(base_dir))
    return factory(options)  # type: ignore[no-any-return]


def build_scorer(config: ComponentConfig) -> Scorer:
    factory = _lookup("scorer", config, SCORERS, _LAZY_SCORERS)
    return factory(config.options)  # type: ignore[no-any-return]
