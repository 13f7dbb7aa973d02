"""The ``python`` tool: run model-written code in a bubblewrap sandbox.

Model-written code is untrusted (the *model* is the attacker): it may loop forever, eat memory,
fill the disk, fork, read the secrets of the process that runs the evaluation, or look around the
machine. Each call therefore runs in its own sandbox (``proctor.sandbox``, bubblewrap):

- its own PID namespace: it cannot see or signal the engine, and killing the sandbox at the
  wall-time limit (or after every run) ends every process it started, however it forked;
- a filesystem holding only the read-only system and Python installation and a fresh private
  temporary directory (its working directory and ``HOME``, removed afterwards): not the job's
  directory, not the engine's ``/proc``;
- no network (a network namespace with no interface) unless the spec sets ``network: true``,
  which a server refuses unless its admin allows it;
- an environment built from a small allowlist (``PATH``, ``LANG``...), never inherited;
- an unprivileged uid (``nobody`` when the engine runs as root) and rlimits set before ``exec``:
  CPU seconds, address space, file size, open files and, optionally, the number of processes.

Inside a server job (already sandboxed; ``PROCTOR_SANDBOX=1``) a tool call without a working
sandbox is an error, never an unsandboxed run. On a machine without bubblewrap (a laptop), the
code runs as before: resource limits, its own session killed as a group, ``unshare --net``, with
a warning logged once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pydantic import Field

from proctor import sandbox
from proctor._validation import StrictModel
from proctor.errors import ToolError
from proctor.evals.agent.tools.base import Tool, ToolCallContext

__all__ = ["PythonOptions", "PythonTool", "SandboxResult", "run_python"]

log = logging.getLogger("proctor.tools.python")

_ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ")
"""Inherited only if set; everything else (keys, tokens, proxies) stays out."""


class PythonOptions(StrictModel):
    """Limits of one code execution (spec keys of the ``python`` tool)."""

    name: str = "python"
    description: str = (
        "Run a Python 3 program and return what it prints. Each call is a fresh process in an empty "
        "directory: nothing persists between calls, so print() every result you need."
    )
    timeout: float = Field(default=30.0, gt=0)
    """Wall-time limit of one execution, in seconds."""
    cpu_seconds: int | None = Field(default=None, ge=1)
    """CPU-time rlimit; default: the wall-time limit rounded up, plus 1."""
    memory_mb: int | None = Field(default=2048, ge=16)
    """Address-space rlimit (``None``: unlimited)."""
    file_size_mb: int = Field(default=64, ge=1)
    open_files: int = Field(default=256, ge=16)
    max_processes: int | None = Field(default=None, ge=1)
    """RLIMIT_NPROC. Off by default because Linux counts it per *user*, not per sandbox (and
    ignores it for root); the sandbox's PID namespace is what ends fork storms, and a server
    job's own ceiling applies to its tool calls too."""
    output_chars: int = Field(default=8000, ge=100)
    """Stdout and stderr are each cut to this many characters (head and tail kept)."""
    interpreter: str | None = None
    """Python executable for the code; default: the one running proctor."""
    network: bool = False
    """Let the code reach the network. Off by default: the code runs in a network namespace of
    its own, with no interface up, not even loopback. A server refuses ``true`` unless its admin
    allows it (``sandbox.tool_network``). Without bubblewrap, ``unshare --net`` is tried; where
    no namespace is available, a warning is logged once and the code shares the host's network."""


_NETNS_COMMANDS = (
    ("unshare", "--net", "--"),  # root
    ("unshare", "--user", "--map-root-user", "--net", "--"),  # unprivileged user namespaces
)


@functools.cache
def network_isolation_prefix() -> tuple[str, ...]:
    """The argv prefix that runs a program without network, or () where that is impossible.

    Probed once per process, by running ``true`` under each candidate.
    """
    for prefix in _NETNS_COMMANDS:
        if shutil.which(prefix[0]) is None:
            break
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return prefix
    log.warning("python tool: network namespaces are not available here; code runs with the host's network")
    return ()


@dataclass(slots=True)
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    truncated: bool


def _limits(opts: PythonOptions) -> sandbox.Limits:
    return sandbox.Limits(
        memory_mb=opts.memory_mb,
        processes=opts.max_processes,
        file_size_mb=opts.file_size_mb,
        open_files=opts.open_files,
        cpu_seconds=opts.cpu_seconds or int(opts.timeout) + 1,
    )


@functools.cache
def _sandbox_problem(network: bool) -> str | None:
    """Why the tool's bubblewrap sandbox cannot run here (None: it can). Probed once per process.

    The code gets no ``/proc``: inside a job's sandbox the kernel refuses a second one, and
    without it each call starts about 6 ms sooner.
    """
    if sandbox.bwrap() is None:
        return f"bubblewrap (package {sandbox.PACKAGE}) is not installed"
    return sandbox.probe(mount_proc=False, network=network)


def _wrap(argv: list[str], workdir: str, opts: PythonOptions) -> tuple[list[str], dict[str, str]]:
    """The command and environment to start: inside a sandbox when one works here."""
    env = _environment(workdir)
    problem = _sandbox_problem(opts.network)
    if problem is None:
        if sandbox.running_as_root():
            # The code runs as nobody; bwrap (root without capabilities) must still enter it.
            os.chown(workdir, 65534, 65534)
            os.chmod(workdir, 0o711)
        readable = (Path(opts.interpreter).resolve().parent.parent,) if opts.interpreter else ()
        box = sandbox.Sandbox(
            cwd=Path(workdir),
            writable=(Path(workdir),),
            readable=readable,
            network=opts.network,
            mount_proc=False,
            # The code's HOME and TMPDIR are its working directory; its own /tmp is memory, so
            # no bigger than the largest file it may write, nor than the /tmp of its caller.
            tmp_mb=sandbox.tmp_mb_within(opts.file_size_mb),
        )
        return box.argv(argv), env
    if sandbox.inside_sandbox():
        raise ToolError(f"the python sandbox does not work in this job: {problem}")
    _warn_unsandboxed(problem)
    return [*(() if opts.network else network_isolation_prefix()), *argv], env


