"""The ``agent`` solver: a tool-calling loop over the OpenAI ``tools`` API.

One sample is a conversation: the subject model gets the task and the tools' schemas, answers with
tool calls, the tools run (the calls of one turn concurrently), their results are appended, and so
on until the model answers, a final tool (``answer``) is called, or a limit is reached.

Rules, stated once because reports depend on them:

- **Tool calls** are read from the API's ``tool_calls``. Models served without a tool parser
  write them in the text instead; when a message has no ``tool_calls`` the loop also accepts
  ``<tool_call>{...}</tool_call>`` blocks and bare JSON objects ``{"name": ..., "arguments": ...}``
  naming a known tool. Such calls are rewritten into ``tool_calls`` on the assistant message, so the
  conversation stays well-formed for the server's chat template.
- **Final answer**: the argument of a final tool (``answer``, or an expert with ``final: true``);
  or, with the final-message rule (``final_message: true``, the default), the content of the first
  assistant message without tool calls. With ``final_message: false`` such a message gets a nudge
  to use a tool and the loop goes on.
- **Limits** end the sample as a *model outcome* (``SolveResult.outcome``), and the answer so far
  (the last assistant text) is scored: ``turn_limit`` (``max_turns`` model calls), ``time_limit``
  (``time_limit`` seconds or the engine's ``ctx.deadline``, whichever is first),
  ``token_limit`` (``max_total_tokens``, prompt + completion summed over the sample's calls),
  ``context_overflow`` (the server said the prompt is too long).
- **Context budget** (``context_budget``, in tokens estimated as characters / 4): when the
  conversation is larger, the prompt sent keeps the system message, the task message(s), and the
  most recent turns that fit, dropping whole turns (an assistant message with its tool results)
  oldest first; the latest turn is always kept. The trajectory keeps everything.
- **Trajectory**: ``SolveResult.messages`` is every message, each assistant and tool message with a
  ``timing`` entry; ``extra["turns"]`` has one record per turn (timings, tokens, endpoint, calls).
- **Images**: if the sample has images and the role cannot take them (``supports_images`` false
  in its model config), the sample is skipped with ``SampleSkipped`` (reason ``proctor.evals.content.IMAGES_UNSUPPORTED``), the
  reason the ``generate`` solver gives too.

Model-infrastructure failures (``InfraError``) and aborts propagate to the engine, with the
partial trajectory attached as ``exc.trajectory``; they are never turned into an answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from proctor._validation import StrictModel
from proctor.errors import ContextOverflowError, ModelError
from proctor.evals.agent.tools import Tool, ToolCall, ToolCallContext, ToolOutcome, build_tools, invoke_tool
from proctor.evals.agent.tools._http import close_sessions
from proctor.evals.content import check_images, user_content
from proctor.evals.options import validate_options
from proctor.evals.types import Sample, SampleSkipped, SolveContext, SolveResult, register_solver
from proctor.models.config import GenerateParams

__all__ = [
    "AgentOptions",
    "AgentSolver",
    "SampleSkipped",
    "check_images",
    "parse_text_tool_calls",
    "role_supports_images",
    "truncate_context",
    "user_content",
]

DEFAULT_SYSTEM_PROMPT = (
    "You are solving a task with the help of tools. Call tools as needed; when you know the answer, "
    "call the `answer` tool with it (or reply with the answer and no tool call)."
)


def _default_tools() -> list[str | dict[str, Any]]:
    return ["answer"]


class AgentOptions(StrictModel):
    """The ``solver:`` section of a spec with ``type: agent``."""

    role: str = "subject"
    """The model role that drives the loop."""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    prompt_template: str = "{input}"
    """Wraps a text input; ``{input}`` is replaced by the sample's text."""
    tools: list[str | dict[str, Any]] = Field(default_factory=_default_tools)
    max_turns: int = Field(default=20, ge=1, le=10_000)
    time_limit: float | None = Field(default=None, gt=0)
    """Seconds of wall time per sample (the engine's own deadline applies as well)."""
    max_total_tokens: int | None = Field(default=None, ge=1)
    context_budget: int | None = Field(default=None, ge=64)
    """Approximate tokens (characters / 4) of the prompt sent each turn."""
    final_message: bool = True
    nudge: str = "Please continue: call a tool, or call the answer tool with your final answer."
    parse_text_tool_calls: bool = True
    parallel_tool_calls: bool = True
    params: GenerateParams | None = None
    images: Literal["auto", "skip", "send"] = "auto"
    """``auto``: send images when the role's config says ``supports_images``, else skip the sample."""
    base_dir: str | None = None
    """Directory that relative custom-tool file paths are resolved against (the spec's folder)."""


