"""Starting a private Ray on 127.0.0.1, or joining a cluster, and leaving it again.

Ray binds the machine's external address by default and starts a dashboard and usage-stats
reporting; a private Ray started for one ``proctor run`` must expose nothing beyond loopback, so
every address Ray would pick is pinned to 127.0.0.1 and the optional services are off
(``tests/ray/test_ray_executor.py`` checks every listening socket of the Ray processes).

It must not leave secrets or files behind either. Ray 2.x turns token authentication on for a new
local cluster and writes a new token to ``~/.ray/auth_token`` with the process's umask (0644:
readable by every user of the machine), and keeps its session (logs, sockets, port files) in a
world-writable ``/tmp/ray`` that nobody removes. A private Ray therefore gets a fresh token through
its environment only (Ray's processes inherit it; ``/proc/PID/environ`` is readable by its owner
alone), so no token file is written, and its own directory, mode 0700, removed when the run ends
(``tests/ray/test_s4_private_ray.py``). Token authentication stays on: 127.0.0.1 is reachable by
every local user, and without a token any of them could run code in the cluster as this user.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import psutil

from proctor.errors import ExecutorError, InputError

log = logging.getLogger("proctor.ray")

INSTALL_HINT = "pip install 'proctor[ray]'"
OBJECT_STORE_BYTES = 150 * 1024 * 1024
"""The private Ray's object store: samples and results are small, so a small store suffices and
keeps an idle head's memory low on a shared machine."""
LOOPBACK = "127.0.0.1"