@functools.cache
def _warn_unsandboxed(problem: str) -> None:
    log.warning("python tool: no sandbox (%s); code runs with resource limits only", problem)


def _environment(home: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        HOME=home,
        TMPDIR=home,
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        # BLAS libraries reserve memory per thread; one thread keeps numpy inside RLIMIT_AS.
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


class _CappedReader:
    """Drains a pipe to the end (so the child never blocks on a full pipe) but keeps only a cap."""

    def __init__(self, cap: int) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.cap = cap
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        half = self.cap // 2
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            if len(self.head) < half:
                take = half - len(self.head)
                self.head += chunk[:take]
                chunk = chunk[take:]
            if chunk:
                self.tail += chunk
                if len(self.tail) > half:
                    del self.tail[: len(self.tail) - half]

    def text(self) -> tuple[str, bool]:
        data = bytes(self.head) + bytes(self.tail)
        if self.total <= self.cap:
            return data.decode("utf-8", "replace"), False
        omitted = self.total - len(data)
        note = f"\n... [{omitted} bytes omitted] ...\n"
        return self.head.decode("utf-8", "replace") + note + self.tail.decode("utf-8", "replace"), True


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol plus a future that resolves when the process itself exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_tree(pid: int, known: list[psutil.Process]) -> None:
    """SIGKILL the process group ``pid`` leads and every process in ``known`` still alive."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in known:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


async def run_python(code: str, opts: PythonOptions) -> SandboxResult:
    """Run ``code`` in a fresh sandbox and return its (capped) output."""
    workdir = tempfile.mkdtemp(prefix="proctor-py-")
    try:
        script = os.path.join(workdir, "main.py")
        with open(script, "w", encoding="utf-8") as fh:  # noqa: ASYNC230 - one small write to a fresh local temp dir
            fh.write(code)
        loop = asyncio.get_running_loop()
        # -I (isolated): no PYTHON* variables, no user site, script dir not trusted.
        argv, env = _wrap([opts.interpreter or sys.executable, "-I", "main.py"], workdir, opts)
        limits, preexec = _limits(opts), None
        if shutil.which("prlimit"):
            argv = [*limits.argv(), *argv]
        else:  # e.g. macOS: no util-linux
            preexec = limits.preexec()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _ExitAwareProtocol(loop),
                *argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as exc:
            raise ToolError(f"could not start the Python interpreter: {exc}") from exc
        pid = transport.get_pid()
        out, err = _CappedReader(opts.output_chars), _CappedReader(opts.output_chars)
        assert protocol.stdout is not None and protocol.stderr is not None
        readers = asyncio.gather(out.drain(protocol.stdout), err.drain(protocol.stderr))
        readers.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "unretrieved"
        timed_out = False
        try:
            # Wait for the *process*, not its pipes: a background child that inherited stdout
            # would otherwise hold the call until the wall-time limit.
            async with asyncio.timeout(opts.timeout):
                await asyncio.shield(protocol.exited)
        except TimeoutError:
            timed_out = True
        except BaseException:  # cancelled (the sample ended): leave nothing running
            _kill_tree(pid, _descendants(pid))
            readers.cancel()
            transport.close()
            raise
        # Always: a finished program may have left children behind in its group.
        _kill_tree(pid, _descendants(pid))
        try:
            # The pipes close once every holder is dead; bound the wait all the same, since a
            # grandchild that escaped the group could keep them open.
            async with asyncio.timeout(2.0):
                await readers
                await protocol.exited
        except TimeoutError:
            readers.cancel()
        finally:
            transport.close()
        stdout, t1 = out.text()
        stderr, t2 = err.text()
        return SandboxResult(stdout, stderr, None if timed_out else transport.get_returncode(), timed_out, t1 or t2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def format_result(res: SandboxResult, timeout: float) -> str:
    """What the model reads: output first, then what went wrong, in plain words."""
    parts: list[str] = []
    if res.stdout:
        parts.append(res.stdout.rstrip("\n"))
    if res.stderr:
        parts.append("[stderr]\n" + res.stderr.rstrip("\n"))
    if res.timed_out:
        parts.append(f"[error] execution killed: wall-time limit of {timeout:g}s exceeded")
    elif res.returncode not in (0, None):
        rc = res.returncode
        why = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        if rc == -signal.SIGXCPU or rc == -signal.SIGKILL:
            why += " (CPU or memory limit?)"
        parts.append(f"[error] {why}")
    if not parts:
        return "(no output; use print() to show results)"
    return "\n".join(parts)


class PythonTool(Tool):
    """Runs the ``code`` argument and returns stdout/stderr, or the reason it failed."""

    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "A complete Python 3 program."}},
        "required": ["code"],
    }

    def __init__(self, options: PythonOptions | None = None) -> None:
        self.options = options or PythonOptions()
        if _sandbox_problem(self.options.network) is not None and not self.options.network:
            network_isolation_prefix()  # probe now, not on the first call inside the event loop
        self.name = self.options.name
        self.description = self.options.description
        # The sandbox enforces the wall limit itself; the outer timeout is a backstop only.
        self.timeout = self.options.timeout + 10.0

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        with ctx.step("execution"):
            res = await run_python(args["code"], self.options)
        return format_result(res, self.options.timeout)
