"""The fake OpenAI-compatible server: aiohttp handlers, fault injection and counters.

The per-request path is deliberately plain (``json.loads``/``json.dumps``, dict literals, no
pydantic, no access log) because the engine's throughput benchmark pushes >2,000 requests/s
through one instance of it: whatever this server spends per request is charged to the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from typing import Any

from aiohttp import web

from proctor.errors import InputError

from ._config import FakeLLMConfig
from ._replies import EOS_TOKEN, Reply, choose, completion_chars, echo_logprobs, limit, split, text_of, tokenize, tokens

__all__ = ["FakeLLM"]

SAMPLE_HEADER = "X-Proctor-Sample-Id"
_JSON = "application/json"
_ids = itertools.count(1)


def _error(status: int, message: str, type_: str, code: str | None, headers: Any = None) -> web.Response:
    """An OpenAI-style error body, so clients exercise their real error parsing."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type=_JSON, headers=headers)


def _json(obj: Any) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), content_type=_JSON)


class FakeLLM:
    """An OpenAI-compatible test server running on the caller's event loop.

    Use as ``async with FakeLLM(cfg) as llm:``; ``llm.base_url`` is what an OpenAI client needs.
    Counters live on the instance (not in the app) so tests can read them without HTTP.
    """

    def __init__(self, config: FakeLLMConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config if config is not None else FakeLLMConfig()
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._rng = random.Random(self.config.seed)
        self._tokens = float(self.config.max_rps or 0.0)
        self._refilled = time.monotonic()
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; ``port=0`` picks a free port, read it back from ``port``."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        # vLLM's tokenizer endpoints (at the server root), so lm-eval's own local-completions
        # model can run loglikelihood tasks against this server with tokenizer_backend=remote.
        app.router.add_get("/tokenizer_info", self._tokenizer_info)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/_reset", self._reset)
        app.router.add_post("/_config", self._config)
        # handler_cancellation: a client that gives up (timeout) cancels its handler, as with a
        # real server, so a "hanging" request does not stay in flight for an hour.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving; in-flight handlers (e.g. hanging ones) are cancelled."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    # -- control ---------------------------------------------------------------------------

    def reconfigure(self, **fields: Any) -> FakeLLMConfig:
        """Swap in a changed config (validated); a new ``seed`` or ``max_rps`` restarts their state."""
        self.config = self.config.replace(**fields)
        if "seed" in fields:
            self._rng = random.Random(self.config.seed)
        if "max_rps" in fields:
            self._tokens = float(self.config.max_rps or 0.0)
            self._refilled = time.monotonic()
        return self.config

    def reset(self) -> None:
        """Zero every counter (in-flight requests keep being tracked)."""
        self._vocab: dict[str, int] = getattr(self, "_vocab", {})
        """The fake tokenizer's ids: token text -> id, in order of first sight (kept across resets)."""
        self.requests = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.successes: dict[str, int] = {}
        self.in_flight = getattr(self, "in_flight", 0)
        self.max_in_flight = self.in_flight
        self.last_request: dict[str, Any] | None = None
        """The most recent request body, so tests can check what went over the wire."""

    def stats(self) -> dict[str, Any]:
        """Snapshot of the counters, the same document ``GET /_stats`` returns."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "counts": dict(self.counts),
            "successes": dict(self.successes),
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "last_request": self.last_request,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _fail(self, resp: web.Response) -> web.Response:
        key = str(resp.status)
        self.errors[key] = self.errors.get(key, 0) + 1
        return resp

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.require_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def _take_token(self, rate: float) -> float:
        """Token bucket with burst ``rate``: 0.0 if admitted, else seconds until a token frees."""
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    def _delay(self) -> float:
        cfg = self.config
        if cfg.jitter:
            return max(0.0, cfg.latency + self._rng.uniform(-cfg.jitter, cfg.jitter))
        return cfg.latency

    async def _parse(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error", None)
        return body

    def _gate(self, request: web.Request, body: dict[str, Any], key: str, chars: int) -> web.Response | None:
        """Fault injection, in the documented precedence; None means 'serve this request'."""
        cfg = self.config
        if cfg.fail_samples:
            n = cfg.fail_samples.get(key)
            if n is not None and (n == -1 or self.counts[key] <= n):
                return _error(500, f"injected failure for sample {key!r}", "server_error", None)
        if cfg.context_limit is not None and chars > cfg.context_limit:
            return _error(
                400,
                f"This model's maximum context length is {cfg.context_limit} tokens. However, your "
                f"messages resulted in {chars} tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        if cfg.require_key is not None and not self._authorized(request):
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        model = body.get("model")
        if model is not None and model != cfg.model:
            return _error(404, f"model '{model}' does not exist", "invalid_request_error", "model_not_found")
        if cfg.max_concurrency is not None and self.in_flight > cfg.max_concurrency:
            return _error(
                429,
                "Too many concurrent requests.",
                "rate_limit_error",
                "rate_limit_exceeded",
                {"Retry-After": _seconds(cfg.retry_after)},
            )
        if cfg.max_rps is not None:
            wait = self._take_token(cfg.max_rps)
            if wait:
                return _error(
                    429,
                    "Rate limit reached for requests.",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    {"Retry-After": _seconds(wait)},
                )
        if cfg.fail_rate and self._rng.random() < cfg.fail_rate:
            return _error(500, "injected random failure", "server_error", None)
        if cfg.rate_limit_rate and self._rng.random() < cfg.rate_limit_rate:
            return _error(
                429,
                "Rate limit reached for requests.",
                "rate_limit_error",
                "rate_limit_exceeded",
                {"Retry-After": _seconds(cfg.retry_after)},
            )
        return None

    async def _serve(
        self,
        request: web.Request,
        body: dict[str, Any],
        key: str,
        chars: int,
        last_user: str,
        n_assistant: int | None,
    ) -> web.StreamResponse:
        """Shared path of chat and legacy completions: count, gate, wait, reply."""
        self.requests += 1
        self.last_request = body
        self.counts[key] = self.counts.get(key, 0) + 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            refused = self._gate(request, body, key, chars)
            if refused is not None:
                return self._fail(refused)
            cfg = self.config
            if cfg.hang_rate and self._rng.random() < cfg.hang_rate:
                await asyncio.sleep(cfg.hang_seconds)
            reply = limit(choose(cfg, last_user, n_assistant), body.get("stop"), _max_tokens(body))
            delay = self._delay()
            legacy = n_assistant is None
            if body.get("stream"):
                resp = await self._stream(request, body, reply, tokens(chars), delay, legacy)
            else:
                if delay:
                    await asyncio.sleep(delay)
                data = _completion(cfg.model, reply, tokens(chars), legacy)
                if legacy and body.get("logprobs") is not None:
                    _add_logprobs(data, body)
                resp = _json(data)
            self.ok += 1
            self.successes[key] = self.successes.get(key, 0) + 1
            return resp
        finally:
            self.in_flight -= 1

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        reply: Reply,
        prompt_tokens: int,
        delay: float,
        legacy: bool,
    ) -> web.StreamResponse:
        opts = body.get("stream_options")
        usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        events = _chunks(self.config.model, reply, prompt_tokens, legacy, usage)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if not delay:
            await resp.write(b"".join(_sse(e) for e in events) + b"data: [DONE]\n\n")
        else:
            # Spread the latency before each chunk that carries output, so time-to-first-token
            # is a fraction of the total as with a real model.
            step = delay / max(1, len(events) - 1)
            for i, event in enumerate(events):
                if i:
                    await asyncio.sleep(step)
                await resp.write(_sse(event))
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- handlers --------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return _json(
            {"object": "list", "data": [{"id": self.config.model, "object": "model", "owned_by": "proctor-testing"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request)
        if isinstance(body, web.Response):
            self.requests += 1
            return self._fail(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self.requests += 1
            return self._fail(
                _error(
                    400,
                    "'messages' is a required property and must be a list of objects.",
                    "invalid_request_error",
                    None,
                )
            )
        first_user: str | None = None
        last_user = ""
        n_assistant = 0
        chars = 0
        for m in messages:
            text = text_of(m.get("content"))
            chars += len(text)
            role = m.get("role")
            if role == "user":
                if first_user is None:
                    first_user = text
                last_user = text
            elif role == "assistant":
                n_assistant += 1
        key = request.headers.get(SAMPLE_HEADER) or first_user or ""
        return await self._serve(request, body, key, chars, last_user, n_assistant)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._parse(request)
        if isinstance(body, web.Response):
            self.requests += 1
            return self._fail(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        if not isinstance(prompt, str):
            self.requests += 1
            return self._fail(_error(400, "'prompt' is a required property.", "invalid_request_error", None))
        key = request.headers.get(SAMPLE_HEADER) or prompt
        return await self._serve(request, body, key, len(prompt), prompt, None)

    async def _tokenizer_info(self, request: web.Request) -> web.Response:
        return _json({"eos_token": EOS_TOKEN, "bos_token": None, "pad_token": None})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._parse(request)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return _error(400, "'prompt' must be a string.", "invalid_request_error", None)
        ids = [self._vocab.setdefault(t, len(self._vocab)) for t in tokenize(prompt)]
        return _json({"tokens": ids, "count": len(ids)})

    async def _detokenize(self, request: web.Request) -> web.Response:
        body = await self._parse(request)
        if isinstance(body, web.Response):
            return body
        ids = body.get("tokens")
        words = list(self._vocab)
        if not isinstance(ids, list) or not all(isinstance(i, int) and 0 <= i < len(words) for i in ids):
            return _error(400, "'tokens' must be a list of ids from /tokenize.", "invalid_request_error", None)
        return _json({"prompt": "".join(words[i] for i in ids)})

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(self.stats())

    async def _config(self, request: web.Request) -> web.Response:
        try:
            fields = json.loads(await request.read() or b"{}")
            if not isinstance(fields, dict):
                raise InputError("POST /_config needs a JSON object of config fields")
            cfg = self.reconfigure(**fields)
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        except InputError as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        return _json(cfg.to_dict())


def _seconds(value: float) -> str:
    """``Retry-After`` as a short decimal string ("0.05"), never "0" unless asked for."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text != "0" or value == 0 else "0.001"


def _max_tokens(body: dict[str, Any]) -> Any:
    value = body.get("max_tokens")
    return value if value is not None else body.get("max_completion_tokens")


def _completion(model: str, reply: Reply, prompt_tokens: int, legacy: bool) -> dict[str, Any]:
    completion_tokens = tokens(completion_chars(reply))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if legacy:
        choice: dict[str, Any] = {
            "index": 0,
            "text": reply.content or "",
            "logprobs": None,
            "finish_reason": reply.finish_reason,
        }
        return {
            "id": f"cmpl-{next(_ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": usage,
    }


def _add_logprobs(data: dict[str, Any], body: dict[str, Any]) -> None:
    """``echo`` (the prompt before the reply) and ``logprobs`` on a legacy completion."""
    choice = data["choices"][0]
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    pieces = [prompt, choice["text"]] if body.get("echo") and isinstance(prompt, str) else [choice["text"]]
    choice["text"] = "".join(pieces)
    top = body.get("logprobs")
    choice["logprobs"] = echo_logprobs(pieces, isinstance(top, int) and not isinstance(top, bool) and top > 0)


def _chunks(model: str, reply: Reply, prompt_tokens: int, legacy: bool, usage: bool) -> list[dict[str, Any]]:
    """The SSE events of a streamed reply, in the order OpenAI sends them.

    With ``usage`` a last chunk with empty ``choices`` carries the token counts, as OpenAI does
    for ``stream_options.include_usage``.
    """
    created = int(time.time())
    cid = f"{'cmpl' if legacy else 'chatcmpl'}-{next(_ids)}"
    obj = "text_completion" if legacy else "chat.completion.chunk"
    tail: list[dict[str, Any]] = []
    if usage:
        completion_tokens = tokens(completion_chars(reply))
        tail.append(
            {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )
    if legacy:

        def text_chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        return [text_chunk(p, None) for p in split(reply.content or "")] + [text_chunk("", reply.finish_reason)] + tail

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in split(reply.content or "")]
    for index, call in enumerate(reply.tool_calls):
        fn = call["function"]
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": fn["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        events += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in split(fn["arguments"], 2)
        ]
    events.append(chunk({}, reply.finish_reason))
    return events + tail


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"
