"""What the fake model says: pure functions from a request to a reply, no I/O.

Kept apart from the HTTP layer so the reply rules (script -> answers -> reply mode, then
``stop`` and ``max_tokens``) can be read in one place and stay cheap: plain dicts and strings, no
validation models, because this runs on every request of the engine's throughput benchmark.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from ._config import FakeLLMConfig

_ARITH = re.compile(r"(-?\d+)\s*(\+|-|\*|/|×|÷|plus|minus|times)\s*(-?\d+)", re.IGNORECASE)
_call_ids = itertools.count(1)


@dataclass(slots=True)
class Reply:
    """One assistant turn, before it is rendered as JSON or as SSE chunks."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str


def text_of(content: Any) -> str:
    """Text of a message ``content``: a string, a list of parts, or null (assistant tool turns)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def arith(text: str) -> str:
    """Solve the LAST ``<int> <op> <int>`` in ``text`` (the question, not an earlier example)."""
    matches = _ARITH.findall(text)
    if not matches:
        return "I don't know"
    a_s, op, b_s = matches[-1]
    a, b = int(a_s), int(b_s)
    op = op.lower()
    if op in ("+", "plus"):
        return str(a + b)
    if op in ("-", "minus"):
        return str(a - b)
    if op in ("*", "×", "times"):
        return str(a * b)
    if b == 0:
        return "I don't know"
    # Integer division that truncates toward zero, the way people read "7 / 2 = 3".
    q = abs(a) // abs(b)
    return str(q if (a >= 0) == (b > 0) else -q)


def mode_reply(mode: str, text: str) -> str:
    """Apply a reply mode to the last user text: echo, arith, or a fixed string."""
    if mode == "echo":
        return text
    if mode == "arith":
        return arith(text)
    return mode


def choose(cfg: FakeLLMConfig, last_user: str, n_assistant: int | None) -> Reply:
    """Pick the reply by precedence script -> answers -> reply.

    ``n_assistant`` is None for legacy completions, which have no turns and so ignore the script.
    """
    if cfg.script and n_assistant is not None:
        turn = cfg.script[min(n_assistant, len(cfg.script) - 1)]
        calls = [_tool_call(c) for c in turn.get("tool_calls", ())]
        if "content" in turn:
            content: str | None = turn["content"]
        elif "content_from" in turn:
            content = _answer(cfg, last_user, turn["content_from"])
        else:
            content = None
        return Reply(content, calls, "tool_calls" if calls else "stop")
    return Reply(_answer(cfg, last_user, cfg.reply), [], "stop")


def _answer(cfg: FakeLLMConfig, last_user: str, mode: str) -> str:
    for key, value in cfg.answers.items():
        if key in last_user:
            return value
    return mode_reply(mode, last_user)


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    args = call.get("arguments", {})
    return {
        "id": f"call_{next(_call_ids)}",
        "type": "function",
        "function": {
            "name": call["name"],
            "arguments": args if isinstance(args, str) else json.dumps(args),
        },
    }


def limit(reply: Reply, stop: Any, max_tokens: Any) -> Reply:
    """Apply ``stop`` (cut at the earliest stop string) then ``max_tokens`` (chars = tokens * 4)."""
    content = reply.content
    if content is None:
        return reply
    if stop:
        stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s]
        cut = min((i for i in (content.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            content = content[:cut]
    finish = reply.finish_reason
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 0:
        if len(content) > max_tokens * 4:
            content = content[: max_tokens * 4]
            finish = "length"
    return Reply(content, reply.tool_calls, finish)


def tokens(chars: int) -> int:
    """The usage approximation: one token per four characters, at least one."""
    return max(1, chars // 4)


def completion_chars(reply: Reply) -> int:
    """Characters the model 'generated': content plus tool names and arguments."""
    n = len(reply.content or "")
    for call in reply.tool_calls:
        n += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return n


def split(text: str, pieces: int = 4) -> list[str]:
    """Cut ``text`` into at most ``pieces`` non-empty chunks, so streams have several deltas."""
    if not text:
        return []
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


_TOKEN = re.compile(r"\s*\S+|\s+")
"""The fake tokenizer: a run of whitespace with the word after it is one token (" 42")."""
EOS_TOKEN = "</s>"


def tokenize(text: str) -> list[str]:
    """The fake tokenizer's tokens of ``text`` (they join back to ``text``)."""
    return _TOKEN.findall(text)


def echo_logprobs(pieces: list[str], top: bool) -> dict[str, Any]:
    """Deterministic ``logprobs`` of a legacy completion's text, in OpenAI's shape.

    ``pieces`` (the echoed prompt, then the reply) are tokenized apart, as a server does, so a
    reply never merges into the prompt's last token. The fake model "knows" arithmetic: after
    text holding a question ``a op b``, the token carrying :func:`arith`'s answer scores -0.1 and
    is the greedy one; any other token scores ``-(1 + len/2)``. The first token has no logprob
    (null), as with OpenAI's ``echo``. Multiple-choice metrics are thus predictable from the data.
    """
    tokens: list[str] = []
    offsets: list[int] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    text = "".join(pieces)
    base = 0
    for piece in pieces:
        for match in _TOKEN.finditer(piece):
            token, start = match.group(), base + match.start()
            tokens.append(token)
            offsets.append(start)
            if start == 0:
                values.append(None)
                tops.append(None)
                continue
            answer = arith(text[:start])
            best = None if answer == "I don't know" else " " + answer
            value = -0.1 if best is not None and token.strip() == answer else -(1 + len(token.strip()) / 2)
            values.append(value)
            tops.append({token: value} if best is None or value == -0.1 else {best: -0.1})
        base += len(piece)
    return {"tokens": tokens, "token_logprobs": values, "text_offset": offsets, "top_logprobs": tops if top else None}
