"""One HTTP attempt against one OpenAI-compatible endpoint: send, parse, classify.

This module knows nothing about pools, retries or events. It turns one POST to
``{base_url}/chat/completions`` into either a :class:`ChatResult` or an exception that says what
the caller should do next:

- :class:`AttemptFailure` — a transient failure (429, 5xx, connection, timeout, malformed answer)
  that the router may retry, on the same replica or another one;
- :class:`~proctor.errors.ContextOverflowError`, :class:`~proctor.errors.BadRequestError`,
  :class:`~proctor.errors.ModelAbortError` — final, never retried, because the same request would
  fail the same way everywhere.

Everything here is on the engine's hot path (one call per model request), so it avoids pydantic,
builds nothing it can reuse and parses JSON exactly once.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from proctor.errors import BadRequestError, ContextOverflowError, InfraErrorClass, ModelAbortError
from proctor.models.types import ChatResult

__all__ = [
    "AttemptFailure",
    "SAMPLE_ID_HEADER",
    "classify_status",
    "is_context_overflow",
    "parse_completion",
    "parse_body",
    "parse_retry_after",
    "post_chat",
    "read_stream",
]

SAMPLE_ID_HEADER = "X-Proctor-Sample-Id"
"""Sent with every call that belongs to a sample, so servers (and the test LLM) can count per sample."""

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context size",  # llama.cpp: "the request exceeds the available context size"
    "exceed_context",
    "too many tokens",
    "prompt is too long",
)
_BODY_SNIPPET = 300


class AttemptFailure(Exception):
    """A transient failure of one attempt; the router decides whether and where to retry.

    Kept apart from :class:`~proctor.errors.InfraError` because it describes one attempt, while
    ``InfraError`` is the verdict on the whole call after every allowed retry.
    """

    __slots__ = ("error_class", "status", "retry_after", "message")

    def __init__(
        self,
        error_class: InfraErrorClass,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class: InfraErrorClass = error_class
        self.status = status
        self.retry_after = retry_after
        self.message = message


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def is_context_overflow(body: str) -> bool:
    """Whether an error body says the prompt did not fit the model's context window."""
    low = body.lower()
    return any(marker in low for marker in _CONTEXT_MARKERS)


def _snippet(body: str) -> str:
    body = body.strip().replace("\n", " ")
    return body if len(body) <= _BODY_SNIPPET else body[:_BODY_SNIPPET] + "..."


def classify_status(
    status: int,
    body: str,
    *,
    url: str,
    model: str,
    api_key_env: str | None,
    retry_after: str | None = None,
) -> Exception:
    """Map a non-200 answer to the exception that tells the router what to do.

    404 is always an abort, not only "model not found": a wrong path (a ``base_url`` without
    ``/v1``) fails every later call too, so carrying on would only turn the whole run into errors.
    """
    text = _snippet(body)
    if status == 429:
        return AttemptFailure(
            "rate_limited",
            f"HTTP 429 (rate limited) from {url}: {text}",
            status=status,
            retry_after=parse_retry_after(retry_after),
        )
    if status >= 500:
        return AttemptFailure("http_5xx", f"HTTP {status} from {url}: {text}", status=status)
    if status in (400, 413, 422) and is_context_overflow(body):
        overflow = ContextOverflowError(f"prompt exceeds the context of model '{model}' ({url}): {text}")
        overflow.status = status  # for the event's http_status
        return overflow
    if status in (401, 403):
        if api_key_env:
            why = f"the API key in environment variable {api_key_env} was refused"
            hint = f"check the value of {api_key_env}"
        else:
            why = "the endpoint requires an API key and none was configured"
            hint = "set api_key_env in the model's config to the name of the variable holding the key"
        abort = ModelAbortError(f"HTTP {status} from {url}: {why} ({text})", hint=hint)
        abort.status = status
        return abort
    if status == 404:
        if "model" in body.lower():
            abort = ModelAbortError(
                f"model '{model}' is not served at {url} (HTTP 404: {text})",
                hint="check the role's 'model' name against the server's /v1/models list",
            )
        else:
            abort = ModelAbortError(
                f"{url} answered HTTP 404 for model '{model}' ({text})",
                hint="check base_url: OpenAI-compatible servers usually expect it to end in /v1",
            )
        abort.status = status
        return abort
    return BadRequestError(f"HTTP {status} from {url} for model '{model}': {text}", status=status)


