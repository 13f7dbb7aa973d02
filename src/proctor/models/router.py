"""The model router: role name -> replica pool -> one HTTP call, with retries and one event per call.

This is the only way proctor talks to models. The engine, the agent tools and the judge all hold
one :class:`ModelRouter` per event loop and call ``router.role(name).chat(...)``. Three promises
matter more than anything else here:

- **A role goes only where its config says.** Nothing is read from the environment except the
  variable named by ``api_key_env``; no ``OPENAI_BASE_URL`` fallback, no proxy variables.
- **Every call ends.** Attempts are bounded by ``retry.max_attempts`` and ``retry.total_deadline``;
  after that an :class:`~proctor.errors.InfraError` carries the failure class, so the ledger can
  keep infrastructure failures apart from wrong answers.
- **Every call is visible.** Exactly one event per ``chat`` call, naming the replica that
  answered, the attempts it took and the outcome.

The per-call path is kept lean because the engine's budget is about a millisecond of CPU per
sample *including* the HTTP client: bodies and headers are pre-computed per role, JSON is encoded
once, the session is shared, and no task is created per call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from proctor.errors import InfraError, InputError, ModelAbortError, ModelError, NoHealthyReplicaError, SpecError
from proctor.models.client import AttemptFailure
from proctor.models.config import GenerateParams, ModelConfig
from proctor.models.pool import ReplicaPool, Strategy, replica_urls
from proctor.models.transport.base import Transport
from proctor.models.transport.channel import ChannelTransport, TunnelChannel
from proctor.models.transport.http import HttpTransport
from proctor.models.types import ChatResult, EventSink
from proctor.tunnel.protocol import ROLE_HEADER, channel_url

__all__ = ["ModelRouter", "Role"]

log = logging.getLogger("proctor.models")

_PARAMS_CACHE_SIZE = 64
_FAILOVER_JITTER = 0.05
"""Most seconds a failed call waits before trying another replica: enough to spread a burst of
failovers, short against a call's own duration (backoff is for retrying the *same* server)."""


def _params_body(params: GenerateParams) -> tuple[dict[str, Any], bool]:
    """The request-body fragment of a params object (None fields omitted) and whether it streams."""
    body: dict[str, Any] = {}
    for key in ("temperature", "top_p", "max_tokens", "stop", "seed"):
        value = getattr(params, key)
        if value is not None:
            body[key] = value
    if params.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(params.extra_body)
    return body, bool(body.get("stream", False))


