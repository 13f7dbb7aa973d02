"""The tunnel's shared vocabulary: a job, its calls, the events a call receives, and the hub's
face towards the two ways in (facade and job channel).

Everything the hub, the facade and the channel pass between them is defined here, so none of
them needs another's private classes: the hub implements :class:`Dispatcher`, and the facade and
the channel are written against it. That keeps the import graph one-way (``hub`` imports
``facade`` and ``channel``; both import only this module and ``rules``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.websockets import WebSocket

from proctor.tunnel.protocol import Budget, FrameWriter

__all__ = [
    "EXPIRE",
    "RESET",
    "Agent",
    "Call",
    "CallEvent",
    "CallEvents",
    "ChannelPeer",
    "Data",
    "Dispatcher",
    "Expire",
    "Fail",
    "Head",
    "Job",
    "Reset",
    "Slots",
]


# --------------------------------------------------------------------------- call events


@dataclass(slots=True)
class Head:
    """The answer's status line and headers (``meta``: ``{"s", "h", "stream"}``), with its first
    body bytes; ``fin`` when that is the whole answer."""

    meta: dict[str, Any]
    body: bytes
    fin: bool


@dataclass(slots=True)
class Data:
    """More bytes of the answer; ``fin`` on the last piece."""

    body: bytes
    fin: bool


@dataclass(slots=True)
class Reset:
    """The agent answering the call went away: drop what was received, the call is replayed."""


@dataclass(slots=True)
class Fail:
    """The call ends with this HTTP status and OpenAI-shaped error (``code`` is its ``code``)."""

    status: int
    message: str
    code: str


@dataclass(slots=True)
class Expire:
    """The call's deadline passed (put in the call's inbox by its own timer)."""


RESET = Reset()
EXPIRE = Expire()

CallEvent = Head | Data | Reset | Fail | Expire
"""What a call's ``events`` receive, in order: ``Head`` then ``Data`` pieces, or ``Fail``; a
``Reset`` starts the answer again (a replay)."""


class CallEvents(Protocol):
    """Whatever receives a call's events: ``put_nowait(event)`` must not block."""

    def put_nowait(self, item: CallEvent) -> None: ...


# --------------------------------------------------------------------------- slots, calls, jobs


class Slots:
    """FIFO cap on a job's calls in flight (backpressure: callers wait, nobody fails).

    Not ``asyncio.Semaphore``: on Python 3.11 each release scans the woken-but-not-yet-run
    waiters, which turns thousands of waiting calls into quadratic work. Here a release hands
    the slot straight to the next live waiter, skipping cancelled ones, in O(1) amortized.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free right now (the common case: no waiting, no timer)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as the caller gave up: pass it on
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


@dataclass(eq=False)
class Call:
    """One model call of a job waiting for (or getting) its answer over the tunnel."""

    rid: int
    frames: list[bytes]
    deadline: float
    budget: Budget
    events: CallEvents
    """An ``Inbox`` a facade request awaits, or a job channel's call, which acts on each event."""
    held: int = 0
    """Bytes of this call held against ``budget``: its request body plus ``answer``."""
    answer: int = 0
    """Bytes of the answer received and not yet relayed (capped at the hub's ``max_body``)."""
    agent: Agent | None = None
    replayable: bool = True
    """False once response bytes reached the caller (a started stream cannot be replayed)."""
    done: bool = False
    dispatched: bool = False


class Agent:
    """One authenticated WebSocket connection of a job's agent."""

    def __init__(self, ws: WebSocket, job: Job) -> None:
        self.ws = ws
        self.job = job
        self.writer = FrameWriter(ws.send_bytes)
        self.calls: dict[int, Call] = {}
        self.last_seen = time.monotonic()
        self.served = 0
        self.gone = False
        self.received_messages = 0
        self.received_envelopes = 0


class ChannelPeer(Protocol):
    """What a job keeps of one of its open job channels (``channel.JobChannel``)."""

    ws: WebSocket


@dataclass(eq=False)
class Job:
    """A private job's tunnel: who may serve it, its secrets' digests, its agents, channels and calls.

    One object per job id for the hub's whole life: registering the id again (a server restart,
    a new secret) changes it in place with :meth:`rekey`, so agents, channels and calls that
    hold it never see a stale copy.
    """

    job_id: str
    owner: Any
    roles: list[str]
    secret_digest: bytes
    token_digest: bytes
    max_inflight: int
    budget: Budget
    agents: list[Agent] = field(default_factory=list)
    channels: list[ChannelPeer] = field(default_factory=list)
    """The job process's open channels; usually one."""
    calls: dict[int, Call] = field(default_factory=dict)
    waiting: deque[Call] = field(default_factory=deque)
    slots: Slots | None = None
    grace_timer: asyncio.TimerHandle | None = None
    reported_down: bool = False
    rr: int = 0
    closed: bool = False

    def semaphore(self) -> Slots:
        if self.slots is None:
            self.slots = Slots(self.max_inflight)
        return self.slots

    def rekey(
        self, *, owner: Any, roles: list[str], secret_digest: bytes, token_digest: bytes, max_inflight: int
    ) -> None:
        """Registered again: new identity and secrets; connected agents, waiting calls, the
        bytes they hold and the slots in use are kept."""
        self.owner = owner
        self.roles = roles
        self.secret_digest = secret_digest
        self.token_digest = token_digest
        self.max_inflight = max_inflight
        self.rr = 0
        self.closed = False


# --------------------------------------------------------------------------- the hub's face


class Dispatcher(Protocol):
    """What the facade and the job channel need of the hub (``hub.TunnelHub`` implements it)."""

    max_body: int
    request_deadline: float
    channel_answers: Counter[int]

    def check_internal_token(self, job_id: str, token: str | None) -> Job | None: ...

    def new_call(
        self, job: Job, rid: int, frames: list[bytes], deadline: float, events: CallEvents, held: int
    ) -> Call: ...

    def release(self, call: Call, size: int) -> None: ...

    def next_rid(self) -> int: ...

    def submit(self, job: Job, call: Call) -> None: ...

    def finish(self, job: Job, call: Call) -> None: ...

    def waiting_reason(self, job: Job) -> str: ...
