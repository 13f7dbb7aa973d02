"""A throwaway PostgreSQL server for the tests, and the job-store URL each test server should use.

``PostgresCluster.start`` runs Debian's ``initdb`` and then ``postgres`` under proctor's watchdog
(our handle that stops it; and no orphan even if the tests are SIGKILLed), listening on a Unix socket only, in a fresh directory: no TCP port is
opened at all. As root it runs as the unprivileged ``postgres`` user (PostgreSQL refuses root).
``fsync=off``: the cluster lives for one test session and is deleted after.

The server helpers ask ``store_url_for(data_dir)``: ``None`` (SQLite in the data directory) unless
the ``store_backend`` fixture chose PostgreSQL, in which case each data directory gets its own
database, so a restarted server (same data directory) finds its jobs again and tests never share
a store.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "PROCTOR_TEST_POSTGRES"
"""Set to the cluster's socket directory while a test runs against PostgreSQL."""

PORT = 5432
"""Only names the socket file (``.s.PGSQL.5432``) in the cluster's own directory; no TCP."""


def find_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: PATH first, then Debian's versioned directories."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def missing_reason() -> str | None:
    """Why no PostgreSQL can run here, or None when one can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is missing: pip install -e '.[postgres]' (scripts/test.sh does)"
    if find_bindir() is None:
        return "PostgreSQL is not installed: apt-get install postgresql (scripts/test.sh does, as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no unprivileged 'postgres' user to run PostgreSQL as"
        if shutil.which("setpriv") is None:
            return "running as root without setpriv (util-linux) to run PostgreSQL as the 'postgres' user"
    return None


@dataclass
class PostgresCluster:
    root: Path
    proc: subprocess.Popen[bytes]
    """The watchdog; we hold its stdin (the lifeline)."""
    pid: int | None
    """postgres itself."""

    @classmethod
    def start(cls) -> PostgresCluster:
        bindir = find_bindir()
        assert bindir is not None
        root = Path(tempfile.mkdtemp(prefix="proctor-pg-"))
        user: int | None = None
        group: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            user, group = entry.pw_uid, entry.pw_gid
            os.chown(root, user, group)
        log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below, once both children have it
        try:
            subprocess.run(
                [
                    bindir / "initdb",
                    "-D",
                    root / "db",
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
                group=group,
                timeout=120,
            )
            # Through proctor's watchdog: the cluster dies with this test process even on SIGKILL.
            # As root the watchdog stays root (the interpreter may be in root's home) and setpriv
            # becomes postgres in place (no fork: the pid the watchdog reports is postgres).
            as_user = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"] if user is not None else []
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proctor.models._watchdog",
                    "--grace",
                    "5",
                    "--",
                    *as_user,
                    str(bindir / "postgres"),
                    "-D",
                    str(root / "db"),
                    "-k",
                    str(root),
                    "-p",
                    str(PORT),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=400",
                    "-c",
                    "shared_buffers=32MB",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                cwd=root,
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        finally:
            log.close()
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # "pid N", or EOF if postgres could not start
        cluster = cls(root, proc, int(line.split()[1]) if line.startswith("pid ") else None)
        try:
            cluster._wait_ready()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _wait_ready(self) -> None:
        import psycopg

        for _ in range(600):  # at most ~30 s
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError("postgres did not accept connections within 30 s")

    def conninfo(self, database: str) -> str:
        return f"host={self.root} port={PORT} user=postgres dbname={database}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, then exit), then remove its files.

        Closing the lifeline afterwards makes the watchdog end whatever is left (SIGTERM, 5 s, SIGKILL).
        """
        if self.pid is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        self.proc.stdin.close()
        self.proc.stdout.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def store_url_for(data_dir: Path) -> str | None:
    """The job-store URL for a server on ``data_dir``: None means the default (SQLite in it)."""
    socket_dir = os.environ.get(ENV)
    if not socket_dir:
        return None
    name = database_name(data_dir)
    with _admin(socket_dir) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={socket_dir}&port={PORT}"


def database_name(data_dir: Path) -> str:
    return "t_" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]


def connect(data_dir: Path) -> Any:
    """A psycopg connection to the job store of the server on ``data_dir`` (to look behind the API)."""
    import psycopg

    return psycopg.connect(f"host={os.environ[ENV]} port={PORT} user=postgres dbname={database_name(data_dir)}")


def _admin(socket_dir: str) -> Any:
    import psycopg

    return psycopg.connect(f"host={socket_dir} port={PORT} user=postgres dbname=postgres", autocommit=True)
