"""The job API's response bodies, shared by the server (which sends them) and the client (which reads them).

Why a module of its own: ``proctor.client`` is what the CLI's remote commands load, and it must not
pull in ``proctor.server`` (FastAPI, the scheduler, the store) just to name the shape of an answer.
``proctor.server.schemas`` re-exports every name here, so server code keeps importing from there.

Fields the server adds later are ignored by an older client (pydantic's default), so a client and
a server of neighbouring versions still understand each other.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

JobState = Literal[
    "queued",
    "running",
    "waiting_for_tunnel",
    "waiting_for_credentials",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
]
"""Every state a job can be in (docs/server.md); the store keeps them, the API reports them."""


class ApiModel(BaseModel):
    """A response body. ``answer["job"]`` reads a field like ``answer.job``.

    Why: ``Client`` returned plain dicts before it returned these models, and callers written
    against that (scripts, the existing tests) index by field name; new code uses attributes.
    """

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)


class Health(ApiModel):
    """``GET /health``: the process answers and its job store is readable."""

    ok: bool = True
    version: str


class JobView(ApiModel):
    """A job as its owner (or an admin) sees it."""

    id: str
    state: JobState
    owner: str = ""
    kind: str = ""
    created_at: float = 0.0
    """The server always sends these three; a client still reads an answer that leaves them out
    (what ``id`` and ``state`` say is all the CLI needs to follow and download a job)."""
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    note: str | None = None
    attempts: int = 0
    queue_position: int | None = None
    """1 = next to start; None when not queued."""
    progress: dict[str, Any] | None = None
    private_roles: list[str] = Field(default_factory=list)
    waiting_for: list[str] = Field(default_factory=list)
    """Environment-variable names of keys to re-supply (state ``waiting_for_credentials``)."""
    batch_id: str | None = None
    spec: str | None = None
    """The task's name (``name:`` of its spec), when it has one."""
    model: str | None = None
    """The subject's model name, when the submission or its spec named one."""


class BatchView(ApiModel):
    """The caller's jobs of one batch, and how many are in each state."""

    ok: bool = True
    id: str
    jobs: list[JobView]
    states: dict[str, int]
    finished: bool
    """True when every job is in a final state."""


class SubmitResponse(ApiModel):
    ok: bool = True
    job: JobView
    warnings: list[str] = Field(default_factory=list)
    tunnel_secret: str | None = None
    """Private mode only: proves to the tunnel endpoint that a connection is the submitter's. Shown once."""


class ServerInfo(ApiModel):
    ok: bool = True
    status: Literal["idle", "busy"]
    version: str
    slots: int
    running: int
    queue_length: int
    queue_max: int
    open: bool
    rate_limit: str | None = None
    jobs: list[dict[str, Any]] = Field(default_factory=list)
    """Running and queued jobs; other users' ids anonymized (first 6 and last 2 characters)."""
    you: str | None = None
    tunnel: bool = False


class ArtifactInfo(ApiModel):
    path: str
    size: int


class LogPage(ApiModel):
    offset: int
    next_offset: int
    data: str
    eof: bool
    state: str
