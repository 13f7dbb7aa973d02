"""The job store: jobs, API tokens (hashed) and submission times, in SQLite or PostgreSQL.

SQLAlchemy Core rather than the ORM: the rows are small and flat, and the same SQL runs on both
back ends. The store never sees a secret: tokens are stored as sha256 digests, API keys not at all.
Calls are synchronous and short (one row or an index scan); the server makes them from its event
loop, which is cheaper than a thread hop for sub-millisecond SQLite statements.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url

from proctor.errors import ConflictError, InputError, NotFoundError
from proctor.server.schemas import JobState

TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
ACTIVE_STATES: frozenset[str] = frozenset({"running", "waiting_for_tunnel"})

metadata = MetaData()

tokens_table = Table(
    "tokens",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("admin", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

jobs_table = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(160), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(32), nullable=False, index=True),
    Column("priority", Integer, nullable=False, default=1),
    # priority 0 = re-queued after a restart or resumed: runs before anything submitted later.
    Column("seq", Integer, nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("queued_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("exit_code", Integer),
    Column("note", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("timeout", Float),
    Column("request", Text, nullable=False),
    # request: the submission minus every secret (JSON): what is needed to run the job again.
    Column("key_envs", Text, nullable=False, default="[]"),
    # key_envs: names of the environment variables whose values (API keys) live in memory only.
    Column("private_roles", Text, nullable=False, default="[]"),
    Column("pid", Integer),
    Column("proc_start", Float),
    # proc_start: the job process's start time, to tell it from a later process reusing its pid.
    Column("progress", Text),
    Column("tunnel_digest", String(64)),
    # tunnel_digest: sha256 of a private job's tunnel secret (never the secret), so that the
    # submitter's agent is let back in after a server restart without `proctor resume`.
    Column("batch_id", String(64), index=True),
    # batch_id: the batch (`proctor submit` of several specs or models) the job belongs to.
    Column("spec_name", String(128)),
    Column("model_name", String(256)),
    # spec_name, model_name: the task's name and the subject's model, for tables of many jobs.
    Column("instance", String(160)),
    # instance: the server instance that runs the job, or holds its secrets while it is queued.
    Column("lease_until", Float),
    # lease_until: when that instance's claim lapses unless renewed (see server/leases.py).
    Column("stop_requested_at", Float),
    Column("stop_requested_by", Text),
    # stop_requested_*: a cancel asked of a server that does not run the job (who, through which
    # instance); the instance that runs it, or takes it over, stops it (see server/leases.py).
)

submissions_table = Table(
    "submissions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(160), nullable=False, index=True),
    Column("at", Float, nullable=False, index=True),
)

web_sessions_table = Table(
    "web_sessions",
    metadata,
    # The dashboard's browser sessions (server/web_sessions.py): shared by a fleet, kept over a
    # restart. Keyed by the sha256 of the cookie's random id, so a row read from the store is no cookie.
    Column("key", String(64), primary_key=True),
    Column("owner", String(160), nullable=False, index=True),
    Column("token_digest", String(64), index=True),
    # token_digest: the login token's digest (as in tokens.digest); NULL in open mode.
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)


def _add_missing_columns(engine: Engine) -> None:
    """Give a store made by an older proctor the nullable columns added since.

    ``create_all`` makes missing tables, never missing columns. Every column added after the
    first release is nullable, so ``ALTER TABLE ... ADD COLUMN`` is all an upgrade needs; anything
    more would call for a migration tool.
    """
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as conn:
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for index in table.indexes:  # an added column's index (e.g. batch_id) is not made by create_all
            index.create(engine, checkfirst=True)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class TokenInfo:
    name: str
    admin: bool


@dataclass(slots=True)
class JobRow:
    """One job as stored; JSON columns decoded."""

    id: str
    owner: str
    kind: str
    state: JobState
    priority: int
    seq: int
    created_at: float
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    note: str | None = None
    attempts: int = 0
    timeout: float | None = None
    request: dict[str, Any] = field(default_factory=dict)
    key_envs: list[str] = field(default_factory=list)
    private_roles: list[str] = field(default_factory=list)
    pid: int | None = None
    proc_start: float | None = None
    progress: dict[str, Any] | None = None
    tunnel_digest: str | None = None
    batch_id: str | None = None
    spec_name: str | None = None
    model_name: str | None = None
    instance: str | None = None
    lease_until: float | None = None
    stop_requested_at: float | None = None
    stop_requested_by: str | None = None

    @classmethod
    def from_mapping(cls, row: Any) -> JobRow:
        data = dict(row)
        for name, empty in (("request", "{}"), ("key_envs", "[]"), ("private_roles", "[]")):
            data[name] = json.loads(data[name] or empty)
        data["progress"] = json.loads(data["progress"]) if data["progress"] else None
        return cls(**data)


_JSON_COLUMNS = {"request", "key_envs", "private_roles", "progress"}


class JobStore:
    """All persistent server state; one instance per server process."""

    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    @property
    def shared(self) -> bool:
        """True when other servers may use this store too: any back end but SQLite (one machine's
        file, one server). Their schedulers then look for queued jobs now and then, since a job
        another server queued wakes nothing here."""
        return self.engine.dialect.name != "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    # tokens -------------------------------------------------------------------------------------

    def create_token(self, name: str, *, admin: bool = False) -> str:
        """Make a token for ``name`` and return it; only its digest is kept, so show it once."""
        if not name or len(name) > 128 or name.startswith("ip:"):
            raise InputError("a token name must be 1-128 characters and not start with 'ip:'")
        token = "pt_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            if conn.execute(select(tokens_table.c.name).where(tokens_table.c.name == name)).first():
                raise ConflictError(f"a token named {name!r} exists already")
            conn.execute(
                insert(tokens_table).values(name=name, digest=hash_token(token), admin=admin, created_at=time.time())
            )
        return token

    def revoke_token(self, name: str) -> bool:
        """Delete the token named ``name``; False when there is none."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(tokens_table).where(tokens_table.c.name == name))
        return bool(result.rowcount)

    def list_tokens(self) -> list[dict[str, Any]]:
        """Names, admin flags and creation times; digests stay in the store."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(tokens_table.c.name, tokens_table.c.admin, tokens_table.c.created_at).order_by(
                    tokens_table.c.created_at
                )
            ).all()
        return [{"name": r.name, "admin": bool(r.admin), "created_at": r.created_at} for r in rows]

    def lookup_token(self, token: str) -> TokenInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tokens_table.c.name, tokens_table.c.admin).where(tokens_table.c.digest == hash_token(token))
            ).first()
        return TokenInfo(name=row.name, admin=bool(row.admin)) if row else None

    # submissions (quotas) -------------------------------------------------------------------------

    def record_submission(self, owner: str, at: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(submissions_table).values(owner=owner, at=at))

    def submissions_since(self, owner: str, since: float) -> list[float]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(submissions_table.c.at)
                .where(submissions_table.c.owner == owner, submissions_table.c.at >= since)
                .order_by(submissions_table.c.at)
            ).all()
        return [r.at for r in rows]

    # jobs -----------------------------------------------------------------------------------------

    def insert_job(self, row: JobRow) -> JobRow:
        with self.engine.begin() as conn:
            seq = conn.execute(select(func.coalesce(func.max(jobs_table.c.seq), 0))).scalar_one() + 1
            row.seq = seq
            conn.execute(insert(jobs_table).values(**_encode(_as_dict(row))))
        return row

    def get(self, job_id: str) -> JobRow:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return JobRow.from_mapping(row)

    def find(self, job_id: str) -> JobRow | None:
        try:
            return self.get(job_id)
        except NotFoundError:
            return None

    def update(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**_encode(values)))

    def transition(self, job_id: str, from_states: set[str] | frozenset[str], **values: Any) -> bool:
        """Compare-and-set of the state: True when the job was in one of ``from_states``."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.state.in_(list(from_states)))
                .values(**_encode(values))
            )
        return bool(result.rowcount)

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(jobs_table).where(jobs_table.c.id == job_id))

    def list_jobs(
        self, *, owner: str | None = None, states: set[str] | None = None, batch: str | None = None
    ) -> list[JobRow]:
        query = select(jobs_table).order_by(jobs_table.c.seq)
        if owner is not None:
            query = query.where(jobs_table.c.owner == owner)
        if batch is not None:
            query = query.where(jobs_table.c.batch_id == batch)
        if states is not None:
            query = query.where(jobs_table.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [JobRow.from_mapping(r) for r in conn.execute(query).mappings()]

    def queued(self) -> list[JobRow]:
        """The queue in the order it is served: re-queued jobs first, then first come first served."""
        query = (
            select(jobs_table)
            .where(jobs_table.c.state == "queued")
            .order_by(jobs_table.c.priority, jobs_table.c.queued_at, jobs_table.c.seq)
        )
        with self.engine.connect() as conn:
            return [JobRow.from_mapping(r) for r in conn.execute(query).mappings()]

    def count(self, states: set[str] | frozenset[str]) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(jobs_table).where(jobs_table.c.state.in_(list(states)))
                ).scalar_one()
            )

    def recent_durations(self, limit: int = 20) -> list[float]:
        query = (
            select(jobs_table.c.started_at, jobs_table.c.finished_at)
            .where(jobs_table.c.started_at.is_not(None), jobs_table.c.finished_at.is_not(None))
            .order_by(jobs_table.c.finished_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [max(0.0, r.finished_at - r.started_at) for r in conn.execute(query)]

    def iter_all(self) -> Iterator[JobRow]:
        yield from self.list_jobs()


def _as_dict(row: JobRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in JobRow.__dataclass_fields__}


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in _JSON_COLUMNS & out.keys():
        if out[name] is not None or name != "progress":
            out[name] = json.dumps(out[name])
    return out


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `proctor server token create` write while the server reads; NORMAL sync is durable
    # enough with WAL and keeps every state change well under a millisecond.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
