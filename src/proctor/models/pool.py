"""Replica pools: where a role's calls go, and how a pool keeps itself healthy.

A pool holds the replicas of one model (data-parallel servers). For each call it picks, among
the replicas that are healthy and below their concurrency limit, the one with the fewest
outstanding requests weighted by its observed latency, breaking ties round-robin. Uniform random
choice, what many tools do, lets one slow replica collect a growing share of the in-flight work;
weighting outstanding requests by latency sends work where it finishes first.

Each replica carries:

- a **concurrency limit** (``max_connections``): a call waits for a free slot rather than opening
  yet another socket, which is what keeps open file descriptors bounded at high concurrency;
- an **adaptive limit** (AIMD): 429s shrink it multiplicatively while they are a high share of
  recent attempts (scattered ones are only retried), successes grow it back one at a time, so a
  rate-limited endpoint settles just under its limit instead of answering 429 to a fixed share
  of requests;
- a **circuit breaker** that opens on a *sustained failure rate*: at least ``failure_threshold``
  failed calls (connection, 5xx, timeout) within the last ``failure_window`` seconds, making up
  at least ``failure_ratio`` of the replica's calls there, counting the calls still in flight as
  not failed. A streak would not do: among 64 concurrent calls a few random failures in a row are
  ordinary (and failures come back before successes), and taking the only replica out for them
  stops every call that would have succeeded. An open replica is probed after 50 ms, then at
  doubling intervals up to ``cooldown``; a probe that answers admits one *trial call*
  (half-open), whose answer closes the breaker. So a pool whose every replica is open serves
  again within about one probe interval of a replica coming back, not after a fixed sleep, and
  its calls wait for that (up to their deadline) instead of spending their attempts.

The hot path (``try_acquire`` / ``release`` / ``on_success``) is plain attribute arithmetic on
slotted objects: no tasks, no locks (one event loop), no allocation besides what the caller needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import aiohttp
from yarl import URL

from proctor.errors import InfraError, SpecError
from proctor.models.config import HealthConfig, ModelConfig, ReplicaAddress
from proctor.models.transport.base import Transport
from proctor.models.transport.channel import ChannelTransport, TunnelChannel

__all__ = ["Replica", "ReplicaPool", "Strategy", "load_pool_file", "replica_urls"]

log = logging.getLogger("proctor.models")

Strategy = Literal["least_time", "least_outstanding", "random"]
"""How a pool picks a replica.

``least_time`` (the default, and what every run uses) picks the fewest outstanding requests
weighted by the replica's observed latency: the smallest ``(in_flight + 1) x latency**2``, i.e.
``sqrt(in_flight + 1) x latency``. The observed latency (an average of recent call durations)
already contains the load a replica is under: a batching server runs its requests together, and
even a serial one's durations include the queue. Counting each outstanding request as a whole
extra latency on top of that (the plain product) overstates how long a new call waits on a busy
fast replica, and kept sending a 5x slower idle replica work that finished last
(``bench/routing.py``: 1.15x the wall time of four equal replicas, against 1.03x now). The
square root keeps a damping term, so a momentarily fastest replica does not take every call
before its average catches up. Among equally fast replicas it *is* least-outstanding (ties
round-robin). ``least_outstanding`` counts requests only; ``random`` is uniform choice; they
are kept for tests and experiments, not spec options.
"""

_DECREASE_FACTOR = 0.7
"""Multiplicative decrease of a replica's concurrency limit on a 429."""
_MIN_DECREASE_WINDOW = 0.05
_MAX_DECREASE_WINDOW = 1.0
_DEFAULT_DECREASE_WINDOW = 0.5
"""At most one decrease per window (about one round trip), so one burst of 429s from requests
that were all sent at the old limit counts as one signal, not as dozens."""
_EWMA = 0.1
_RATE_SHARE_EWMA = 1 / 64
"""Weight of one attempt in a replica's running share of 429s."""
_CONGESTION_SHARE = 0.2
"""A 429 lowers the limit only while 429s are at least this share of recent attempts.

A limit the client overshoots answers 429 to most attempts (they come back at once and retry),
so the share climbs past this in a few dozen attempts. 429s scattered at random over a server
that is not at its limit (a flaky gateway, a shared backend's hiccups) stay well below it, and
cutting the limit for them would only shrink throughput without making them any rarer."""
_BUCKETS = 10
"""The breaker's window is kept as this many time buckets of (successes, failures)."""
_FIRST_PROBE = 0.05
"""Seconds from opening a breaker to its first probe; the interval then doubles up to ``cooldown``."""
_MIN_QUIET = 1.0
_MAX_QUIET = 60.0
_QUIET_RTTS = 10.0
_CAUTIOUS_PERIODS = 10.0


