"""The ledger: one SQLite file per run that says what has been done, so nothing done is redone.

Why this shape:
- WAL mode with ``synchronous=NORMAL``: a committed transaction survives a ``kill -9`` of the
  process (only a power cut could lose the last one), and readers never block the writer.
- One writer thread owns the only write connection. The event loop only appends to a queue and
  wakes the writer, which commits everything queued in one transaction, at once: while it
  commits, the next batch gathers (group commit), so batches grow with the load and a commit is
  never waited for longer than the commit before it took. An answered sample is committed within
  milliseconds, not after a timer.
- ``await ledger.durable()`` returns once everything recorded so far is committed. The runner
  awaits it before a worker takes its next sample, so at a ``kill -9`` the only work lost is the
  calls in flight: at most one per worker, never an answer already received.
- Generation and scoring are separate tables: a run can be re-scored without calling a model.

States: pending → running → generated → scored, or → error (with an error class).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from proctor.evals.types import Sample, Score, SolveResult

SampleState = Literal["pending", "running", "generated", "scored", "error"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    input TEXT,
    target TEXT,
    choices TEXT,
    category TEXT,
    error_class TEXT,
    error TEXT,
    dispatches INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS generations (
    id TEXT PRIMARY KEY,
    output TEXT,
    messages TEXT,
    tokens_in INTEGER,
    tokens_out INTEGER,
    model_calls INTEGER,
    outcome TEXT,
    duration REAL,
    extra TEXT,
    created REAL
);
CREATE TABLE IF NOT EXISTS scores (
    id TEXT PRIMARY KEY,
    value REAL,
    answer TEXT,
    explanation TEXT,
    scorer TEXT,
    extra TEXT,
    created REAL
);
CREATE INDEX IF NOT EXISTS samples_state ON samples(state);
"""

_UPSERT_GENERATION = (
    "INSERT OR REPLACE INTO generations (id, output, messages, tokens_in, tokens_out, model_calls, outcome,"
    " duration, extra, created) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_SCORE = (
    "INSERT OR REPLACE INTO scores (id, value, answer, explanation, scorer, extra, created) VALUES (?,?,?,?,?,?,?)"
)


