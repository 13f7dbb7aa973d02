"""Overwriting a finished job's secrets in its files (defence in depth; the engine writes none).

Split from the job-directory code because it runs at a different time (after the job's processes
are gone) and has its own care: SQLite files are scrubbed through SQLite, never as bytes.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("proctor.server")


def scrub_secrets(root: Path, secrets: list[str]) -> int:
    """Overwrite any occurrence of a secret in the job's files with asterisks of the same length.

    Defence in depth: the engine never writes keys, but a command template or a tool might echo
    its environment. SQLite files are never edited as bytes: a WAL frame whose bytes change fails
    its checksum, and SQLite then drops it and every later frame (scored samples lost). They are
    checkpointed and scrubbed through SQLite instead (``_scrub_sqlite``). Called once the job's
    processes are gone, so no connection of the job is open.
    """
    needles = [s for s in secrets if len(s) >= 4]
    if not needles:
        return 0
    changed = 0
    files = [p for p in root.rglob("*") if not p.is_symlink() and p.is_file()]
    databases = [p for p in files if _is_sqlite(p)]
    companions = {Path(f"{db}{suffix}") for db in databases for suffix in _SQLITE_COMPANIONS}
    for db in databases:
        changed += _scrub_sqlite(db, needles)
    raw = [n.encode() for n in needles]
    for path in files:
        if path in companions or path in databases:
            continue
        try:
            changed += _scrub_file(path, raw)
        except OSError:
            continue
    return changed


_CHUNK = 1 << 20


def _scrub_file(path: Path, needles: list[bytes]) -> int:
    """Replace ``needles`` in place, a chunk at a time: a job may leave files of many GB, and the
    server must not read one whole into memory. Chunks overlap by the longest needle minus one,
    so a needle across a boundary is found; same-length replacement keeps every offset."""
    overlap = max(len(n) for n in needles) - 1
    changed = 0
    with open(path, "r+b") as fh:
        start = 0
        while True:
            fh.seek(start)
            chunk = fh.read(_CHUNK + overlap)
            if not chunk:
                break
            new = chunk
            for needle in needles:
                new = new.replace(needle, b"*" * len(needle))
            if new != chunk:
                fh.seek(start)
                fh.write(new)
                changed = 1
            if len(chunk) <= overlap or len(chunk) < _CHUNK + overlap:
                break
            start += _CHUNK
    return changed


_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _quote(name: str) -> str:
    """An SQL identifier (the database is the job's: its names are not trusted)."""
    return '"' + name.replace('"', '""') + '"'


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _scrub_sqlite(db: Path, needles: list[str]) -> int:
    """Checkpoint the WAL into the database, replace secrets in text values, and make sure no old
    copy survives in free pages (``secure_delete``, else ``VACUUM``). Returns 1 if anything changed.

    A database whose companion files are symlinks is left alone: SQLite would follow them.
    """
    if any(Path(f"{db}{suffix}").is_symlink() for suffix in _SQLITE_COMPANIONS):
        log.warning("not scrubbing %s: a companion file is a symlink", db)
        return 0
    changed = 0
    try:
        conn = sqlite3.connect(str(db), isolation_level=None, timeout=10)
    except sqlite3.Error as exc:
        log.warning("could not open %s to scrub it: %s", db, exc)
        return 0
    try:
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        conn.execute("BEGIN IMMEDIATE")
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({_quote(table)})")]
            for col in map(_quote, columns):
                for needle in needles:
                    cur = conn.execute(
                        f"UPDATE {_quote(table)} SET {col} = replace({col}, ?, ?) "
                        f"WHERE typeof({col}) = 'text' AND instr({col}, ?) > 0",
                        (needle, "*" * len(needle), needle),
                    )
                    changed += cur.rowcount
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = db.read_bytes()
        if any(n.encode() in raw for n in needles):
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            changed += 1
    except sqlite3.Error as exc:
        log.warning("could not scrub %s: %s", db, exc)
    finally:
        conn.close()
    return 1 if changed else 0
