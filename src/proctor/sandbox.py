"""Bubblewrap sandboxes: one around every server job, one around every python-tool call.

Why bubblewrap and not process-tree walking: a PID namespace is the only reliable way to end
"everything this job started, however it forked" (killing the namespace's init kills them all,
and nothing can leave it), and mount/user namespaces are the only way to give the job a view of
the filesystem without the server's data directory, job store, other jobs or home directories.

What a sandbox built here is:

- its own PID and IPC namespaces: SIGKILL of the namespace's init (the outer ``bwrap``'s
  child) kills every process inside, and no process can leave it; with ``die_with_parent``
  that also happens when the caller dies or the outer ``bwrap`` is killed;
- a filesystem made only of read-only system directories (``/usr`` and its merged-/usr links, a
  short list of ``/etc`` files for DNS and TLS), the read-only Python installation, the paths the
  caller lists, a fresh ``/dev``, the caller's writable directories and a fresh ``/tmp`` of at most
  ``tmp_mb`` MiB (a tmpfs lives in memory, and its pages count against no rlimit: RLIMIT_AS
  sees only a process's own mappings, so without a size a job could fill the host's memory
  through ``/tmp``; past the size a write fails with ENOSPC);
- an environment that is exactly what the caller passes: ``bwrap`` is started with that
  environment and hands it on, never with ``--setenv`` in its arguments, because every user on
  the host can read a process's command line (``ps``) but only its owner its environment;
- an unprivileged uid: as root, bwrap builds the namespaces and ``setpriv`` then drops to the
  given uid (so RLIMIT_NPROC applies, which it never does for uid 0); as another user, a user
  namespace maps the caller's own uid;
- rlimits (address space, processes, file size, open files, CPU) set by ``prlimit`` before
  ``bwrap`` runs, which nothing inside can raise.

The network namespace is the caller's choice: server jobs share the host's (their models, and the
private-mode job channel on 127.0.0.1, are there); python-tool code gets none.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import proctor
from proctor.errors import EXIT_BAD_INPUT, ProctorError

PACKAGE = "bubblewrap"
"""The Debian/Ubuntu package that provides ``bwrap``; named in every error about it."""
DEFAULT_TMP_MB = 1024
"""Size of a sandbox's ``/tmp`` (a tmpfs, in memory) unless its caller says otherwise."""

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/mime.types",
)
"""What name resolution, TLS and the dynamic linker read; nothing else of ``/etc`` is shown."""
_ETC_OFFLINE = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
"""Without network, name resolution and TLS files are useless: fewer mounts, a faster start."""


