"""The tool interface of the agent solver, and the one place where a tool call is executed.

A tool is a name, a description, a JSON schema for its arguments, a timeout and an async ``run``.
Everything that can go wrong in a tool (bad arguments, a timeout, a crash, an unreachable service)
comes back to the model as an error *message*, so one flaky tool never kills a sample: the model
may retry or work around it, and the trajectory shows exactly what it saw. Only failures of model
infrastructure (``InfraError`` from an expert's model call) and aborts propagate, because those
are not the model's fault and must never be scored.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from proctor.errors import ContextOverflowError, InfraError, ModelAbortError, ProctorError, ToolError

if TYPE_CHECKING:
    from proctor.evals.types import Sample, SolveContext
    from proctor.profiling.events import ToolEvent

__all__ = ["Tool", "ToolCall", "ToolCallContext", "ToolOutcome", "invoke_tool", "validate_args"]


@dataclass(slots=True)
class ToolCall:
    """One call the model asked for, already separated from the message it came in."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    """Parsed arguments, or None when they were not a JSON object (see ``parse_error``)."""
    raw_arguments: str = ""
    parse_error: str | None = None


@dataclass(slots=True)
class ToolCallContext:
    """What a running tool may use and where it reports its sub-steps.

    ``steps`` and ``info`` end up in the tool's event, so a tool that calls an expert model and
    then runs code can say how long each part took, and which expert answered.
    """

    sample: Sample
    solve: SolveContext
    call_id: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one sub-step (``query_writing``, ``retrieval``, ``execution``...); repeats add up."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - t0


class Tool(ABC):
    """A function the model can call.

    Subclasses set ``name``, ``description``, ``parameters`` (a JSON schema of an object) and
    ``timeout``; ``final`` tools end the sample, their result becoming the answer.
    """

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    timeout: float = 60.0
    final: bool = False

    @abstractmethod
    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        """Do the work; raise ``ToolError`` with a message meant for the model on failure."""

    def schema(self) -> dict[str, Any]:
        """The tool in the OpenAI ``tools`` format."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def aclose(self) -> None:  # noqa: B027 - optional hook: a no-op unless a tool holds resources
        """Release what the tool holds (sessions, processes); called once at the end of a run."""


@dataclass(slots=True)
class ToolOutcome:
    """A finished tool call: the text the model sees, and what the trajectory records."""

    call: ToolCall
    content: str
    status: str
    """``ok``, ``error`` (the tool failed), ``invalid`` (bad call) or ``timeout``."""
    start: float
    duration: float
    steps: dict[str, float]
    info: dict[str, Any]
    final: bool = False


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def validate_args(tool: Tool, args: dict[str, Any]) -> str | None:
    """A light check of ``args`` against the tool's schema: required keys and top-level types.

    Numbers given for string parameters are converted in place (the one coercion allowed).

    Deliberately small (no jsonschema dependency): its only job is to turn the common mistakes of
    small models into a message they can act on instead of a ``KeyError`` deep in a tool.
    """
    props = tool.parameters.get("properties", {})
    for key, value in args.items():  # small models send 42 for "42": accept it, as text
        if (
            props.get(key, {}).get("type") == "string"
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            args[key] = str(value)
    missing = [k for k in tool.parameters.get("required", []) if k not in args]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    for key, value in args.items():
        spec = props.get(key)
        if spec is None:
            if tool.parameters.get("additionalProperties") is False:
                return f"unknown argument {key!r}; expected: {', '.join(props) or 'none'}"
            continue
        expected = spec.get("type")
        if isinstance(expected, str) and expected in _JSON_TYPES:
            ok = isinstance(value, _JSON_TYPES[expected]) and not (
                expected in ("integer", "number") and isinstance(value, bool)
            )
            if not ok:
                return f"argument {key!r} must be of type {expected}, got {type(value).__name__}"
        if "enum" in spec and value not in spec["enum"]:
            return f"argument {key!r} must be one of {spec['enum']}, got {value!r}"
    return None


async def invoke_tool(
    tools: dict[str, Tool],
    call: ToolCall,
    ctx: ToolCallContext,
    *,
    turn: int,
    deadline: float | None = None,
) -> ToolOutcome:
    """Run one call to completion and emit its event; never raises except for model infra/aborts.

    The timeout is the tool's own, shortened to the sample's ``deadline`` (a ``time.monotonic``)
    so a slow tool cannot carry a sample past its wall-time limit.
    """
    start = time.time()
    t0 = time.perf_counter()
    tool = tools.get(call.name)
    status = "ok"
    final = False
    if tool is None:
        status = "invalid"
        content = f"error: unknown tool {call.name!r}; available tools: {', '.join(sorted(tools))}"
    elif call.arguments is None:
        status = "invalid"
        content = f"error: the arguments of {call.name} are not a JSON object ({call.parse_error}); got: {call.raw_arguments[:200]}"
    elif (problem := validate_args(tool, call.arguments)) is not None:
        status = "invalid"
        content = f"error: bad call of {call.name}: {problem}"
    else:
        timeout = tool.timeout
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
        try:
            async with asyncio.timeout(timeout) as scope:
                content = await tool.run(call.arguments, ctx)
            final = tool.final
        except TimeoutError:
            if not scope.expired():
                raise
            status = "timeout"
            content = f"error: {call.name} timed out after {timeout:.1f}s"
        except (InfraError, ModelAbortError) as exc:
            ctx.solve.emit(_event(call, ctx, start, time.perf_counter() - t0, "infra_error", turn, str(exc)))
            raise
        except ToolError as exc:
            status = "error"
            content = f"error: {exc.message}"
        except ContextOverflowError as exc:
            status = "error"
            content = f"error: the expert's context overflowed: {exc.message}"
        except ProctorError as exc:
            status = "error"
            content = f"error: {exc.message}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool bug must not kill the sample; the model sees it
            status = "error"
            content = f"error: {call.name} failed: {type(exc).__name__}: {exc}"
        if not isinstance(content, str):
            content = json.dumps(content, default=str)
    duration = time.perf_counter() - t0
    ctx.solve.emit(_event(call, ctx, start, duration, status, turn, content if status != "ok" else None))
    return ToolOutcome(call, content, status, start, duration, dict(ctx.steps), dict(ctx.info), final)


def _event(
    call: ToolCall, ctx: ToolCallContext, start: float, duration: float, status: str, turn: int, error: str | None
) -> ToolEvent:
    event: ToolEvent = {
        "kind": "tool",
        "tool": call.name,
        "sample_id": ctx.sample.id,
        "call_id": call.id,
        "turn": turn,
        "start": start,
        "duration": duration,
        "status": status,
        "steps": dict(ctx.steps),
    }
    event.update(cast("ToolEvent", ctx.info))  # expert_role, expert_model, fallback; a plugin's own keys
    if error is not None:
        event["error"] = error[:500]
    return event