class Role:
    """One model role (``subject``, ``judge``, an expert): its pool and how to call it.

    Made by :class:`ModelRouter`; engines get it with ``router.role(name)``.
    """

    def __init__(self, router: ModelRouter, name: str, config: ModelConfig, pool: ReplicaPool) -> None:
        self.name = name
        self.config = config
        self.model = config.model
        self.pool = pool
        self._router = router
        self._retry = config.retry
        self._base_body, self._stream = self._body_for_params(config.params)
        self._params_cache: dict[int, tuple[GenerateParams, dict[str, Any], bool]] = {}
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout)

    def _body_for_params(self, params: GenerateParams) -> tuple[dict[str, Any], bool]:
        fragment, stream = _params_body(params)
        return {"model": self.config.model, **fragment}, stream

    def _body_for(self, params: GenerateParams) -> tuple[dict[str, Any], bool]:
        """Body and stream flag for per-call params, cached by object identity.

        Engines pass the same ``GenerateParams`` object for every sample, so the pydantic merge
        runs once per distinct object instead of once per call. The cache keeps the object alive,
        so its ``id`` cannot be reused by another object while cached.
        """
        hit = self._params_cache.get(id(params))
        if hit is not None and hit[0] is params:
            return hit[1], hit[2]
        body, stream = self._body_for_params(self.config.params.merged(params))
        if len(self._params_cache) >= _PARAMS_CACHE_SIZE:
            self._params_cache.clear()
        self._params_cache[id(params)] = (params, body, stream)
        return body, stream

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        params: GenerateParams | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        sample_id: str | None = None,
    ) -> ChatResult:
        """Send one chat completion, retrying transient failures, and emit one event.

        Raises :class:`InfraError` after the retry budget is spent, and
        :class:`ContextOverflowError`, :class:`BadRequestError` or :class:`ModelAbortError` at
        once when retrying cannot help.
        """
        router = self._router
        session = router._session
        if session is None:
            raise RuntimeError("ModelRouter.start() must be awaited before chat()")
        start_wall = time.time()
        t0 = time.monotonic()
        if params is None:
            base, stream = self._base_body, self._stream
        else:
            base, stream = self._body_for(params)
        body = {**base, "messages": messages}
        if tools:
            body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        return await self._send(body, stream, sample_id, start_wall, t0, completions=False)

    async def completion(
        self,
        prompt: str,
        *,
        params: GenerateParams | None = None,
        extra: dict[str, Any] | None = None,
        sample_id: str | None = None,
    ) -> ChatResult:
        """Send one legacy ``/completions`` request (never streamed), like :meth:`chat`.

        ``extra`` adds body fields this endpoint alone has (``echo``, ``logprobs``); the answer's
        text is ``content`` and the whole reply (with its ``logprobs``) is ``raw``. lm-eval's
        loglikelihood requests need it: chat completions cannot score a given continuation.
        """
        if self._router._session is None:
            raise RuntimeError("ModelRouter.start() must be awaited before completion()")
        start_wall = time.time()
        t0 = time.monotonic()
        base = self._base_body if params is None else self._body_for(params)[0]
        body = {**base, "prompt": prompt, **(extra or {})}
        body.pop("stream", None)
        body.pop("stream_options", None)
        return await self._send(body, False, sample_id, start_wall, t0, completions=True)

    async def _send(
        self,
        body: dict[str, Any],
        stream: bool,
        sample_id: str | None,
        start_wall: float,
        t0: float,
        *,
        completions: bool,
    ) -> ChatResult:
        """The one retry loop of :meth:`chat` and :meth:`completion`; emits the call's event."""
        router = self._router
        data = json.dumps(body, ensure_ascii=False).encode()
        pool = self.pool
        retry = self._retry
        deadline = t0 + retry.total_deadline
        timeout = self._timeout
        config = self.config
        attempts = 0
        queued = 0.0  # waiting for a free replica slot, reported as the event's queue_s
        avoid = None
        replica = None
        status: str = "ok"
        http_status: int | None = None
        result: ChatResult | None = None
        call = object()  # identifies this call to the breaker's per-call failure count
        try:
            while True:
                replica = pool.try_acquire(avoid)
                if replica is None:
                    t_wait = time.monotonic()
                    try:
                        replica = await pool.acquire(avoid, deadline)
                    finally:
                        queued += time.monotonic() - t_wait
                attempts += 1
                t_attempt = time.monotonic()
                if deadline - t_attempt < config.request_timeout:
                    timeout = aiohttp.ClientTimeout(total=max(0.001, deadline - t_attempt))
                transport = replica.transport
                if transport is None:
                    pool.release(replica)
                    raise RuntimeError("ModelRouter.start() must be awaited before a call")
                try:
                    result = await transport.send(data, sample_id, timeout, stream=stream, completions=completions)
                except AttemptFailure as failure:
                    http_status = failure.status
                    limited = failure.error_class == "rate_limited"
                    if limited:
                        pool.on_rate_limited(replica)
                    else:
                        pool.release(replica)
                        pool.on_failure(replica, failure.message, call)
                    delay = self._retry_delay(failure, attempts, replica)
                    if attempts >= retry.max_attempts or time.monotonic() + delay >= deadline:
                        if limited:
                            pool.release(replica)
                        status = failure.error_class
                        why = (
                            f"{attempts} attempt(s)"
                            if attempts >= retry.max_attempts
                            else f"the total deadline of {retry.total_deadline:g}s"
                        )
                        raise InfraError(
                            f"role '{self.name}' ({config.model}): {failure.message} (gave up after {why})",
                            error_class=failure.error_class,
                            attempts=attempts,
                            status=failure.status,
                        ) from None
                    avoid = replica if len(pool.replicas) > 1 else None  # a preference, never a refusal
                    if limited:
                        # Keep the slot while honouring Retry-After: a 429 comes back at once, so
                        # releasing it would let the next call in to collect another 429 straight
                        # away, and the replica's limit would no longer bound the request rate.
                        try:
                            if delay > 0:
                                await asyncio.sleep(delay)
                        finally:
                            pool.release(replica)
                    elif delay > 0:
                        await asyncio.sleep(delay)
                    continue
                except ModelError as exc:
                    pool.release(replica)
                    http_status = getattr(exc, "status", None)
                    status = exc.error_class
                    if isinstance(exc, ModelAbortError):
                        log.error("role '%s': %s", self.name, exc.message)
                    raise
                except BaseException:
                    pool.release(replica)
                    raise
                pool.release(replica)
                duration = time.monotonic() - t0
                pool.on_success(replica, time.monotonic() - t_attempt)
                result.attempts = attempts
                result.duration = duration
                http_status = 200
                return result
        except InfraError as exc:
            status = exc.error_class
            if exc.attempts == 0:  # gave up waiting for a replica
                exc.attempts = attempts
            raise
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except ModelError:
            raise
        except BaseException as exc:
            status = type(exc).__name__
            raise
        finally:
            sink = router._on_event
            if sink is not None:
                sink(
                    {
                        "kind": "model",
                        "role": self.name,
                        "model": config.model,
                        "endpoint": replica.base_url if replica is not None else None,
                        "sample_id": sample_id,
                        "start": start_wall,
                        "duration": result.duration if result is not None else time.monotonic() - t0,
                        "ttft": result.ttft if result is not None else None,
                        "tokens_in": result.prompt_tokens if result is not None else 0,
                        "tokens_out": result.completion_tokens if result is not None else 0,
                        "attempts": attempts,
                        "retries": attempts - 1 if attempts > 0 else 0,
                        "queue_s": queued,
                        "status": status,
                        "http_status": http_status,
                    }
                )

    def _retry_delay(self, failure: AttemptFailure, attempts: int, replica: Any) -> float:
        """How long to wait before the next attempt.

        A 429 waits what ``Retry-After`` says (the server knows its own limit), or the backoff.
        Other failures go straight (after a short jitter) to another replica when there is one,
        and back off exponentially with full jitter when they must hit the same one again.
        """
        retry = self._retry
        if failure.error_class == "rate_limited" and failure.retry_after is not None:
            return failure.retry_after
        if failure.error_class != "rate_limited" and self.pool.has_alternative(replica):
            return random.uniform(0, min(retry.backoff_base, _FAILOVER_JITTER))
        cap = min(retry.backoff_max, retry.backoff_base * (2 ** (attempts - 1)))
        return random.uniform(0, cap)

    def describe(self) -> dict[str, Any]:
        return {"role": self.name, "model": self.model, "replicas": self.pool.describe()}


