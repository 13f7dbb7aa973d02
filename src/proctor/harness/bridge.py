"""The async side of an lm-eval run: each request answered once, through the subject's pool.

lm-eval hands over all requests of one kind at once (``generate_until``, ``loglikelihood``,
``loglikelihood_rolling``). Each is keyed by its content; the ledger (one "sample" per key)
says which are already answered, and the rest go out ``concurrency`` at a time. An answer is
committed before its worker takes the next request, so a ``kill -9`` costs only the requests in
flight. A request that fails after the router's retries is recorded as an error, never as an
answer: the run then withholds its metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proctor.errors import ModelAbortError, ProctorError
from proctor.evals.ledger import Ledger
from proctor.evals.types import Sample, Score, SolveResult
from proctor.models.config import GenerateParams
from proctor.models.router import Role

KINDS = ("generate_until", "loglikelihood", "loglikelihood_rolling")
SCORER = "lm_eval"
"""The scorer name in the ledger's score rows: lm-eval scores, proctor only records answers."""


@dataclass(slots=True)
class Request:
    """One lm-eval request, as proctor sends it."""

    kind: str
    payload: dict[str, Any]
    """generate_until: ``prompt`` or ``messages`` plus ``params``; the others: ``context``,
    ``continuation`` (loglikelihood) or ``text`` (rolling)."""
    label: str
    """``task/doc/idx``: the ``X-Proctor-Sample-Id`` of its calls, and how failures are named."""
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            text = json.dumps([self.kind, self.payload], sort_keys=True, ensure_ascii=False)
            self.key = hashlib.sha256(text.encode()).hexdigest()[:32]


class RunInterrupted(Exception):
    """Raised to lm-eval's thread after a signal: no new request is sent, answered ones are kept."""


@dataclass(slots=True)
class Failure:
    label: str
    kind: str
    error_class: str
    message: str


@dataclass
class PhaseCounts:
    """Requests done / total of the current phase, for the progress display."""

    phase: str = ""
    total: int = 0
    done: int = 0
    errors: int = 0
    reused: int = 0
    started: float = field(default_factory=time.monotonic)


