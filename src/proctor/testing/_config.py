"""Configuration of the fake LLM server.

A plain frozen dataclass rather than a pydantic model: the server reads these fields on every
request, and attribute access on a dataclass costs nothing, while the contract (names, defaults)
stays as explicit as a schema. Validation happens once, when a config is built or changed, and
raises ``proctor.errors.InputError`` so the CLI and ``POST /_config`` report it like any other
bad input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from proctor.errors import InputError

__all__ = ["FakeLLMConfig"]


@dataclass(frozen=True, slots=True)
class FakeLLMConfig:
    """How the fake server behaves; every field can be changed at runtime with ``reconfigure``.

    Frozen so that a running handler always sees one consistent config: ``reconfigure`` swaps the
    whole object instead of mutating fields under a request that is half-way through.
    """

    latency: float = 0.0
    """Seconds each request waits before replying; a streamed reply spreads it over its chunks."""
    jitter: float = 0.0
    """Uniform +/- seconds added to ``latency`` (the sum is clamped at 0)."""
    model: str = "fake"
    """The only model name served; a request naming another one gets 404 ``model_not_found``."""
    reply: str = "echo"
    """``"echo"`` (last user message), ``"arith"`` (solve ``a op b``) or a fixed reply text."""
    answers: dict[str, str] = field(default_factory=dict)
    """Substring of the last user message -> reply; first match wins, checked before ``reply``."""
    script: list[dict[str, Any]] = field(default_factory=list)
    """Assistant turns for tool-calling conversations, indexed by the number of assistant
    messages already in the request (clamped to the last entry)."""
    fail_rate: float = 0.0
    """Probability of an HTTP 500."""
    rate_limit_rate: float = 0.0
    """Probability of an HTTP 429 carrying ``Retry-After: retry_after``."""
    retry_after: float = 0.05
    """Seconds sent in ``Retry-After`` with random 429s and ``max_concurrency`` 429s."""
    hang_rate: float = 0.0
    """Probability that a request sleeps ``hang_seconds`` before replying normally."""
    hang_seconds: float = 3600.0
    """How long a hanging request sleeps; tests set this short to see the reply arrive."""
    max_rps: float | None = None
    """Token-bucket limit over all requests (burst = ``max_rps``); excess gets 429."""
    max_concurrency: int | None = None
    """More chat/completion requests in flight than this get 429."""
    fail_samples: dict[str, int] = field(default_factory=dict)
    """Sample key -> how many of its first requests get 500 (``-1``: every request)."""
    context_limit: int | None = None
    """Total characters of message contents above this get 400 ``context_length_exceeded``."""
    require_key: str | None = None
    """If set, requests without ``Authorization: Bearer <key>`` get 401."""
    seed: int = 0
    """Seed of the RNG behind fail/rate-limit/hang/jitter, so fault patterns are reproducible."""

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FakeLLMConfig:
        """Build a config from JSON-like data, rejecting unknown keys by name.

        Unknown keys are an error rather than ignored because a typo (``fail_rat``) would
        otherwise silently turn a fault-injection test into a test of nothing.
        """
        if not isinstance(data, dict):
            raise InputError(f"fake LLM config must be a JSON object, got {type(data).__name__}")
        _check_names(data)
        return cls(**data)

    def replace(self, **changes: Any) -> FakeLLMConfig:
        """Return a copy with ``changes`` applied (validated like a new config)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view, used by ``POST /_config`` replies and by ``FakeLLMProcess``."""
        return dataclasses.asdict(self)


_FIELDS = frozenset(f.name for f in dataclasses.fields(FakeLLMConfig))


def _check_names(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InputError(
            f"unknown fake LLM config field(s): {', '.join(unknown)}",
            hint=f"known fields: {', '.join(sorted(_FIELDS))}",
        )


def _number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f"fake LLM config: {name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"fake LLM config: {name} must be in [{low}, {high}], got {value!r}")


def _validate(cfg: FakeLLMConfig) -> None:
    """Check every field once, so the hot path can trust the config without checks."""
    for name in ("latency", "jitter", "retry_after", "hang_seconds"):
        _number(name, getattr(cfg, name))
    for name in ("fail_rate", "rate_limit_rate", "hang_rate"):
        _number(name, getattr(cfg, name), high=1.0)
    if cfg.max_rps is not None:
        _number("max_rps", cfg.max_rps)
        if cfg.max_rps <= 0:
            raise InputError("fake LLM config: max_rps must be > 0 (use null for no limit)")
    for name in ("max_concurrency", "context_limit"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InputError(f"fake LLM config: {name} must be a non-negative integer or null")
    if not isinstance(cfg.model, str) or not cfg.model:
        raise InputError("fake LLM config: model must be a non-empty string")
    if not isinstance(cfg.reply, str):
        raise InputError("fake LLM config: reply must be a string")
    if cfg.require_key is not None and not isinstance(cfg.require_key, str):
        raise InputError("fake LLM config: require_key must be a string or null")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise InputError("fake LLM config: seed must be an integer")
    if not isinstance(cfg.answers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in cfg.answers.items()
    ):
        raise InputError("fake LLM config: answers must map strings to strings")
    if not isinstance(cfg.fail_samples, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= -1
        for k, v in cfg.fail_samples.items()
    ):
        raise InputError("fake LLM config: fail_samples must map sample keys to integers >= -1")
    if not isinstance(cfg.script, list):
        raise InputError("fake LLM config: script must be a list of assistant turns")
    for i, turn in enumerate(cfg.script):
        _validate_turn(i, turn)


def _validate_turn(i: int, turn: Any) -> None:
    where = f"fake LLM config: script[{i}]"
    if not isinstance(turn, dict):
        raise InputError(f"{where} must be an object")
    unknown = set(turn) - {"content", "content_from", "tool_calls"}
    if unknown:
        raise InputError(f"{where} has unknown key(s): {', '.join(sorted(unknown))}")
    if "content" in turn and turn["content"] is not None and not isinstance(turn["content"], str):
        raise InputError(f"{where}.content must be a string or null")
    if "content_from" in turn and not isinstance(turn["content_from"], str):
        raise InputError(f"{where}.content_from must be a reply mode string")
    calls = turn.get("tool_calls", [])
    if not isinstance(calls, list):
        raise InputError(f"{where}.tool_calls must be a list")
    for j, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise InputError(f"{where}.tool_calls[{j}] needs a string 'name'")
        args = call.get("arguments", {})
        if not isinstance(args, (dict, str)):
            raise InputError(f"{where}.tool_calls[{j}].arguments must be an object or a JSON string")
