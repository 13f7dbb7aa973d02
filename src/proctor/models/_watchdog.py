"""A tiny supervisor that ties a launched model server's life to proctor's.

Why it exists: a model server proctor starts must never outlive proctor, even when proctor is
killed with SIGKILL and gets no chance to clean up. A signal handler cannot help there, so the
server is started *through* this process:

    python -m proctor.models._watchdog --grace 3 -- ARGV...

- proctor holds the write end of this process's stdin (the *lifeline*). When proctor exits for any
  reason, the kernel closes it and we read EOF. That is the one signal that cannot be lost.
- On EOF (or SIGTERM/SIGINT/SIGHUP to us) we SIGTERM the server's whole process group, give it
  ``--grace`` seconds, then SIGKILL the group, and exit with the server's status.
- If we ourselves are SIGKILLed, the server was started with ``PR_SET_PDEATHSIG`` (Linux) and gets
  SIGKILL from the kernel. This process is single-threaded, so ``preexec_fn`` is safe here (it
  would not be inside proctor's multi-threaded engine, which is why proctor does not do it).
- The reparenting check (``getppid()`` changing) catches the rare case where a forked copy of
  proctor still holds the lifeline's write end.

The first line we write to stdout is ``pid <server pid>``, so proctor knows the process group to
kill as a last resort. Everything else goes to stderr, which is the server's log file.

Standard library only and no proctor imports: it starts in tens of milliseconds and cannot be
broken by proctor's own dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL = 0.2


def _log(message: str) -> None:
    """Write one line to the server's log (our stderr), flushed at once."""
    sys.stderr.write(f"[proctor-watchdog] {message}\n")
    sys.stderr.flush()


def _pdeathsig(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to send ``sig`` to the child when we die (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def _set() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return _set


def _exited(pid: int) -> bool:
    """True once ``pid`` has exited, *without* reaping it.

    Leaving the zombie in place keeps its pid (and so its process-group id) reserved while we kill
    stragglers of the group, so the kill can never hit an unrelated group that reused the id.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def main(argv: list[str] | None = None) -> int:
    """Run the server given after ``--`` and supervise it; returns the server's exit code."""
    parser = argparse.ArgumentParser(prog="python -m proctor.models._watchdog")
    parser.add_argument("--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server's argv after --")

    stop_reason: list[str] = []

    def _on_signal(signum: int, _frame: object) -> None:
        stop_reason.append(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    parent = os.getppid()
    try:
        server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),
            stderr=sys.stderr.fileno(),
            start_new_session=True,
            preexec_fn=_pdeathsig(signal.SIGKILL),  # noqa: PLW1509 (we are single-threaded)
        )
    except OSError as exc:
        _log(f"cannot start {command[0]!r}: {exc}")
        return 127
    pgid = server.pid
    try:
        sys.stdout.write(f"pid {server.pid}\n")
        sys.stdout.flush()
    except OSError:
        stop_reason.append("proctor gone before the server started")
    # Detach from proctor's pipe so a proctor that stops reading can never block us.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)

    selector = selectors.DefaultSelector()
    lifeline = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    selector.register(lifeline, selectors.EVENT_READ)

    while not stop_reason:
        if _exited(server.pid):
            _killpg(pgid, signal.SIGKILL)  # stragglers (workers) of a server that exited by itself
            code = server.wait()
            _log(f"server exited by itself with status {code}")
            return code if code >= 0 else 128 - code
        for _key, _mask in selector.select(timeout=_POLL_INTERVAL):
            try:
                data = os.read(lifeline.fileno(), 4096)
            except OSError:
                data = b""
            if not data:
                stop_reason.append("proctor closed the lifeline")
        if os.getppid() != parent:
            stop_reason.append("proctor disappeared")

    _log(f"stopping the server ({stop_reason[0]}): SIGTERM to process group {pgid}")
    _killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline and not _exited(server.pid):
        time.sleep(0.05)
    if not _exited(server.pid):
        _log(f"still running after {args.grace:g} s: SIGKILL to process group {pgid}")
    _killpg(pgid, signal.SIGKILL)
    code = server.wait()
    _log(f"server stopped (status {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