# --------------------------------------------------------------------------------------------
# Where the replicas are
# --------------------------------------------------------------------------------------------


def _normalise_url(url: str, where: str) -> str:
    url = url.strip().rstrip("/")
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise SpecError(f"{where}: {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8000/v1")
    return url


def load_pool_file(path: Path, model: str, *, where: str = "pool_file") -> list[str]:
    """Read a model-config JSON (``{"model-name": [{"ip_addr": h, "port": p}, ...]}``) for ``model``.

    Entries may also be plain base URLs or ``{"host", "port"}`` objects, since such files are
    written by hand as often as by cluster tooling. Every problem is a :class:`SpecError` that
    names the file, because that is where the user has to look.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{where}: file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{where}: {str(path)!r} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{where}: {str(path)!r} must be a JSON object mapping model names to replica lists",
            hint='e.g. {"my-model": [{"ip_addr": "node1", "port": 1800}]}',
        )
    if model not in data:
        names = ", ".join(repr(k) for k in sorted(data)) or "none"
        raise SpecError(f"{where}: {str(path)!r} has no entry for model {model!r}; it has: {names}")
    entries = data[model]
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{where}: entry {model!r} in {str(path)!r} must be a non-empty list of replicas")
    urls = []
    for i, entry in enumerate(entries):
        here = f"{where}: {str(path)!r} {model}[{i}]"
        if isinstance(entry, str):
            urls.append(_normalise_url(entry, here))
            continue
        if not isinstance(entry, dict):
            raise SpecError(f"{here} must be an object with 'ip_addr' and 'port' (or a URL string)")
        host = entry.get("ip_addr", entry.get("host"))
        port = entry.get("port")
        if not isinstance(host, str) or not host:
            raise SpecError(f"{here} needs 'ip_addr' (a host name or address)")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SpecError(f"{here} needs 'port' (an integer 1-65535), got {port!r}")
        scheme = entry.get("scheme", "http")
        prefix = entry.get("path", "/v1")
        urls.append(_normalise_url(f"{scheme}://{host}:{port}{prefix}", here))
    return urls


def replica_urls(config: ModelConfig, *, base_dir: Path | None = None, role: str = "?") -> list[str]:
    """The base URLs a role may call, exactly as its config says and from nowhere else."""
    where = f"models.{role}"
    if config.base_url is not None:
        urls = [_normalise_url(config.base_url, f"{where}.base_url")]
    elif config.replicas:
        urls = []
        for i, rep in enumerate(config.replicas):
            if isinstance(rep, ReplicaAddress):
                urls.append(_normalise_url(rep.base_url, f"{where}.replicas[{i}]"))
            else:
                urls.append(_normalise_url(rep, f"{where}.replicas[{i}]"))
    elif config.pool_file is not None:
        path = Path(config.pool_file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        urls = load_pool_file(path, config.model, where=f"{where}.pool_file")
    elif config.launch is not None:
        urls = [f"http://{config.launch.host}:{config.launch.port}/v1"]
    else:  # pragma: no cover - ModelConfig's validator forbids this
        raise SpecError(f"{where}: no replicas configured")
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise SpecError(f"{where}: replica {url} is listed twice")
        seen.add(url)
    return urls


# --------------------------------------------------------------------------------------------
# One replica
# --------------------------------------------------------------------------------------------


class Replica:
    """One endpoint of a pool and everything the router knows about it."""

    __slots__ = (
        "base_url",
        "health_url",
        "in_flight",
        "cap",
        "max_cap",
        "healthy",
        "checked",
        "consecutive_failures",
        "last_failed_call",
        "last_error",
        "latency",
        "successes_since_change",
        "last_decrease",
        "last_rate_limited",
        "last_increase",
        "requests",
        "rate_limited",
        "recovering",
        "last_success",
        "transport",
        "rate_share",
        "window_ok",
        "window_failed",
        "window_epoch",
        "half_open",
        "trial",
        "opened_at",
    )

    def __init__(self, base_url: str, *, max_connections: int, health_path: str) -> None:
        self.base_url = base_url
        self.health_url = URL(base_url + "/" + health_path.lstrip("/"))
        self.in_flight = 0
        self.cap = max_connections
        """Current concurrency limit (adaptive); ``in_flight`` never exceeds it."""
        self.max_cap = max_connections
        self.healthy = True
        """False while the circuit breaker is open."""
        self.checked = False
        """Whether health is known (probed or used), for ``describe()`` before any call."""
        self.consecutive_failures = 0
        self.last_failed_call: object = None
        self.last_error: str | None = None
        self.latency = 0.0
        """EWMA of successful call durations; sizes the AIMD decrease window."""
        self.successes_since_change = 0
        self.last_decrease = -1e9
        self.last_rate_limited = -1e9
        self.last_increase = -1e9
        self.requests = 0
        self.rate_limited = 0
        self.recovering = False
        self.last_success = -1e9
        """``time.monotonic()`` of the last successful call."""
        self.transport: Transport | None = None
        """How calls reach this replica (HTTP, or a job channel); the router sets it when it connects."""
        self.rate_share = 0.0
        """Running share of 429s among recent attempts; only a high share is a congestion signal."""
        self.window_ok = [0] * _BUCKETS
        self.window_failed = [0] * _BUCKETS
        """Calls that succeeded / failed per time bucket of the breaker's window."""
        self.window_epoch = 0
        """Index of the newest bucket (``time.monotonic() // bucket length``)."""
        self.half_open = False
        """An open replica whose probe answered: its next call is a trial."""
        self.trial = False
        """A trial call is in flight (an open replica admits one at a time)."""
        self.opened_at = 0.0
        """``time.monotonic()`` when the breaker last opened: calls sent since then are trials."""

    @property
    def channel(self) -> TunnelChannel | None:
        """The job channel, when this replica's transport is one (for diagnostics and tests)."""
        transport = self.transport
        return transport.channel if isinstance(transport, ChannelTransport) else None

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "half-open" if self.half_open or self.trial else "open"
        return f"<Replica {self.base_url} {state} {self.in_flight}/{self.cap}>"


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


