"""Which uid a sandboxed job runs as when the server runs as root: a host-wide lease per job.

Why a lease and not ``sandbox.uid + slot``: RLIMIT_NPROC counts every process of a uid on the
whole host, not per server. Two servers on one host (a fleet's instances, or a second server
started for a test) each gave their slot-0 job uid 62000, so one job's fork storm used up the other
job's process budget and its next ``exec`` failed with EAGAIN. A uid is therefore taken for one
job at a time across the host:

- an exclusive ``flock`` on ``<lock_dir>/<uid>.lock`` marks it as taken. The kernel drops the lock
  when the holder dies, so a crashed server never leaves a uid taken for good;
- a uid that still owns a process is skipped even when unlocked: those are what RLIMIT_NPROC
  counts, e.g. a previous job's processes still being killed, or a job of a server that died
  without taking its jobs along.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from proctor.errors import ProctorError

DEFAULT_LOCK_DIR = Path("/run/proctor/uids")


class NoFreeUidError(ProctorError):
    """Every uid of the server's range is taken by a running job or still owns processes."""


@dataclass(slots=True)
class UidLease:
    """One job's uid; ``release`` once all of the job's processes are gone."""

    uid: int
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the file drops its flock
            self._fd = None


def uids_with_processes(proc: Path = Path("/proc")) -> set[int]:
    """The (effective) uids that own at least one process on this host right now."""
    owners: set[int] = set()
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # the process may be gone already
                owners.add(entry.stat(follow_symlinks=False).st_uid)
    return owners


class UidPool:
    """Hands out the uids ``first`` … ``first + count - 1``, each to one job on the host at a time.

    ``flock`` locks belong to an open file, not to a process, so this server's own leases exclude
    each other exactly as another server's do.
    """

    def __init__(self, first: int, count: int, lock_dir: Path = DEFAULT_LOCK_DIR) -> None:
        self.first = first
        self.count = count
        self.lock_dir = lock_dir

    def lease(self) -> UidLease:
        """Take the lowest uid no job on this host holds and no process owns (blocking I/O: call it
        from a thread)."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        busy = uids_with_processes()
        for uid in range(self.first, self.first + self.count):
            if uid in busy:
                continue
            fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return UidLease(uid, fd)
        last = self.first + self.count - 1
        raise NoFreeUidError(
            f"no free uid for the job's sandbox: uids {self.first}-{last} are all taken by running jobs "
            "on this host or still own processes",
            hint="give the server more uids (sandbox.uids in its config) or another range (sandbox.uid)",
        )
