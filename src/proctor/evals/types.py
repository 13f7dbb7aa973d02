"""The shapes that flow through a run: sample → solver → result → scorer → score.

Solvers and scorers are registered by name so that a spec can say ``solver: agent`` and a
plug-in (or another part of proctor) can add its own without touching the runner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from proctor.models.router import ModelRouter
    from proctor.models.types import EventSink


@dataclass(slots=True)
class Sample:
    """One dataset row, mapped to proctor's fields."""

    id: str
    input: str | list[dict[str, Any]]
    """A prompt, or a list of chat messages."""
    target: str | list[str] | None = None
    choices: list[str] | None = None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    """Image URLs / data URLs for multimodal questions."""


class SampleSkipped(Exception):
    """A solver cannot run this sample at all (e.g. an image question for a text-only model).

    Not an error: the sample is counted under its reason and left out of the accuracy.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class SolveResult:
    """What a solver produced for one sample."""

    output: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The full trajectory (every message sent and received)."""
    tokens_in: int = 0
    tokens_out: int = 0
    model_calls: int = 0
    outcome: str | None = None
    """A model outcome other than an answer, e.g. ``context_overflow`` or ``turn_limit``."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Score:
    """A scorer's verdict on one sample."""

    value: float
    """1.0 correct, 0.0 wrong; partial credit in between."""
    answer: str | None = None
    """What the scorer extracted from the output and compared."""
    explanation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class SolveContext:
    """What a solver may use besides the sample."""

    models: ModelRouter
    emit: EventSink
    run_dir: Path | None = None
    deadline: float | None = None
    """``time.monotonic()`` by which the sample must finish, if the spec sets a time limit."""

    def remaining(self) -> float | None:
        """Seconds left before the sample's deadline, or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


class Solver(Protocol):
    async def __call__(self, sample: Sample, ctx: SolveContext) -> SolveResult: ...


class Scorer(Protocol):
    needs_models: bool
    """True when scoring calls a model (a judge); rescoring then needs the model roles."""

    async def __call__(self, sample: Sample, result: SolveResult, ctx: SolveContext) -> Score: ...


SolverFactory = Callable[[Mapping[str, Any]], Solver]
"""Builds a solver from its spec section (the mapping under ``solver:``, minus ``type``)."""
ScorerFactory = Callable[[Mapping[str, Any]], Scorer]

SOLVERS: dict[str, SolverFactory] = {}
SCORERS: dict[str, ScorerFactory] = {}


def register_solver(name: str) -> Callable[[SolverFactory], SolverFactory]:
    def deco(factory: SolverFactory) -> SolverFactory:
        SOLVERS[name] = factory
        return factory

    return deco


def register_scorer(name: str) -> Callable[[ScorerFactory], ScorerFactory]:
    def deco(factory: ScorerFactory) -> ScorerFactory:
        SCORERS[name] = factory
        return factory

    return deco


AsyncFn = Callable[..., Awaitable[Any]]