class ModelRouter:
    """All model roles of a run, sharing one aiohttp session on one event loop.

    ``environ`` is where ``api_key_env`` names are looked up (default ``os.environ``); nothing
    else is ever read from the environment. ``base_dir`` resolves relative ``pool_file`` paths
    (the spec file's directory). ``strategy`` is for tests and experiments only: every run uses the pool's
    default, ``least_time``.
    """

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        *,
        on_event: EventSink | None = None,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        strategy: Strategy = "least_time",
    ) -> None:
        self._on_event = on_event
        self._environ = environ
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._started = False
        self._roles: dict[str, Role] = {}
        for name, config in models.items():
            urls = replica_urls(config, base_dir=base_dir, role=name)
            pool = ReplicaPool(
                name,
                urls,
                max_connections=config.max_connections,
                health=config.health,
                adaptive=config.adaptive_concurrency,
                strategy=strategy,
            )
            self._roles[name] = Role(self, name, config, pool)

    # -- lifecycle ---------------------------------------------------------------------------

    def _resolve_keys(self) -> dict[str, str | None]:
        """Each role's key, looked up now, so a missing variable stops the run before any sample."""
        environ = os.environ if self._environ is None else self._environ
        keys: dict[str, str | None] = {}
        for role in self._roles.values():
            name = role.config.api_key_env
            key = environ.get(name) if name else None
            if name and not key:
                raise InputError(
                    f"models.{role.name}.api_key_env names the environment variable {name}, which is not set",
                    hint=f"export {name}=... before running (the key itself never goes in the spec)",
                )
            keys[role.name] = key
        return keys

    def _connect(self) -> None:
        """Resolve the keys, give every replica its transport (chosen once, here) and the pools
        the headers their probes send."""
        session = self._session
        assert session is not None
        for name, key in self._resolve_keys().items():
            role = self._roles[name]
            auth = {"Authorization": f"Bearer {key}"} if key else {}
            probe_headers: dict[str, str] = auth
            for replica in role.pool.replicas:
                if replica.transport is None:
                    replica.transport = self._transport(role, replica.base_url, auth, session)
            if role.config.transport == "tunnel":
                # Probes go through the facade: say which role, so each probes its own model.
                probe_headers = {**auth, ROLE_HEADER: role.name}
            role.pool.bind(session, probe_headers)

    @staticmethod
    def _transport(role: Role, base_url: str, auth: dict[str, str], session: aiohttp.ClientSession) -> Transport:
        config = role.config
        if config.transport == "tunnel":
            # The key authenticates the channel once, at its handshake, never each call.
            return ChannelTransport(
                TunnelChannel(channel_url(base_url), auth, session),
                base_url,
                role=role.name,
                model=config.model,
                api_key_env=config.api_key_env,
                request_timeout=config.request_timeout,
            )
        headers = {"Content-Type": "application/json", **auth}
        return HttpTransport(session, base_url, headers, model=config.model, api_key_env=config.api_key_env)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: the per-replica slots are the only cap, so a call waits in the pool's queue
            # (visible, bounded) rather than inside aiohttp's. trust_env=False: no proxy variables.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
            self._owns_session = True
        return self._session

    async def start(self) -> None:
        """Open the session, check keys and probe every replica; fail fast if a role has none healthy."""
        if self._started:
            return
        self._ensure_session()
        try:
            self._connect()
            roles = [r for r in self._roles.values() if r.config.health.check_at_start]
            await asyncio.gather(*(r.pool.check() for r in roles))
            for role in roles:
                if not any(rep.healthy for rep in role.pool.replicas):
                    tried = "\n".join(f"  - {rep.base_url}: {rep.last_error}" for rep in role.pool.replicas)
                    raise NoHealthyReplicaError(
                        f"no healthy replica for role '{role.name}' (model {role.model}); tried:\n{tried}",
                        hint="start the model server(s) or fix the URLs in the spec; probes GET "
                        f"<base_url>{role.config.health.path}",
                    )
        except BaseException:
            # Whoever called start() gets no router to close: leave no session or probe behind.
            await self.aclose()
            raise
        for role in self._roles.values():
            role.pool.start_background()
        self._started = True

    async def check_health(self) -> None:
        """Probe every replica of every role now (usable before ``start`` for ``--dry-run``)."""
        self._ensure_session()
        self._connect()
        await asyncio.gather(*(r.pool.check() for r in self._roles.values()))

    async def aclose(self) -> None:
        """Stop health probes and close the session. Safe to call twice."""
        await asyncio.gather(*(r.pool.aclose() for r in self._roles.values()))
        for role in self._roles.values():
            for replica in role.pool.replicas:
                transport, replica.transport = replica.transport, None
                if transport is not None:
                    await transport.aclose()
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
        self._started = False

    async def __aenter__(self) -> ModelRouter:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- access ------------------------------------------------------------------------------

    def role(self, name: str) -> Role:
        """The role called ``name``; an unknown name is a spec error that lists the known ones."""
        try:
            return self._roles[name]
        except KeyError:
            known = ", ".join(sorted(self._roles)) or "none"
            raise SpecError(f"unknown model role '{name}'; the spec defines: {known}") from None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The shared HTTP session (None before ``start``), for tools that call other HTTP services.

        Sharing it keeps one connection pool per event loop; tools must not close it.
        """
        return self._session

    @property
    def roles(self) -> dict[str, Role]:
        return dict(self._roles)

    def describe(self) -> list[dict[str, Any]]:
        """Role -> model -> replicas with health, in-flight count, limit and last error."""
        return [role.describe() for role in self._roles.values()]