@dataclass(slots=True)
class LedgerRow:
    """One sample as the ledger knows it (joined across its tables)."""

    id: str
    idx: int
    state: SampleState
    input: Any
    target: Any
    choices: list[str] | None
    category: str | None
    error_class: str | None
    error: str | None
    dispatches: int
    started: float | None
    finished: float | None
    output: str | None
    messages: list[dict[str, Any]] | None
    tokens_in: int | None
    tokens_out: int | None
    model_calls: int | None
    outcome: str | None
    duration: float | None
    gen_extra: dict[str, Any] | None
    score: float | None
    answer: str | None
    explanation: str | None
    score_extra: dict[str, Any] | None


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class Ledger:
    """The run's durable record. Reads are synchronous; writes are queued to the writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(SCHEMA)
        # Reports are refreshed while the writer thread commits: reads get their own connection so
        # they never run inside the writer's open transaction.
        self._reader = connect(path)
        # deque.append is atomic and lock-free: the event loop never waits on the writer thread.
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._flushed = threading.Condition()
        self._submitted = 0
        self._committed = 0
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None
        # Callers of durable(), oldest first: (writes that must be committed, future to resolve).
        # The lock makes "not committed yet, so wait" and "committed, so wake the waiters" atomic
        # between the loop and the writer thread; it is held for a few instructions only.
        self._durable_lock = threading.Lock()
        self._durable_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attempts: dict[str, int] = {}
        """Sample id → dispatches so far (``samples.dispatches``), loaded by ``start_writer``."""

    # ---------------------------------------------------------------- meta and setup (sync)
    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def states(self) -> dict[str, tuple[SampleState, str | None]]:
        """Every known sample id → (state, error class)."""
        rows = self._conn.execute("SELECT id, state, error_class FROM samples")
        return {r[0]: (r[1], r[2]) for r in rows}

    def differences(self, samples: list[Sample]) -> tuple[list[str], list[str]]:
        """(ids this run has that ``samples`` lack, ids whose input or target changed)."""
        current = {s.id: (_dumps(s.input), _dumps(s.target)) for s in samples}
        missing: list[str] = []
        changed: list[str] = []
        for sample_id, stored_input, stored_target in self._conn.execute(
            "SELECT id, input, target FROM samples ORDER BY idx"
        ):
            now = current.get(sample_id)
            if now is None:
                missing.append(sample_id)
            elif now != (stored_input, stored_target):
                changed.append(sample_id)
        return missing, changed

    def add_samples(self, samples: list[Sample], start_index: int = 0) -> None:
        """Insert samples the ledger does not know yet as pending."""
        rows = [
            (
                s.id,
                start_index + i,
                "pending",
                _dumps(s.input),
                _dumps(s.target),
                None if s.choices is None else _dumps(s.choices),
                s.category,
            )
            for i, s in enumerate(samples)
        ]
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO samples (id, idx, state, input, target, choices, category)"
                " VALUES (?,?,?,?,?,?,?)",
                rows,
            )

    def recover_interrupted(self) -> int:
        """Samples left 'running' by a killed process never finished: they are pending again."""
        with self._transaction():
            cur = self._conn.execute("UPDATE samples SET state='pending' WHERE state='running'")
        return cur.rowcount

    def _transaction(self) -> _Tx:
        return _Tx(self._conn)

    # ---------------------------------------------------------------- hot path (non-blocking)
    def start_writer(self) -> None:
        # Attempt numbers are counted in memory from here on: the event loop never reads the disk.
        self._attempts = dict(self._conn.execute("SELECT id, dispatches FROM samples").fetchall())
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="proctor-ledger", daemon=True)
            self._writer.start()

    def _put(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._error is not None:
            raise RuntimeError(f"the ledger writer failed: {self._error}") from self._error
        self._submitted += 1
        self._pending.append((sql, params))
        if not self._wake.is_set():  # a plain read; set() takes a lock, so only when needed
            self._wake.set()

    async def durable(self) -> None:
        """Return once every write queued so far is committed (at once if it already is).

        Raises ``RuntimeError`` if the writer failed. Cancelling the wait leaves the writes
        queued: they are still committed.
        """
        target = self._submitted
        if self._error is not None:
            raise RuntimeError(f"the ledger writer failed: {self._error}") from self._error
        if self._writer is None:  # no writer thread (not started or closed): nothing would wake us
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._durable_lock:
            if self._committed >= target:
                return
            self._loop = loop
            self._durable_waiters.append((target, fut))
        await fut

    def mark_running(self, sample_id: str, started: float, *, generate: bool = True) -> int:
        """The sample is dispatched again; the answer is its attempt number (1 for the first).

        A new attempt owns the sample's record: when it will generate, whatever an earlier attempt
        left (a failed attempt's partial trajectory, an older score) is dropped in the same batch,
        so the artifacts never show one attempt's trajectory beside another attempt's result. A
        scoring-only attempt keeps the generation it scores. Older attempts stay in
        ``events.jsonl``, whose events name their attempt.
        """
        attempt = self._attempts.get(sample_id, 0) + 1
        self._attempts[sample_id] = attempt
        if attempt > 1:  # a first attempt has nothing to drop: no extra work on the hot path
            if generate:
                self._put("DELETE FROM generations WHERE id=?", (sample_id,))
            self._put("DELETE FROM scores WHERE id=?", (sample_id,))
        self._put(
            "UPDATE samples SET state='running', started=?, dispatches=dispatches+1, error_class=NULL, error=NULL"
            " WHERE id=?",
            (started, sample_id),
        )
        return attempt

    @staticmethod
    def _generation_params(sample_id: str, result: SolveResult, duration: float, now: float) -> tuple[Any, ...]:
        return (
            sample_id,
            result.output,
            _dumps(result.messages),
            result.tokens_in,
            result.tokens_out,
            result.model_calls,
            result.outcome,
            duration,
            _dumps(result.extra) if result.extra else None,
            now,
        )

    @staticmethod
    def _score_params(sample_id: str, score: Score, scorer: str, now: float) -> tuple[Any, ...]:
        extra = _dumps(score.extra) if score.extra else None
        return (sample_id, score.value, score.answer, score.explanation, scorer, extra, now)

    def record_generation(self, sample_id: str, result: SolveResult, duration: float) -> None:
        now = time.time()
        self._put(_UPSERT_GENERATION, self._generation_params(sample_id, result, duration, now))
        self._put("UPDATE samples SET state='generated', finished=? WHERE id=?", (now, sample_id))

    def record_score(self, sample_id: str, score: Score, scorer: str) -> None:
        self._put(_UPSERT_SCORE, self._score_params(sample_id, score, scorer, time.time()))
        self._put(
            "UPDATE samples SET state='scored', error_class=NULL, error=NULL, finished=COALESCE(finished, ?)"
            " WHERE id=?",
            (time.time(), sample_id),
        )

    def record_done(self, sample_id: str, result: SolveResult, duration: float, score: Score, scorer: str) -> None:
        """Generation and score of a sample finished together: one row each, one state change."""
        now = time.time()
        self._put(_UPSERT_GENERATION, self._generation_params(sample_id, result, duration, now))
        self._put(_UPSERT_SCORE, self._score_params(sample_id, score, scorer, now))
        self._put("UPDATE samples SET state='scored', finished=? WHERE id=?", (now, sample_id))

    def record_error(
        self,
        sample_id: str,
        error_class: str,
        message: str,
        *,
        partial: SolveResult | None = None,
        duration: float | None = None,
    ) -> None:
        """The sample failed; ``partial`` (what the solver did before the failure) is kept as its
        generation, with no output, so its trajectory reaches ``traj_log_all.jsonl``. A sample in
        error has no score (a re-scoring that failed leaves none behind)."""
        if partial is not None:
            params = self._generation_params(sample_id, partial, duration or 0.0, time.time())
            self._put(_UPSERT_GENERATION, (sample_id, None, *params[2:]))
        self._put("DELETE FROM scores WHERE id=?", (sample_id,))
        self._put(
            "UPDATE samples SET state='error', error_class=?, error=?, finished=? WHERE id=?",
            (error_class, message[:4000], time.time(), sample_id),
        )

    def record_skip(self, sample_id: str, reason: str) -> None:
        self.record_error(sample_id, "skipped", reason)

    def _write_loop(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            closing = self._closing
            batch: list[tuple[str, tuple[Any, ...]]] = []
            try:
                while True:
                    batch.append(self._pending.popleft())
            except IndexError:
                pass
            if batch:
                self._commit(batch)
            if closing:
                return

    def _commit(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            with self._transaction():
                for sql, params in batch:
                    self._conn.execute(sql, params)
        except BaseException as exc:  # surfaced to the loop through _put, durable and flush
            self._error = exc
        with self._flushed:
            with self._durable_lock:
                self._committed += len(batch)
                loop = self._loop if self._durable_waiters else None
            self._flushed.notify_all()
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _settle(self) -> None:
        """On the event loop: resolve the durable() waits the last commit satisfied."""
        error = self._error
        with self._durable_lock:
            committed = self._committed
            ready = []
            waiters = self._durable_waiters
            while waiters and (error is not None or waiters[0][0] <= committed):
                ready.append(waiters.popleft()[1])
        for fut in ready:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(RuntimeError(f"the ledger writer failed: {error}"))
            else:
                fut.set_result(None)

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything queued so far is committed; True if it was."""
        if self._writer is None or not self._writer.is_alive():
            return self._submitted == self._committed
        target = self._submitted
        self._wake.set()
        with self._flushed:
            return self._flushed.wait_for(lambda: self._committed >= target, timeout=timeout)

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._closing = True
            self._wake.set()
            self._writer.join(timeout=30)
        self._writer = None
        self._reader.close()
        self._conn.close()

    # ---------------------------------------------------------------- reads
    def rows(self) -> Iterator[LedgerRow]:
        """Every sample with its generation and score, in dataset order."""
        cur = self._reader.execute(
            "SELECT s.id, s.idx, s.state, s.input, s.target, s.choices, s.category, s.error_class, s.error, s.dispatches,"
            " s.started, s.finished, g.output, g.messages, g.tokens_in, g.tokens_out, g.model_calls, g.outcome,"
            " g.duration, g.extra, c.value, c.answer, c.explanation, c.extra"
            " FROM samples s LEFT JOIN generations g ON g.id = s.id LEFT JOIN scores c ON c.id = s.id"
            " ORDER BY s.idx"
        )
        for r in cur:
            yield LedgerRow(
                id=r[0],
                idx=r[1],
                state=r[2],
                input=_loads(r[3]),
                target=_loads(r[4]),
                choices=_loads(r[5]),
                category=r[6],
                error_class=r[7],
                error=r[8],
                dispatches=r[9],
                started=r[10],
                finished=r[11],
                output=r[12],
                messages=_loads(r[13]),
                tokens_in=r[14],
                tokens_out=r[15],
                model_calls=r[16],
                outcome=r[17],
                duration=r[18],
                gen_extra=_loads(r[19]),
                score=r[20],
                answer=r[21],
                explanation=r[22],
                score_extra=_loads(r[23]),
            )

    def trajectory_lines(self) -> Iterator[str]:
        """``traj_log_all.jsonl`` lines, built from the stored JSON text without decoding it.

        Agent trajectories are the bulk of a run's data; decoding and re-encoding them only to
        copy them into a file would double the cost of every report refresh.
        """
        cur = self._reader.execute(
            "SELECT s.id, s.state, s.dispatches, c.value, g.messages, g.extra FROM samples s"
            " JOIN generations g ON g.id = s.id LEFT JOIN scores c ON c.id = s.id"
            " WHERE g.messages IS NOT NULL ORDER BY s.idx"
        )
        for sample_id, state, attempt, score, messages, extra in cur:
            head = (
                f'{{"id": {_dumps(sample_id)}, "state": {_dumps(state)}, "attempt": {attempt},'
                f' "score": {_dumps(score)}, "messages": '
            )
            tail = "}\n" if not extra or extra == "{}" else ", " + extra[1:] + "\n"
            yield head + messages + tail

    def generation(self, sample_id: str) -> SolveResult | None:
        r = self._reader.execute(
            "SELECT output, messages, tokens_in, tokens_out, model_calls, outcome, extra FROM generations WHERE id=?",
            (sample_id,),
        ).fetchone()
        if r is None:
            return None
        return SolveResult(
            output=r[0] or "",
            messages=_loads(r[1]) or [],
            tokens_in=r[2] or 0,
            tokens_out=r[3] or 0,
            model_calls=r[4] or 0,
            outcome=r[5],
            extra=_loads(r[6]) or {},
        )


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class _Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