def import_ray(*, loopback: bool = False) -> ModuleType:
    """``ray``, or one line saying how to install it (exit 2) when the optional extra is missing.

    ``loopback``: this process's Ray node address is 127.0.0.1. Ray 2.x turns a given 127.0.0.1
    into the machine's external address unless its "no cluster" switch is set (meant for
    laptops: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), and only a node whose address is 127.0.0.1
    has its gRPC servers listen on loopback alone. Ray reads the switch when it is imported, and
    the processes it starts inherit it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise InputError(f"--executor ray needs the ray package, which is not installed: {INSTALL_HINT}") from None
    return ray


def _is_loopback(address: str) -> bool:
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_client_address(address: str) -> bool:
    """``ray://HOST:PORT``: the cluster's Ray Client server (``ray start --head`` opens it on 10001).

    A Ray Client driver talks gRPC over TCP only, so it works where a GCS-address driver cannot: in
    a server job's sandbox, whose own PID namespace and private ``/tmp`` hide the node's raylet.
    """
    return address.startswith("ray://")


@dataclass
class RaySession:
    """This process's connection to Ray; ``close`` disconnects, and stops Ray if it started it."""

    ray: ModuleType
    address: str | None
    """The cluster joined, or None for the private Ray this session started."""
    private_dir: Path | None = None
    """The private Ray's own directory (mode 0700): its session, logs and sockets. Removed by
    ``close``; None when a cluster was joined."""
    private_processes: tuple[psutil.Process, ...] = ()
    """What starting the private Ray spawned (GCS, raylet, agents), for ``abandon``."""

    @property
    def started_here(self) -> bool:
        return self.address is None

    @classmethod
    def open(cls, address: str | None, *, workers: int) -> RaySession:
        private_dir = None
        if address is None:
            private_dir = Path(tempfile.mkdtemp(prefix="proctor-", dir=_private_base()))  # 0700: ours only
            _private_token()  # before Ray is imported: it reads the mode when it loads its config
        try:
            return cls._open(address, workers=workers, private_dir=private_dir)
        except BaseException:
            if private_dir is not None:
                shutil.rmtree(private_dir, ignore_errors=True)
            raise

    @classmethod
    def _open(cls, address: str | None, *, workers: int, private_dir: Path | None) -> RaySession:
        ray = import_ray(loopback=address is None or _is_loopback(address))
        me = psutil.Process()
        before = {child.pid for child in me.children(recursive=True)}
        common: dict[str, Any] = {
            "log_to_driver": False,  # the actors' logs stay in Ray's session directory
            "logging_level": logging.WARNING,
            "namespace": "proctor",
        }
        try:
            if address is None:
                assert private_dir is not None, "open() makes it"
                # A private Ray: never the one RAY_ADDRESS points at, nothing bound beyond loopback,
                # nothing written outside its own directory. Ray makes the directory it is given
                # world-writable, so it gets a subdirectory (r): the 0700 parent keeps others out.
                os.environ.pop("RAY_ADDRESS", None)
                _reload_auth_config()
                ray.init(
                    _node_ip_address=LOOPBACK,
                    include_dashboard=False,
                    num_cpus=max(workers, os.cpu_count() or 1),
                    object_store_memory=OBJECT_STORE_BYTES,
                    _temp_dir=str(private_dir / "r"),
                    **common,
                )
            elif is_client_address(address):
                # Ray Client: gRPC over TCP to the cluster's client server; no local raylet needed.
                _init_client(ray, address, common)
            else:
                extra: dict[str, Any] = {"_node_ip_address": LOOPBACK} if _is_loopback(address) else {}
                ray.init(address=address, **common, **extra)
        except (ConnectionError, ValueError, RuntimeError, OSError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ExecutorError(
                f"could not start or reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        log.info("ray: %s", f"joined the cluster at {address}" if address else "started a private Ray on 127.0.0.1")
        spawned = tuple(child for child in me.children(recursive=True) if child.pid not in before)
        return cls(ray, address, private_dir, spawned if private_dir is not None else ())

    def close(self) -> None:
        """Disconnect; a private Ray's processes (GCS, raylet, workers) stop with it, and its
        directory is removed once they have (one still writing its logs would refill it).

        A Ctrl-C or SIGTERM arriving meanwhile (the run's own handlers are gone by now) waits
        until this is done, at most ``PRIVATE_STOP_GRACE`` and a few seconds, then takes effect:
        raised in the middle, it would leave Ray half stopped and its directory behind.
        """
        with _signals_deferred():
            tree = self._private_tree()
            try:
                self.ray.shutdown()
            finally:
                self._remove_private(tree, grace=PRIVATE_STOP_GRACE)

    def abandon(self) -> None:
        """This process exits at once (a second Ctrl-C), without Ray's slow shutdown: kill the
        private Ray's processes and the workers they started, then remove its directory, so
        nothing it wrote outlives the run. A joined cluster is left alone."""
        self._remove_private(self._private_tree(), grace=0.0)

    def _private_tree(self) -> list[psutil.Process]:
        """The private Ray's processes now, with their children (workers come and go)."""
        tree: dict[int, psutil.Process] = {}
        for proc in self.private_processes:
            with contextlib.suppress(psutil.Error):
                tree.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
        return list(tree.values())

    def _remove_private(self, tree: list[psutil.Process], *, grace: float) -> None:
        """Wait up to ``grace`` seconds for ``tree`` to exit, kill what has not, remove the directory."""
        if self.private_dir is None:
            return
        deadline = time.monotonic() + grace
        alive = _running(tree)
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = _running(alive)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + 2.0
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = _running(alive)
        shutil.rmtree(self.private_dir, ignore_errors=True)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running. A zombie is done: its parent (or a container's init,
    which may never reap it) holds only its exit status."""
    running = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM received inside the block are delivered when it ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


DEFERRED = (signal.SIGINT, signal.SIGTERM)

PRIVATE_STOP_GRACE = 10.0
"""Seconds the private Ray's processes get to exit after ``ray.shutdown()`` before they are killed."""

SOCKET_PATH_MAX = 107
"""Bytes in a Unix socket's path (``sun_path``, less its NUL). Ray's sockets live in its session
directory: ``BASE/proctor-XXXXXXXX/r/session_DATE_TIME_USEC_PID/sockets/plasma_store``."""
SOCKET_PATH_BELOW_BASE = len("/proctor-XXXXXXXX/r/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")


def _private_base() -> str:
    """Where the private Ray's directory goes: the temp directory (``TMPDIR``), or ``/tmp`` when
    that one's path is too long for Ray's sockets (Ray would fail to start)."""
    base = tempfile.gettempdir()
    return base if len(base) + SOCKET_PATH_BELOW_BASE <= SOCKET_PATH_MAX else "/tmp"


def _private_token() -> None:
    """A new token for a private Ray, in this process's environment only (never in a file).

    Ray's processes inherit it, and so do the ``--ray-address`` drivers this process starts (a
    test's session Ray), which is how they join. Any token or mode set before is not this
    cluster's: it is replaced.
    """
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _reload_auth_config() -> None:
    """Make an already imported Ray see the token set after it loaded its config.

    Ray reads ``RAY_AUTH_MODE`` into its config and caches the token it finds; re-reading both is
    what Ray itself does when it turns token authentication on.
    """
    with contextlib.suppress(ImportError, AttributeError):
        raylet: Any = importlib.import_module("ray._raylet")
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()


CLIENT_ATTEMPTS = 3
"""Tries to join through Ray Client. Its server forks a "specific server" process per client, whose
start-up can fail on a loaded host ("Initialization failure from server"); a new try gets a new one."""


def _init_client(ray: Any, address: str, common: dict[str, Any]) -> None:
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **common)
            return
        except ConnectionError as exc:
            if attempt == CLIENT_ATTEMPTS:
                raise
            log.warning(
                "ray: joining %s failed (%s); trying again", address, str(exc).splitlines()[0] if str(exc) else ""
            )
            time.sleep(2.0 * attempt)