class RequestBridge:
    """Answers lm-eval's requests on proctor's event loop (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        role: Role,
        *,
        concurrency: int,
        retry_errors: bool,
        on_phase: Callable[[PhaseCounts, bool], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.role = role
        self.concurrency = concurrency
        self.retry_errors = retry_errors
        self.failures: list[Failure] = []
        self.counts = PhaseCounts()
        self.sent = 0
        self.abort: ModelAbortError | None = None
        self.stopped = False
        """Set by the first SIGINT/SIGTERM: requests in flight finish, no new one is sent."""
        self._on_phase = on_phase
        self._params: dict[str, GenerateParams] = {}

    async def answer(self, kind: str, requests: list[Request]) -> list[Any]:
        """Answers in the order of ``requests``; None for each request that failed."""
        if self.stopped:
            raise RunInterrupted
        unique = {r.key: r for r in requests}
        await self.ledger.durable()  # the writer is idle: the ledger's connection is ours for a moment
        known = self.ledger.states()
        new = [
            Sample(id=k, input=json.dumps(r.payload, ensure_ascii=False), target=r.label, category=kind)
            for k, r in unique.items()
            if k not in known
        ]
        if new:
            self.ledger.add_samples(new, start_index=len(known))
        answers: dict[str, Any] = {}
        work: deque[Request] = deque()
        errored = {k for k, (state, _) in known.items() if k in unique and state == "error"}
        stored_errors = {row.id: row for row in self.ledger.rows() if row.id in errored} if errored else {}
        for key, request in unique.items():
            state = known.get(key, ("pending", None))[0]
            if state == "scored":
                stored = self.ledger.generation(key)
                answers[key] = json.loads(stored.output) if stored is not None else None
            elif state == "error" and not self.retry_errors:
                row = stored_errors[key]
                self.failures.append(Failure(request.label, kind, row.error_class or "error", row.error or ""))
            else:
                work.append(request)
        self.counts = PhaseCounts(
            phase=kind, total=len(unique), done=len(unique) - len(work), reused=len(unique) - len(work)
        )
        self._report(False)
        workers = [asyncio.create_task(self._worker(work, answers)) for _ in range(min(self.concurrency, len(work)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
        self._report(True)
        if self.abort is not None:
            raise self.abort
        if self.stopped:
            raise RunInterrupted
        return [answers.get(r.key) for r in requests]

    def _report(self, final: bool) -> None:
        """Tell the display where the phase stands (its start and end; a ticker does the rest)."""
        if self._on_phase is not None:
            self._on_phase(self.counts, final)

    async def _worker(self, work: deque[Request], answers: dict[str, Any]) -> None:
        while work and self.abort is None and not self.stopped:
            request = work.popleft()
            started = time.time()
            self.ledger.mark_running(request.key, started)
            self.sent += 1
            try:
                answer = await self._call(request)
            except ModelAbortError as exc:  # every further call would fail the same way
                self.abort = exc
                self.ledger.record_error(request.key, exc.error_class, str(exc))
                return
            except (ProctorError, ValueError) as exc:
                error_class = getattr(exc, "error_class", None) or type(exc).__name__
                self.ledger.record_error(request.key, error_class, str(exc))
                self.failures.append(Failure(request.label, request.kind, error_class, str(exc)))
                self.counts.errors += 1
            else:
                answers[request.key] = answer
                result = SolveResult(output=json.dumps(answer), model_calls=1)
                self.ledger.record_done(request.key, result, time.time() - started, Score(value=0.0), SCORER)
            self.counts.done += 1
            await self.ledger.durable()

    async def _call(self, request: Request) -> Any:
        payload = request.payload
        if request.kind == "generate_until":
            params = self._generate_params(payload["params"])
            if "messages" in payload:
                result = await self.role.chat(payload["messages"], params=params, sample_id=request.label)
            else:
                result = await self.role.completion(payload["prompt"], params=params, sample_id=request.label)
            return cut_at_stops(result.content or "", payload.get("until") or [])
        if request.kind == "loglikelihood":
            context, continuation = payload["context"], payload["continuation"]
            logprobs = await self._echo(context + continuation, request.label)
            return list(continuation_logprob(logprobs, len(context), len(context) + len(continuation)))
        if request.kind == "loglikelihood_rolling":
            text = payload["text"]
            logprobs = await self._echo(text, request.label)
            return continuation_logprob(logprobs, 0, len(text), skip_first=True)[0]
        raise ValueError(f"unknown lm-eval request type {request.kind!r}")

    def _generate_params(self, params: dict[str, Any]) -> GenerateParams:
        """One params object per distinct set, so the router's per-object body cache hits."""
        key = json.dumps(params, sort_keys=True)
        found = self._params.get(key)
        if found is None:
            found = self._params[key] = GenerateParams.model_validate(params)
        return found

    async def _echo(self, prompt: str, label: str) -> dict[str, Any]:
        """The prompt's own token logprobs: ``echo`` + ``logprobs`` over ``/completions``."""
        params = self._generate_params({"temperature": 0.0, "max_tokens": 1})
        result = await self.role.completion(prompt, params=params, extra={"echo": True, "logprobs": 1}, sample_id=label)
        try:
            logprobs = result.raw["choices"][0]["logprobs"]
            if not isinstance(logprobs, dict) or not isinstance(logprobs.get("text_offset"), list):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            # Every loglikelihood request would fail the same way: stop rather than error each one.
            raise ModelAbortError(
                f"{result.endpoint} returned no logprobs with text_offset for an echo request",
                hint="multiple-choice tasks need a server with echo and logprobs on /v1/completions "
                "(vLLM, llama.cpp's server; not chat-only APIs)",
            ) from None
        return logprobs


def continuation_logprob(
    logprobs: dict[str, Any], start: int, end: int, *, skip_first: bool = False
) -> tuple[float, bool]:
    """Sum of the logprobs of the tokens covering text ``[start, end)``, and whether each was greedy.

    Tokens are located by their character offsets, so no local tokenizer is needed. A token that
    straddles ``start`` counts as the continuation's (the server merged the boundary); tokens at or
    past ``end`` (the one generated token) do not count. ``skip_first``: the text's first token
    has no logprob (nothing precedes it), as in a rolling loglikelihood.
    """
    tokens = logprobs.get("tokens") or []
    offsets = logprobs["text_offset"]
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    total, greedy, found = 0.0, True, False
    for i, offset in enumerate(offsets):
        token_end = offsets[i + 1] if i + 1 < len(offsets) else offset + len(tokens[i] if i < len(tokens) else "")
        if offset >= end or token_end <= start:
            continue
        value = values[i] if i < len(values) else None
        if value is None:
            if skip_first and i == 0:
                continue
            raise ValueError(f"the server gave no logprob for the token at character {offset}")
        found = True
        total += float(value)
        top = tops[i] if i < len(tops) else None
        if not top or max(top.items(), key=lambda kv: kv[1])[0] != (tokens[i] if i < len(tokens) else None):
            greedy = False
    if not found and not skip_first:
        raise ValueError("the server's tokens do not cover the continuation")
    if not math.isfinite(total):
        raise ValueError("the server returned a non-finite logprob")
    return total, greedy


def cut_at_stops(text: str, stops: list[str]) -> str:
    """lm-eval's ``until``: the text before the earliest stop string (servers may leave it in)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else text