class ReplicaPool:
    """The replicas of one role: selection, slots, breakers, adaptive limits and health probes."""

    def __init__(
        self,
        role: str,
        urls: Iterable[str],
        *,
        max_connections: int,
        health: HealthConfig,
        adaptive: bool = True,
        strategy: Strategy = "least_time",
        rng: random.Random | None = None,
    ) -> None:
        self.role = role
        self.replicas = [Replica(u, max_connections=max_connections, health_path=health.path) for u in urls]
        if not self.replicas:
            raise SpecError(f"models.{role}: the pool has no replicas")
        self.health = health
        self.adaptive = adaptive
        self.strategy: Strategy = strategy
        self._rng = rng or random.Random()
        self._rr = 0
        self._n_open = 0
        """How many replicas have their breaker open (the selection's fast path skips trials at 0)."""
        self._bucket = health.failure_window / _BUCKETS
        self._latency = 0.0
        """EWMA of call durations over the whole pool: the stand-in for unmeasured replicas."""
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._headers: Mapping[str, str] = {}
        self._closed = False

    # -- selection ------------------------------------------------------------------------

    def _select(self, avoid: Replica | None) -> Replica | None:
        """Best healthy replica with a free slot (see :data:`Strategy`); ``avoid`` only as last resort."""
        if self._n_open:
            trial = self._trial(avoid)
            if trial is not None:
                return trial
        reps = self.replicas
        n = len(reps)
        if n == 1:
            r = reps[0]
            return r if r.healthy and r.in_flight < r.cap else None
        if self.strategy == "random":
            free = [r for r in reps if r.healthy and r.in_flight < r.cap and r is not avoid]
            if free:
                return self._rng.choice(free)
            return avoid if avoid is not None and avoid.healthy and avoid.in_flight < avoid.cap else None
        weighted = self.strategy == "least_time"
        default = self._latency or 1.0  # replicas not yet measured count as average ones
        start = self._rr
        self._rr = start + 1 if start + 1 < n else 0
        best: Replica | None = None
        best_score = float("inf")
        fallback: Replica | None = None
        for i in range(n):
            j = start + i
            r = reps[j if j < n else j - n]
            load = r.in_flight
            if load >= r.cap or not r.healthy:
                continue
            if r is avoid:
                fallback = r
                continue
            lat = r.latency or default
            score = (load + 1) * lat * lat if weighted else load  # ~ sqrt(load + 1) * lat, no sqrt
            if score < best_score:  # strict: the first in round-robin order wins a tie
                best = r
                best_score = score
        return best if best is not None else fallback

    def _trial(self, avoid: Replica | None) -> Replica | None:
        """A half-open replica (its probe answered) for one trial call, marked as having it; else None.

        A call retried after a failed trial tries another half-open replica first.
        """
        chosen: Replica | None = None
        for r in self.replicas:
            if r.half_open and not r.trial:
                chosen = r
                if r is not avoid:
                    break
        if chosen is not None:
            chosen.trial = True
            chosen.half_open = False
        return chosen

    def try_acquire(self, avoid: Replica | None = None) -> Replica | None:
        """Take a slot on the best replica now, or None if every healthy replica is full."""
        if self._waiters:
            return None  # first come, first served: don't overtake callers already waiting
        r = self._select(avoid)
        if r is not None:
            r.in_flight += 1
            r.requests += 1
        return r

    async def acquire(self, avoid: Replica | None, deadline: float) -> Replica:
        """Wait (until ``deadline``, a ``time.monotonic()`` value) for a slot on a healthy replica.

        Waiters are woken in FIFO order when a slot frees up or a breaker closes. A waiter that
        is woken but gives up (deadline, cancellation) passes the wake-up on, so no slot is lost.
        """
        r = self.try_acquire(avoid)
        if r is not None:
            return r
        loop = asyncio.get_running_loop()
        first = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._wait_error()
            fut: asyncio.Future[None] = loop.create_future()
            if first:
                self._waiters.append(fut)
                first = False
            else:
                self._waiters.appendleft(fut)  # keep our place after a spurious wake-up
            handle = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            except TimeoutError:
                self._discard(fut)
                raise self._wait_error() from None
            except BaseException:
                handle.cancel()
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._wake_one()  # we were woken but leave: hand the wake-up on
                else:
                    self._discard(fut)
                raise
            handle.cancel()
            r = self._select(avoid)
            if r is not None:
                r.in_flight += 1
                r.requests += 1
                if self._waiters and self._has_free_slot():
                    self._wake_one()
                return r

    def _wait_error(self) -> InfraError:
        if not any(r.healthy for r in self.replicas):
            tried = "; ".join(f"{r.base_url} ({r.last_error or 'circuit open'})" for r in self.replicas)
            return InfraError(
                f"role '{self.role}': no healthy replica came back before the call's deadline; tried {tried}",
                error_class="connection",
                attempts=0,
            )
        return InfraError(
            f"role '{self.role}': waited until the call's deadline for a free connection slot",
            error_class="timeout",
            attempts=0,
            hint="raise max_connections or lower the run's concurrency",
        )

    def _discard(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def _has_free_slot(self) -> bool:
        return any((r.healthy and r.in_flight < r.cap) or (r.half_open and not r.trial) for r in self.replicas)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _wake_all(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def release(self, r: Replica) -> None:
        """Give a slot back and let the next waiter in (after a trial, the next trial may go)."""
        r.in_flight -= 1
        if r.trial:
            r.trial = False
            if self._waiters:
                self._wake_one()
        elif self._waiters and r.in_flight < r.cap and r.healthy:
            self._wake_one()

    def has_alternative(self, r: Replica) -> bool:
        """Whether a retry could go to another healthy replica than ``r``."""
        for other in self.replicas:
            if other is not r and other.healthy:
                return True
        return False

    # -- outcomes ---------------------------------------------------------------------------

    def _tally(self, r: Replica, now: float) -> int:
        """Bring ``r``'s window up to ``now`` (emptying buckets that fell out); the bucket to count in."""
        epoch = int(now / self._bucket)
        old = r.window_epoch
        if epoch != old:
            ok, failed = r.window_ok, r.window_failed
            for e in range(max(old + 1, epoch - _BUCKETS + 1), epoch + 1):
                ok[e % _BUCKETS] = 0
                failed[e % _BUCKETS] = 0
            r.window_epoch = epoch
        return epoch % _BUCKETS

    def on_success(self, r: Replica, duration: float) -> None:
        """Record a successful call: feeds the breaker's window, latency and AIMD increase."""
        r.consecutive_failures = 0
        r.checked = True
        now = time.monotonic()
        r.last_success = now
        r.window_ok[self._tally(r, now)] += 1
        r.rate_share -= _RATE_SHARE_EWMA * r.rate_share
        if not r.healthy and now - duration >= r.opened_at:
            # A trial answered. A call sent before the breaker opened does not count: a replica
            # failing most calls still answers some, and each would close it again at once.
            self._close(r)
        r.latency = duration if r.latency == 0.0 else r.latency + _EWMA * (duration - r.latency)
        self._latency = duration if self._latency == 0.0 else self._latency + _EWMA * (duration - self._latency)
        if self.adaptive and r.cap < r.max_cap:
            r.successes_since_change += 1
            if r.successes_since_change >= r.cap and self._may_grow(r):
                old = r.cap
                r.cap = old + 1
                r.successes_since_change = 0
                log.info("replica %s concurrency %d -> %d after %d successes", r.base_url, old, r.cap, old)
                if self._waiters:
                    self._wake_one()

    @staticmethod
    def _may_grow(r: Replica) -> bool:
        """Additive increase: +1 per limit's worth of successes, once the 429s have stopped.

        Right after 429s the limit grows by one per quiet period only, because a token-bucket
        limiter lets a client overshoot for a while on its saved-up burst and only then answers
        429 to everything; growing one step per round trip would keep walking into that wall.
        After a long spell without 429s it grows one step per round trip again, so a transient
        limit does not cost throughput for long.
        """
        now = time.monotonic()
        quiet = _quiet(r)
        since = now - r.last_rate_limited
        if since < quiet:
            return False
        if since < min(_MAX_QUIET, _CAUTIOUS_PERIODS * quiet) and now - r.last_increase < quiet:
            return False
        r.last_increase = now
        return True

    def on_rate_limited(self, r: Replica) -> None:
        """A 429: shrink the replica's limit, at most once per round trip, if 429s are a signal.

        Only while 429s are a large share of recent attempts (:data:`_CONGESTION_SHARE`) do they
        say "you are over my limit"; scattered ones are retried after their ``Retry-After`` and
        leave the limit (and its growth) alone.
        """
        r.rate_limited += 1
        r.checked = True
        r.rate_share += _RATE_SHARE_EWMA * (1.0 - r.rate_share)
        if not r.healthy:  # a trial call was answered, if only with a 429: the server is up
            self._close(r)
        if not self.adaptive or r.cap <= 1 or r.rate_share < _CONGESTION_SHARE:
            return
        now = time.monotonic()
        window = r.latency if r.latency > 0 else _DEFAULT_DECREASE_WINDOW
        window = min(_MAX_DECREASE_WINDOW, max(_MIN_DECREASE_WINDOW, window))
        r.successes_since_change = 0
        r.last_rate_limited = now
        if now - r.last_decrease < window:
            return
        r.last_decrease = now
        old = r.cap
        r.cap = max(1, int(old * _DECREASE_FACTOR))
        log.info("replica %s concurrency %d -> %d after 429", r.base_url, old, r.cap)

    def on_failure(self, r: Replica, message: str, call: object) -> None:
        """A connection error, timeout or 5xx; opens the breaker on a sustained failure rate.

        Failures are counted per *call*: one request that the server always rejects with 500 (a
        poison prompt) retried six times is one failure, not six, so it cannot take a healthy
        replica out from under every other sample.
        """
        r.last_error = message
        r.checked = True
        r.rate_share -= _RATE_SHARE_EWMA * r.rate_share
        if r.last_failed_call is call:
            return
        r.last_failed_call = call
        r.consecutive_failures += 1
        r.window_failed[self._tally(r, time.monotonic())] += 1
        if not r.healthy:
            return  # a failed trial: the replica stays open until a later probe or trial
        failed = sum(r.window_failed)
        if failed < self.health.failure_threshold:
            return
        # Calls in flight have not failed (yet): failures return faster than successes, so a
        # burst of early failures among 64 concurrent calls is not a rate of failures.
        total = failed + sum(r.window_ok) + r.in_flight
        if failed >= self.health.failure_ratio * total:
            self._open(
                r,
                f"{failed} of its last {total} calls failed within {self.health.failure_window:g}s, last: {message}",
            )

    # -- breaker and health -----------------------------------------------------------------

    def _open(self, r: Replica, why: str) -> None:
        r.healthy = False
        r.half_open = False
        r.opened_at = time.monotonic()
        self._n_open += 1
        log.warning("replica %s of role '%s' taken out (circuit open): %s", r.base_url, self.role, why)
        self._start_recovery(r)

    def _close(self, r: Replica) -> None:
        was_open = not r.healthy
        r.healthy = True
        r.checked = True
        r.half_open = False
        r.consecutive_failures = 0
        r.last_failed_call = None
        if was_open:
            self._n_open -= 1
            # A fresh window: the failures that opened it say nothing about the server now.
            r.window_ok = [0] * _BUCKETS
            r.window_failed = [0] * _BUCKETS
            log.warning("replica %s of role '%s' back in (circuit closed)", r.base_url, self.role)
            self._wake_all()

    def _start_recovery(self, r: Replica) -> None:
        if r.recovering or self._session is None or self._closed:
            return
        r.recovering = True
        self._spawn(self._recover(r))

    async def _recover(self, r: Replica) -> None:
        """Probe after 50 ms, then at doubling intervals up to ``cooldown``; an answer makes it half-open.

        Short first intervals are what let a pool whose every replica is open serve again soon
        after one comes back (its calls wait meanwhile); the doubling keeps a replica that stays
        down, or answers probes but fails its calls, from costing more than a few trials.

        Half-open admits one trial call (see :meth:`_trial`): a probe of ``/models`` proves the
        server answers, not that its completions work, so only a real call closes the breaker.
        """
        delay = min(_FIRST_PROBE, self.health.cooldown)
        try:
            while not r.healthy and not self._closed:
                await asyncio.sleep(delay)
                delay = min(self.health.cooldown, delay * 2)
                if r.healthy:
                    break
                ok, error = await self.probe(r)
                if r.healthy:
                    break
                if ok:
                    if not r.half_open:
                        r.half_open = True
                        log.info(
                            "replica %s of role '%s' answered its probe: next call is a trial", r.base_url, self.role
                        )
                    self._wake_one()
                else:
                    r.last_error = error
        finally:
            r.recovering = False

    async def probe(self, r: Replica) -> tuple[bool, str | None]:
        """GET the health path. Any answer below 500 means the server is up.

        A 404 (a server without ``/models``) or 401 still proves the process answers; only
        connection failures, timeouts and 5xx mean it cannot serve. Keys are checked by calls.
        """
        session = self._session
        if session is None:
            return False, "no HTTP session"
        try:
            async with session.get(
                r.health_url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.health.timeout)
            ) as resp:
                await resp.read()
                if resp.status >= 500:
                    return False, f"health probe {r.health_url} answered HTTP {resp.status}"
                if resp.status in (401, 403):
                    r.last_error = f"health probe {r.health_url} answered HTTP {resp.status} (key refused?)"
                return True, None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return False, f"health probe {r.health_url} timed out after {self.health.timeout}s"
        except aiohttp.ClientError as exc:
            return False, f"health probe {r.health_url} failed: {exc or type(exc).__name__}"
        except OSError as exc:
            return False, f"health probe {r.health_url} failed: {exc}"

    async def check(self, replicas: Iterable[Replica] | None = None) -> None:
        """Probe replicas concurrently, opening or closing breakers from the answers."""
        targets = list(self.replicas if replicas is None else replicas)
        results = await asyncio.gather(*(self.probe(r) for r in targets))
        for r, (ok, error) in zip(targets, results, strict=True):
            r.checked = True
            if ok:
                if not r.healthy:
                    self._close(r)
                elif r.last_error and r.last_error.startswith("health probe") and "HTTP 40" not in r.last_error:
                    r.last_error = None
            else:
                r.last_error = error
                # A busy server may answer its probe late (llama.cpp queues /v1/models behind the
                # requests in flight): while calls are in flight or recently succeeded, the calls
                # are the better witness. A dead or hung replica still opens the breaker through
                # its calls failing or timing out.
                recent = time.monotonic() - r.last_success < max(self.health.interval, 2 * self.health.timeout)
                if r.healthy and not recent and r.in_flight == 0:
                    self._open(r, error or "health probe failed")

    def bind(self, session: aiohttp.ClientSession, headers: Mapping[str, str]) -> None:
        """Give the pool the router's session and the headers probes must send."""
        self._session = session
        self._headers = headers

    def start_background(self) -> None:
        """Start the periodic health loop (and recovery probes for replicas that start out open)."""
        self._spawn(self._health_loop())
        for r in self.replicas:
            if not r.healthy:
                self._start_recovery(r)

    async def _health_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.health.interval)
            healthy = [r for r in self.replicas if r.healthy]
            if healthy:
                await self.check(healthy)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop background probes and fail every waiter; the pool is unusable afterwards."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(
                    InfraError(f"role '{self.role}': the model router was closed", error_class="connection")
                )
        self._waiters.clear()

    # -- reporting ---------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """One plain dict per replica, for ``--dry-run`` and the server's status page."""
        return [
            {
                "url": r.base_url,
                "healthy": r.healthy if r.checked else None,
                "in_flight": r.in_flight,
                "concurrency_limit": r.cap,
                "last_error": r.last_error,
            }
            for r in self.replicas
        ]


def _quiet(r: Replica) -> float:
    """How long after a 429 a replica's limit stays put before it may grow again.

    Growing right after a cut would walk straight back into the limit and make the 429 share a
    fixed fraction of the traffic; waiting for a quiet spell ("recover when the 429s stop") makes
    each probe for more capacity rare, so 429s become a small share of requests.
    """
    return min(_MAX_QUIET, max(_MIN_QUIET, _QUIET_RTTS * r.latency))


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