# --------------------------------------------------------------------------------------------
# images


def role_supports_images(models: Any, role_name: str, role: Any = None) -> bool:
    """Whether the role's ModelConfig says ``supports_images``; False when it cannot be found."""
    config = getattr(role, "config", None)
    if config is None:
        for attr in ("config", "model_config"):
            getter = getattr(models, attr, None)
            if callable(getter):
                try:
                    config = getter(role_name)
                except Exception:
                    config = None
                if config is not None:
                    break
        if config is None:
            configs = getattr(models, "configs", None)
            if isinstance(configs, Mapping):
                config = configs.get(role_name)
    return bool(getattr(config, "supports_images", False))


# --------------------------------------------------------------------------------------------
# tool calls


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')
_DECODER = json.JSONDecoder()


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str, str | None]:
    """(arguments, raw text, error): the API sends a JSON string, some servers an object."""
    if isinstance(raw, dict):
        return raw, json.dumps(raw, ensure_ascii=False), None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, "{}", None
    text = str(raw)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, text, f"invalid JSON: {exc.msg} at position {exc.pos}"
    if not isinstance(value, dict):
        return None, text, f"expected a JSON object, got {type(value).__name__}"
    return value, text, None


def _from_object(obj: dict[str, Any]) -> ToolCall:
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    raw = obj.get("arguments", obj.get("parameters", {}))
    args, text, err = _parse_arguments(raw)
    return ToolCall(str(obj.get("id") or _new_id()), str(obj.get("name", "")), args, text, err)


def api_tool_calls(tool_calls: list[dict[str, Any]]) -> list[ToolCall]:
    """Calls from the API's ``tool_calls`` list (arguments parsed, errors kept for the model)."""
    calls = []
    for tc in tool_calls:
        fn = tc.get("function") or {}
        args, text, err = _parse_arguments(fn.get("arguments"))
        calls.append(ToolCall(str(tc.get("id") or _new_id()), str(fn.get("name", "")), args, text, err))
    return calls


def parse_text_tool_calls(content: str, tool_names: set[str] | frozenset[str]) -> tuple[list[ToolCall], str]:
    """Tool calls written in the text, and the text left once they are taken out.

    ``<tool_call>`` blocks are taken whatever they contain (a malformed one becomes a call with a
    parse error, reported back to the model). Bare JSON objects are taken only when they name a
    known tool, so a JSON *answer* is never mistaken for a call.
    """
    if not content:
        return [], content
    calls: list[ToolCall] = []
    if "<tool_call>" in content:
        for m in _TAGGED.finditer(content):
            body = m.group(1).strip()
            body = re.sub(r"^```(?:json)?\s*|\s*```$", "", body)
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as exc:
                name = _NAME.search(body)
                calls.append(ToolCall(_new_id(), name.group(1) if name else "", None, body, f"invalid JSON: {exc.msg}"))
                continue
            objs = obj if isinstance(obj, list) else [obj]
            for o in objs:
                if isinstance(o, dict):
                    calls.append(_from_object(o))
                else:
                    calls.append(ToolCall(_new_id(), "", None, body, "expected a JSON object"))
        return calls, _TAGGED.sub("", content).strip()
    spans: list[tuple[int, int]] = []
    pos = content.find("{")
    tries = 0
    while pos != -1 and tries < 64:
        tries += 1
        try:
            obj, end = _DECODER.raw_decode(content, pos)
        except json.JSONDecodeError:
            pos = content.find("{", pos + 1)
            continue
        found = [o for o in (obj if isinstance(obj, list) else [obj]) if _looks_like_call(o, tool_names)]
        if found:
            calls.extend(_from_object(o) for o in found)
            spans.append((pos, end))
            pos = content.find("{", end)
        else:
            pos = content.find("{", pos + 1)
    if not calls:
        return [], content
    rest, last = [], 0
    for a, b in spans:
        rest.append(content[last:a])
        last = b
    rest.append(content[last:])
    text = "".join(rest)
    text = re.sub(r"```(?:json)?\s*```", "", text).strip()
    return calls, text


def _looks_like_call(obj: Any, tool_names: set[str] | frozenset[str]) -> bool:
    if not isinstance(obj, dict):
        return False
    function = obj.get("function")
    inner = function if isinstance(function, dict) else obj
    return inner.get("name") in tool_names and ("arguments" in inner or "parameters" in inner)


# --------------------------------------------------------------------------------------------
# context budget