def parse_completion(data: Any, endpoint: str) -> ChatResult:
    """Turn a non-streamed chat completion into a :class:`ChatResult`.

    A 200 without choices (some gateways wrap upstream errors that way) is a transient failure,
    not an empty answer: grading an error as the model's reply is exactly what proctor must not do.
    """
    try:
        choice = data["choices"][0]
        # A legacy completion (``/completions``) has ``text`` where chat has a message.
        message = choice.get("message") or (
            {"role": "assistant", "content": choice["text"]} if "text" in choice else {}
        )
    except (KeyError, IndexError, TypeError, AttributeError):
        error = data.get("error") if isinstance(data, dict) else None
        raise AttemptFailure(
            "http_5xx", f"malformed completion from {endpoint}: {_snippet(json.dumps(error or data))}"
        ) from None
    usage = data.get("usage") or {}
    return ChatResult(
        content=message.get("content"),
        tool_calls=message.get("tool_calls") or [],
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        message=message,
        endpoint=endpoint,
        raw=data,
    )


async def read_stream(chunks: AsyncIterator[bytes], endpoint: str, t0: float) -> ChatResult:
    """Assemble a streamed (SSE) completion, recording the time to the first token.

    Lines are split by hand rather than with ``StreamReader.readline`` because aiohttp refuses
    lines longer than its buffer, and one chunk of tool-call arguments can be that long.
    """
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason: str | None = None
    usage: dict[str, Any] = {}
    ttft: float | None = None
    done = False
    buf = b""
    last: dict[str, Any] = {}
    async for data in chunks:
        buf += data
        while not done:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line = buf[:nl].strip()
            buf = buf[nl + 1 :]
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise AttemptFailure("http_5xx", f"malformed stream chunk from {endpoint}") from None
            if "error" in chunk and not chunk.get("choices"):
                raise AttemptFailure(
                    "http_5xx", f"error in stream from {endpoint}: {_snippet(json.dumps(chunk['error']))}"
                )
            last = chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if piece:
                    content.append(piece)
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                think = delta.get("reasoning_content") or delta.get("reasoning")
                if think:
                    reasoning.append(think)
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                for tc in delta.get("tool_calls") or ():
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    slot = calls.get(tc.get("index", len(calls)))
                    if slot is None:
                        slot = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                        calls[tc.get("index", len(calls))] = slot
                    if tc.get("id"):
                        slot["id"] = tc["id"]
                    if tc.get("type"):
                        slot["type"] = tc["type"]
                    fn = tc.get("function") or {}
                    if fn.get("name"):
                        slot["function"]["name"] += fn["name"]
                    if fn.get("arguments"):
                        slot["function"]["arguments"] += fn["arguments"]
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        if done:
            break
    if not done and finish_reason is None:
        raise AttemptFailure("connection", f"stream from {endpoint} ended before the answer was complete")
    tool_calls = [calls[i] for i in sorted(calls)]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    return ChatResult(
        content=message["content"],
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        message=message,
        endpoint=endpoint,
        ttft=ttft,
        raw={"id": last.get("id"), "model": last.get("model"), "usage": usage} if last else {},
    )


def parse_body(raw: bytes, endpoint: str) -> ChatResult:
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise AttemptFailure(
            "http_5xx", f"malformed JSON from {endpoint}: {_snippet(raw.decode('utf-8', 'replace'))}"
        ) from None
    return parse_completion(parsed, endpoint)


async def post_chat(
    session: aiohttp.ClientSession,
    url: URL,
    data: bytes,
    headers: dict[str, str],
    timeout: aiohttp.ClientTimeout,
    *,
    stream: bool,
    endpoint: str,
    model: str,
    api_key_env: str | None,
) -> ChatResult:
    """Send one chat request; return the parsed result or raise what the router must handle.

    ``url`` is a pre-built :class:`yarl.URL` and ``data`` pre-serialised JSON so that nothing is
    parsed or encoded twice per call.
    """
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=data, headers=headers, timeout=timeout) as resp:
            status = resp.status
            if status == 200:
                if stream:
                    return await read_stream(resp.content.iter_any(), endpoint, t0)
                return parse_body(await resp.read(), endpoint)
            body = await resp.text(errors="replace")
            raise classify_status(
                status,
                body,
                url=str(url),
                model=model,
                api_key_env=api_key_env,
                retry_after=resp.headers.get("Retry-After"),
            )
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise AttemptFailure("timeout", f"no complete answer from {endpoint} within {timeout.total}s") from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise AttemptFailure("connection", f"connection to {endpoint} failed: {exc or type(exc).__name__}") from None
    except aiohttp.ClientResponseError as exc:
        raise AttemptFailure("connection", f"bad HTTP answer from {endpoint}: {exc}") from None