class SandboxUnavailableError(ProctorError):
    """bubblewrap is missing or cannot create namespaces here."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True, slots=True)
class Limits:
    """rlimits of one sandbox; ``None`` leaves that limit as inherited."""

    memory_mb: int | None = None
    processes: int | None = None
    file_size_mb: int | None = None
    open_files: int | None = None
    cpu_seconds: int | None = None

    def argv(self) -> list[str]:
        """A ``prlimit`` prefix that sets these limits on the command it runs.

        A prefix rather than ``preexec_fn``: with a ``preexec_fn`` Python must ``fork()`` the whole
        (large) parent instead of ``vfork()``, which cost 30 ms per python-tool call here. Each value
        is capped at the current hard limit, which an unprivileged process cannot raise (inside a
        job, a tool's limits can only be lower than the job's).
        """
        exe = shutil.which("prlimit")
        if exe is None:
            raise SandboxUnavailableError("the sandbox needs prlimit (util-linux)", hint="apt-get install util-linux")
        args = [exe, "--core=0"]
        for flag, which, value in (
            ("--as", resource.RLIMIT_AS, self.memory_mb and self.memory_mb * 1024 * 1024),
            ("--nproc", resource.RLIMIT_NPROC, self.processes),
            ("--fsize", resource.RLIMIT_FSIZE, self.file_size_mb and self.file_size_mb * 1024 * 1024),
            ("--nofile", resource.RLIMIT_NOFILE, self.open_files),
        ):
            if value:
                args.append(f"{flag}={_capped(which, value)}")
        if self.cpu_seconds:
            hard = _capped(resource.RLIMIT_CPU, self.cpu_seconds + 1)
            args.append(f"--cpu={min(self.cpu_seconds, hard)}:{hard}")
        return [*args, "--"]

    def preexec(self) -> Callable[[], None]:
        """The same limits as a ``preexec_fn``, for machines without ``prlimit`` (slower: see ``argv``)."""
        pairs = [(resource.RLIMIT_CORE, 0)]
        for which, value in (
            (resource.RLIMIT_AS, self.memory_mb and self.memory_mb * 1024 * 1024),
            (resource.RLIMIT_NPROC, self.processes),
            (resource.RLIMIT_FSIZE, self.file_size_mb and self.file_size_mb * 1024 * 1024),
            (resource.RLIMIT_NOFILE, self.open_files),
        ):
            if value:
                pairs.append((which, _capped(which, value)))
        cpu = self.cpu_seconds

        def apply() -> None:  # runs in the child between fork and exec: keep it trivial
            for which, value in pairs:
                resource.setrlimit(which, (value, value))
            if cpu:
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

        return apply


def _capped(which: int, value: int) -> int:
    _, hard = resource.getrlimit(which)
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def bwrap() -> str | None:
    return shutil.which("bwrap")


def running_as_root() -> bool:
    return os.geteuid() == 0


def python_paths() -> list[Path]:
    """The Python installation (read-only in every sandbox): prefixes and proctor's own package.

    The package directory itself (not its parent) is shown: with an editable install its parent is
    a source tree that may hold anything.
    """
    paths = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths.add(Path(os.path.realpath(sys.executable)).parent.parent)
    paths.add(Path(proctor.__file__).resolve().parent)
    return _outermost(p for p in paths if os.path.exists(p))


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """Drop paths inside another listed path (binding both would hide nothing but costs a mount)."""
    result: list[Path] = []
    for path in sorted({p.resolve() if os.path.exists(p) else p for p in paths}, key=lambda p: len(p.parts)):
        if not any(path == kept or kept in path.parents for kept in result):
            result.append(path)
    return result


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How to wrap one command: what it sees, where it runs, as whom, with which network."""

    cwd: Path
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    network: bool = False
    uid: int | None = None
    """The uid the command runs as when the caller is root (ignored otherwise)."""
    die_with_parent: bool = True
    """SIGKILL everything inside when the caller dies. Server jobs say no: they outlive a killed
    server (committing their last samples) and the restarted server ends them."""
    mount_proc: bool = True
    """A fresh ``/proc`` of the sandbox's own PID namespace. Inside another bwrap sandbox the
    kernel refuses a new proc mount, so a nested sandbox goes without ``/proc``."""
    tmp_mb: int = DEFAULT_TMP_MB
    """Size of the private ``/tmp`` in MiB (bwrap's ``--size``): memory the sandbox may fill."""

    def argv(self, command: list[str]) -> list[str]:
        """``bwrap``'s command line around ``command``; start it with the sandbox's environment
        as its own (``env=`` of the subprocess call), which it passes on unchanged."""
        exe = bwrap()
        if exe is None:
            raise SandboxUnavailableError(
                "the sandbox needs bubblewrap (bwrap), which is not installed",
                hint=f"install it: apt-get install {PACKAGE}",
            )
        as_root = running_as_root()
        args = [exe, *(["--die-with-parent"] if self.die_with_parent else []), "--unshare-pid", "--unshare-ipc"]
        if not self.network:
            args.append("--unshare-net")
        if as_root:
            # Privileged mode builds the namespaces; setpriv then becomes an ordinary uid (all
            # capabilities go with uid 0, and no_new_privs keeps them from coming back).
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args.append("--unshare-user")
        for name in _SYSTEM_DIRS:
            if os.path.islink(name):
                args += ["--symlink", os.readlink(name), name]
            elif os.path.isdir(name):
                args += ["--ro-bind", name, name]
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in _ETC_FILES if self.network else _ETC_OFFLINE:
            args += ["--ro-bind-try", name, name]
        args += ["--dev", "/dev", "--perms", "1777", "--size", str(self.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        if self.mount_proc:
            args += ["--proc", "/proc"]
        readable = _outermost([*python_paths(), *self.readable])
        # Directories bwrap creates for mount points are 0700 in privileged mode: open the way.
        for parent in sorted({a for p in [*readable, *self.writable] for a in p.parents if a != Path("/")}, key=str):
            if str(parent) not in _SYSTEM_DIRS and str(parent) not in ("/tmp", "/dev", "/proc", "/etc"):
                args += ["--perms", "0755", "--dir", str(parent)]
        for path in readable:
            args += ["--ro-bind-try", str(path), str(path)]
        for path in self.writable:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(self.cwd), "--"]
        if as_root:
            uid = self.uid if self.uid is not None else 65534
            args += [
                _setpriv(),
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ]
        return args + command


def _setpriv() -> str:
    path = shutil.which("setpriv")
    if path is None:
        raise SandboxUnavailableError(
            "the sandbox needs setpriv (util-linux) to drop root", hint="apt-get install util-linux"
        )
    return path


@functools.cache
def probe(*, mount_proc: bool = True, network: bool = False) -> str | None:
    """Why a sandbox cannot be made here (None when it can): runs ``true`` inside one, once per process."""
    box = Sandbox(cwd=Path("/"), network=network, mount_proc=mount_proc)
    try:
        argv = Limits(open_files=256).argv() + box.argv([sys.executable, "-I", "-c", "pass"])
    except SandboxUnavailableError as exc:
        return exc.message
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"bwrap could not create a sandbox here: {last}"
    return None


def require() -> None:
    """Raise ``SandboxUnavailableError`` naming the package unless a sandbox works here."""
    problem = probe()
    if problem is not None:
        raise SandboxUnavailableError(
            problem,
            hint=f"install {PACKAGE} (apt-get install {PACKAGE}), "
            "or pass --no-sandbox on a trusted single-user machine",
        )


def inside_sandbox() -> bool:
    """True inside a proctor job's sandbox (the server sets this variable in every job)."""
    return os.environ.get("PROCTOR_SANDBOX") == "1"


def tmp_mb_within(wanted: int) -> int:
    """``wanted`` MiB, but no more than the ``/tmp`` this process itself has (if it can tell).

    A nested sandbox (a python-tool call inside a server job) gets a tmpfs of its own, which the
    job's bounded ``/tmp`` does not count: capping it at the job's keeps a tool call from holding
    more memory than its job could.
    """
    try:
        st = os.statvfs("/tmp")
    except OSError:
        return wanted
    own = st.f_blocks * st.f_frsize // (1024 * 1024)
    return max(1, min(wanted, own)) if own > 0 else wanted


__all__ = [
    "DEFAULT_TMP_MB",
    "PACKAGE",
    "Limits",
    "Sandbox",
    "SandboxUnavailableError",
    "bwrap",
    "inside_sandbox",
    "probe",
    "require",
    "tmp_mb_within",
]