def approx_tokens(message: dict[str, Any]) -> int:
    """Characters / 4 of everything the server will tokenize in this message (+ a little framing)."""
    n = 16
    content = message.get("content")
    if isinstance(content, str):
        n += len(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                n += len(part.get("text", "")) if part.get("type") == "text" else 3000
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function", {})
        n += len(fn.get("name", "")) + len(str(fn.get("arguments", ""))) + 16
    return n // 4


def truncate_context(
    messages: list[dict[str, Any]], head: int, budget: int | None, sizes: list[int] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Keep ``messages[:head]`` and the most recent whole turns within ``budget``.

    A turn starts at an assistant message and holds the tool results (and nudges) after it. The
    latest turn is kept even when it alone is over budget: sending it is the only way to go on,
    and a real overflow then comes back from the server as ``context_overflow``.
    Returns the prompt and the number of turns dropped.
    """
    if budget is None:
        return messages, 0
    if sizes is None:
        sizes = [approx_tokens(m) for m in messages]
    total = sum(sizes)
    if total <= budget:
        return messages, 0
    starts = [i for i in range(head, len(messages)) if messages[i].get("role") == "assistant" or i == head]
    dropped = 0
    cut = head
    for k in range(len(starts) - 1):
        if total <= budget:
            break
        end = starts[k + 1]
        total -= sum(sizes[starts[k] : end])
        cut = end
        dropped += 1
    return messages[:head] + messages[cut:], dropped


# --------------------------------------------------------------------------------------------
# the solver


class AgentSolver:
    """Runs the loop for one sample per call; holds the tools, which are shared by all samples."""

    handles_deadline = True
    """The solver stops itself at ``ctx.deadline`` with outcome ``time_limit`` and the answer so
    far; an engine should give it a grace period instead of cancelling it at that instant."""

    def __init__(self, options: AgentOptions, tools: list[Tool]) -> None:
        self.options = options
        self.tools = {t.name: t for t in tools}
        self.tool_names = frozenset(self.tools)
        self.schemas = [t.schema() for t in tools] or None

    async def aclose(self) -> None:
        """Release the tools' resources and the tool HTTP session; the engine calls it at run end."""
        for tool in self.tools.values():
            await tool.aclose()
        await close_sessions()

    def _initial_messages(self, sample: Sample, send_images: bool) -> list[dict[str, Any]]:
        opts = self.options
        messages: list[dict[str, Any]] = []
        if opts.system_prompt:
            messages.append({"role": "system", "content": opts.system_prompt})
        images = sample.images if send_images else []
        if isinstance(sample.input, str):
            text = opts.prompt_template.replace("{input}", sample.input)
            messages.append({"role": "user", "content": user_content(text, images)})
        else:
            chat = [dict(m) for m in sample.input]
            if chat and chat[0].get("role") == "system" and messages:
                messages = []  # the sample brings its own system prompt
            for m in chat:
                if m.get("content") is None:
                    m["content"] = ""
            if images:
                for m in reversed(chat):
                    if m.get("role") == "user" and isinstance(m.get("content"), str):
                        m["content"] = user_content(m["content"], images)
                        break
            messages.extend(chat)
        return messages

    async def __call__(self, sample: Sample, ctx: SolveContext) -> SolveResult:
        opts = self.options
        role = ctx.models.role(opts.role)
        send_images = False
        if sample.images:
            supported = opts.images == "send" or (
                opts.images == "auto" and role_supports_images(ctx.models, opts.role, role)
            )
            check_images(sample, supported)
            send_images = True
        started, started_wall = time.monotonic(), time.time()
        deadline = ctx.deadline
        if opts.time_limit is not None:
            own = started + opts.time_limit
            deadline = own if deadline is None else min(deadline, own)

        messages = self._initial_messages(sample, send_images)
        head = len(messages)
        sizes = [approx_tokens(m) for m in messages]
        trajectory: list[dict[str, Any]] = [dict(m) for m in messages]
        turns: list[dict[str, Any]] = []
        tokens_in = tokens_out = calls_made = tool_calls = tool_errors = 0
        answer: str | None = None
        answer_source: str | None = None
        last_text = ""
        outcome: str | None = None

        def add(message: dict[str, Any], timing: dict[str, Any]) -> None:
            messages.append(message)
            sizes.append(approx_tokens(message))
            trajectory.append({**message, "timing": timing})

        try:
            for turn in range(1, opts.max_turns + 1):
                if deadline is not None and time.monotonic() >= deadline:
                    outcome = "time_limit"
                    break
                if opts.max_total_tokens is not None and tokens_in + tokens_out >= opts.max_total_tokens:
                    outcome = "token_limit"
                    break
                prompt, dropped = truncate_context(messages, head, opts.context_budget, sizes)
                t_start, t0 = time.time(), time.perf_counter()
                try:
                    async with asyncio.timeout_at(deadline) as scope:
                        result = await role.chat(prompt, params=opts.params, tools=self.schemas, sample_id=sample.id)
                except TimeoutError:
                    if not scope.expired():
                        raise
                    outcome = "time_limit"
                    break
                except ContextOverflowError:
                    outcome = "context_overflow"
                    break
                duration = time.perf_counter() - t0
                calls_made += 1
                tokens_in += result.prompt_tokens or 0
                tokens_out += result.completion_tokens or 0
                content = result.content or ""
                calls = api_tool_calls(result.tool_calls or [])
                from_text = False
                if not calls and opts.parse_text_tool_calls and content:
                    calls, rest = parse_text_tool_calls(content, self.tool_names)
                    if calls:
                        from_text, content = True, rest
                assistant: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    assistant["tool_calls"] = [
                        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
                        for c in calls
                    ]
                record: dict[str, Any] = {
                    "turn": turn,
                    "start": t_start,
                    "duration": duration,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "finish_reason": result.finish_reason,
                    "endpoint": result.endpoint,
                    "dropped_turns": dropped,
                    "tool_calls_from_text": from_text,
                    "tool_calls": [],
                }
                turns.append(record)
                add(
                    assistant,
                    {
                        k: record[k]
                        for k in ("turn", "start", "duration", "endpoint", "prompt_tokens", "completion_tokens")
                    },
                )
                if content.strip():
                    last_text = content
                if not calls:
                    if opts.final_message:
                        answer, answer_source = content, "final_message"
                        break
                    add({"role": "user", "content": opts.nudge}, {"turn": turn, "nudge": True})
                    continue
                outcomes = await self._run_calls(calls, sample, ctx, turn, deadline)
                for out in outcomes:
                    tool_calls += 1
                    tool_errors += out.status != "ok"
                    info = {
                        "turn": turn,
                        "tool": out.call.name,
                        "status": out.status,
                        "start": out.start,
                        "duration": out.duration,
                        "steps": out.steps,
                        **out.info,
                    }
                    record["tool_calls"].append({"id": out.call.id, "arguments": out.call.arguments, **info})
                    add({"role": "tool", "tool_call_id": out.call.id, "content": out.content}, info)
                final = next((o for o in outcomes if o.final and o.status == "ok"), None)
                if final is not None:
                    answer, answer_source = final.content, f"tool:{final.call.name}"
                    break
            else:
                outcome = "turn_limit"
        except ModelError as exc:
            # Infra failure or abort: the engine records it; keep what happened for the record.
            exc.trajectory = trajectory
            exc.turns = turns
            outcome = exc.error_class
            raise
        except asyncio.CancelledError:  # the engine's hard time limit, or a stopping run
            outcome = outcome or "cancelled"
            raise
        finally:
            # One record per sample for `proctor analyze`: turns, tool calls, wall time, the limit hit.
            ctx.emit(
                {
                    "kind": "sample",
                    "sample_id": sample.id,
                    "start": started_wall,
                    "duration": time.monotonic() - started,
                    "turns": len(turns),
                    "tool_calls": tool_calls,
                    "outcome": outcome,
                }
            )
        if answer is None:
            answer, answer_source = last_text, ("last_message" if last_text else None)
        return SolveResult(
            output=answer,
            messages=trajectory,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            model_calls=calls_made,
            outcome=outcome,
            extra={
                "turns": turns,
                "tool_calls": tool_calls,
                "tool_errors": tool_errors,
                "answer_source": answer_source,
                "wall_time": time.monotonic() - started,
            },
        )

    async def _run_calls(
        self, calls: list[ToolCall], sample: Sample, ctx: SolveContext, turn: int, deadline: float | None
    ) -> list[ToolOutcome]:
        """Run one turn's calls, concurrently unless configured otherwise; results in call order.

        A TaskGroup, not ``gather``: if one call raises (model infra failure in an expert), the
        siblings are cancelled instead of being left running after the sample has failed.
        """

        def one(call: ToolCall) -> Any:
            return invoke_tool(
                self.tools, call, ToolCallContext(sample, ctx, call_id=call.id), turn=turn, deadline=deadline
            )

        if len(calls) == 1 or not self.options.parallel_tool_calls:
            return [await one(c) for c in calls]
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(c)) for c in calls]
        return [t.result() for t in tasks]


@register_solver("agent")
def agent_solver(options: Mapping[str, Any]) -> AgentSolver:
    """Build the solver from its spec section; every problem is a ``SpecError`` naming the key."""
    opts = validate_options(AgentOptions, options, "solver")
    base = Path(opts.base_dir) if opts.base_dir else None
    tools = build_tools(opts.tools, where="solver.tools", base_dir=base)
    return AgentSolver(opts, tools)


agent_solver.resolves_paths = True  # type: ignore[attr-defined]
