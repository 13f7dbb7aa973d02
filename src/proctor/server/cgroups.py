"""A memory and a pids cgroup per sandboxed job: the job's ceiling as a whole, not per process.

Why: RLIMIT_AS bounds one process's address space only. A job escapes it with memory no address
space limit sees (a memfd, SysV shm) or with many processes each under it. A cgroup counts every
page the job's processes charge, whatever the kind, and every process it forks.

Where: under the server's own cgroup (``/proc/self/cgroup``), the place we have rights and that
the host accounts, as ``<mount>/<own path>/proctor-<server pid>/<job id>``. Two backends: cgroup
v1 (separate ``memory`` and ``pids`` hierarchies) and v2 (one unified hierarchy), chosen once at
server start. Without a writable memory controller the server keeps rlimits only and says so
once (``sandbox.cgroups: auto``), or refuses to start (``required``).

The job's first process joins before it runs job code: ``wrapper`` is an ``sh`` that writes its
own pid into each ``cgroup.procs`` and then execs the job's command line (which holds no secret).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from proctor.errors import InputError

log = logging.getLogger("proctor.server")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "proctor-"
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@dataclass(frozen=True, slots=True)
class Controller:
    """One place job cgroups are made: ``base`` (this server's parent dir) and the files to write."""

    base: Path
    limit_files: tuple[str, ...]
    """Files given the controller's ceiling, in order (v1 memsw must follow the memory limit)."""


@dataclass(frozen=True, slots=True)
class JobCgroups:
    """This server's job cgroups: ``memory`` (always) and ``pids`` (when the host has it)."""

    version: int
    memory: Controller
    pids: Controller | None
    required: bool = False
    """``sandbox.cgroups: required``: a job whose cgroups cannot be made does not start."""

    def _dirs(self, job_id: str) -> list[Path]:
        return [c.base / job_id for c in (self.memory, self.pids) if c is not None]

    def create(self, job_id: str, *, memory_mb: int, processes: int) -> list[Path]:
        """Make the job's cgroups with their ceilings; the ``cgroup.procs`` files its first process joins.

        With ``auto``, a failure is logged and the job runs on rlimits only (``[]``)."""
        try:
            return self._create(job_id, memory_mb=memory_mb, processes=processes)
        except OSError as exc:
            if self.required:
                raise
            log.warning("job %s runs without its cgroups (rlimits only): %s", job_id, exc)
            self.remove(job_id, tries=1)
            return []

    def _create(self, job_id: str, *, memory_mb: int, processes: int) -> list[Path]:
        procs = []
        for ctl, value in ((self.memory, memory_mb * 1024 * 1024), (self.pids, processes)):
            if ctl is None:
                continue
            path = ctl.base / job_id
            path.mkdir(parents=True, exist_ok=True)
            for name in ctl.limit_files:
                if (path / name).exists():
                    (path / name).write_text(str(value))
            procs.append(path / "cgroup.procs")
        return procs

    def oom_killed(self, job_id: str) -> bool:
        """Whether the memory ceiling killed (or refused) anything of the job."""
        path = self.memory.base / job_id
        if self.version == 2:
            return _field(path / "memory.events", "oom_kill") > 0
        control = _read(path / "memory.oom_control")
        if "oom_kill " in control:
            return _field(path / "memory.oom_control", "oom_kill") > 0
        return _read_int(path / "memory.failcnt") > 0  # older kernels: the ceiling was at least hit

    def remove(self, job_id: str, *, tries: int = 25) -> None:
        """Kill whatever of the job is left in its cgroups and remove them (bounded; a leftover is
        logged and swept at the next start)."""
        for path in self._dirs(job_id):
            _remove(path, tries=tries)

    def close(self) -> None:
        """Server shutdown: remove this server's parent dirs (kept while another app of this
        process still has jobs in them)."""
        for ctl in (self.memory, self.pids):
            if ctl is not None:
                with contextlib.suppress(OSError):
                    ctl.base.rmdir()

    def sweep(self) -> None:
        """Remove the job cgroups of servers that are gone (their ``proctor-PID`` dirs)."""
        for ctl in (self.memory, self.pids):
            if ctl is None:
                continue
            try:
                entries = sorted(ctl.base.parent.iterdir())[:10_000]
            except OSError:
                continue
            for parent in entries:
                pid = parent.name.removeprefix(PREFIX)
                if parent.name.startswith(PREFIX) and pid.isdigit() and not _alive(int(pid)):
                    _remove_parent(parent)  # several servers may sweep at once: any step may find it gone


def wrapper(procs: list[Path]) -> list[str]:
    """The argv prefix that puts the job's first process into ``procs`` before it runs anything."""
    return ["/bin/sh", "-c", _JOIN, "sh", *(str(p) for p in procs), "--"]


def detect(mode: str) -> JobCgroups | None:
    """This host's cgroups for jobs (``None``: rlimits only). ``mode``: ``auto``, ``required``, ``off``.

    Logs one warning saying what is missing when ``auto`` finds none; ``required`` raises instead.
    """
    if mode == "off":
        return None
    found, missing = _probe()
    if found is not None:
        found = replace(found, required=mode == "required")
        found.sweep()
        log.info(
            "jobs run in cgroups v%s (memory%s) under %s",
            found.version,
            " and pids" if found.pids else "",
            found.memory.base,
        )
        return found
    if mode == "required":
        raise InputError(f"sandbox.cgroups is required but {missing}", hint="run as root with cgroups writable")
    log.warning(
        "no job cgroups: %s; a job's memory is bounded per process only (RLIMIT_AS), not as a whole",
        missing,
    )
    return None


def _probe() -> tuple[JobCgroups | None, str]:
    if os.geteuid() != 0:
        return None, "the server does not run as root"
    try:
        own = _own_paths()
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup ({exc.strerror})"
    tag = f"{PREFIX}{os.getpid()}"
    v1_memory = CGROUP_ROOT / "memory"
    if "memory" in own and (v1_memory / "memory.limit_in_bytes").exists():
        memory = Controller(
            _under(v1_memory, own["memory"]) / tag, ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        )
        pids = None
        if "pids" in own and (CGROUP_ROOT / "pids").is_dir():
            pids = Controller(_under(CGROUP_ROOT / "pids", own["pids"]) / tag, ("pids.max",))
        found = JobCgroups(1, memory, pids)
    elif "" in own and "memory" in _read(CGROUP_ROOT / "cgroup.controllers").split():
        base = _under(CGROUP_ROOT, own[""])
        delegated = _enable_v2(base, base / tag)
        if "memory" not in delegated:
            with contextlib.suppress(OSError):
                (base / tag).rmdir()
            return None, (
                f"the server's cgroup {base} does not delegate the memory controller "
                "(cgroup v2: run the server in a cgroup of its own with the controller delegated)"
            )
        memory = Controller(base / tag, ("memory.max", "memory.swap.max"))
        found = JobCgroups(2, memory, Controller(base / tag, ("pids.max",)) if "pids" in delegated else None)
    else:
        return None, "the host has no memory cgroup controller"
    try:
        for ctl in (found.memory, found.pids):
            if ctl is not None:
                ctl.base.mkdir(exist_ok=True)
    except OSError as exc:
        return None, f"cannot create {exc.filename} ({exc.strerror}): /sys/fs/cgroup is not writable"
    return found, ""


def _enable_v2(own: Path, parent: Path) -> list[str]:
    """v2: a job cgroup has memory/pids files only if both the server's cgroup and ``parent``
    delegate the controllers (``cgroup.subtree_control``). Returns those ``parent`` delegates."""
    with contextlib.suppress(OSError):
        parent.mkdir(exist_ok=True)
    for dir_ in (own, parent):
        for name in ("memory", "pids"):
            if name not in _read(dir_ / "cgroup.subtree_control").split():
                with contextlib.suppress(OSError):  # refused while own holds processes: then not delegated
                    (dir_ / "cgroup.subtree_control").write_text(f"+{name}")
    return _read(parent / "cgroup.subtree_control").split()


def _own_paths() -> dict[str, str]:
    """``controller -> path`` of this process (v2's unified hierarchy under the key ``""``)."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(","):
            paths[name] = path
    return paths


def _under(mount: Path, path: str) -> Path:
    return mount / path.lstrip("/")


def _remove(path: Path, *, tries: int) -> None:
    for attempt in range(tries):
        for pid in _read(path / "cgroup.procs").split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == tries - 1:
                log.warning("could not remove job cgroup %s: %s", path, exc.strerror)
                return
            time.sleep(0.02)


def _remove_parent(parent: Path) -> None:
    try:
        jobs = [p for p in parent.iterdir() if p.is_dir()][:10_000]
    except OSError:
        return
    for job in jobs:
        _remove(job, tries=3)
    with contextlib.suppress(OSError):
        parent.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _read_int(path: Path) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def _field(path: Path, key: str) -> int:
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
