"""Start (or reuse) the local model servers a spec asks for, and never leave one behind.

A role may carry ``launch: {kind: llama-cpp | vllm | sglang | command, port: ...}`` (``replicas: N``
starts N data-parallel copies on consecutive ports, see :func:`replica_configs`), and a retrieval
tool ``launch: {kind: retrieval, ...}`` (:func:`retrieval_services`). For each :func:`launched_servers`:

1. probes ``GET http://host:port/v1/models``; a healthy answer means someone already runs the
   server, so it is *reused* and left running afterwards (it is not ours to stop);
2. otherwise builds the argv (:func:`build_argv`, pure, so tests and ``--dry-run`` can show it) and
   starts it through :mod:`proctor.models._watchdog` in its own process group, with stdout and
   stderr going to ``RUN_DIR/launch-<role>.log``;
3. polls ``/v1/models`` with backoff until it answers, the server exits, or ``health_deadline``
   passes; a failure raises :class:`~proctor.errors.LaunchError` with the log's last lines;
4. on leaving the context (normally, by exception, Ctrl-C or task cancellation) stops what it
   started: SIGTERM to the group, a grace period, then SIGKILL.

Why a watchdog process instead of ``atexit``/signal handlers: nothing runs in proctor when it is
SIGKILLed (OOM killer, ``kill -9``, a scheduler's hard timeout). The watchdog holds the read end of
a pipe whose write end only proctor holds; the kernel closes it when proctor dies in any way, the
watchdog sees EOF and takes the server's whole process group down within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from proctor.errors import LaunchError, SpecError
from proctor.models.assets import resolve_model_path
from proctor.models.config import LaunchConfig, ModelConfig
from proctor.retrieval.config import RetrievalLaunch

STOP_GRACE = 3.0
"""Seconds between SIGTERM and SIGKILL; below 5 s so a server is gone within 5 s of proctor."""
PROBE_TIMEOUT = 3.0
"""One health probe; a loaded server answers ``/v1/models`` in milliseconds."""
LOG_TAIL_LINES = 20
_PROGRESS_EVERY = 15.0
_PLACEHOLDER = re.compile(r"\{(port|host|model_path|model)\}")

_logger = logging.getLogger("proctor.launch")


def derived_model_name(model_path: str | None) -> str:
    """A served-model name for a path: file stem without the extension, or the hub id itself.

    ``/x/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`` → ``qwen2.5-coder-0.5b-instruct-q4_k_m``;
    ``asset:NAME`` → ``NAME``; ``Qwen/Qwen2.5-7B-Instruct`` stays as it is (that is what vLLM
    itself would serve it as).
    """
    if not model_path:
        return "local-model"
    if model_path.startswith("asset:"):
        return model_path.removeprefix("asset:")
    path = Path(model_path)
    if path.suffix.lower() == ".gguf":
        return path.stem
    if path.is_absolute() or model_path.startswith((".", "~")):
        return path.name or "local-model"
    return model_path


def served_name(cfg: LaunchConfig, model: str | None = None) -> str:
    """The name the server answers to: ``served_model_name``, else the role's model, else derived."""
    return cfg.served_model_name or model or derived_model_name(cfg.model_path)


def connect_host(host: str) -> str:
    """Where to connect to a server bound to ``host`` (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def launch_base_url(cfg: LaunchConfig) -> str:
    """The OpenAI base URL of the launched server, ``http://host:port/v1``."""
    host = connect_host(cfg.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.port}/v1"


def _need_model_path(cfg: LaunchConfig) -> str:
    if not cfg.model_path:
        raise LaunchError(f"launch kind {cfg.kind!r} needs 'model_path'")
    return cfg.model_path


def build_argv(cfg: LaunchConfig, *, model: str | None = None) -> list[str]:
    """The command line that starts the server; pure (no file system, no environment).

    ``model`` is the role's model name, used as the served name when ``served_model_name`` is not
    set, so requests that carry it are accepted (vLLM and SGLang answer 404 to any other name).
    """
    name = served_name(cfg, model)
    host, port = cfg.host, str(cfg.port)
    if cfg.kind == "llama-cpp":
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", _need_model_path(cfg),
            "--model_alias", name,
            "--host", host, "--port", port,
            # Without this a new request aborts the one being generated: with concurrent
            # evaluation traffic every answer but the last would be cut short.
            "--interrupt_requests", "False",
            *cfg.extra_args,
        ]  # fmt: skip
    if cfg.kind == "vllm":
        return [
            "vllm", "serve", _need_model_path(cfg),
            "--host", host, "--port", port,
            "--served-model-name", name,
            *cfg.extra_args,
        ]  # fmt: skip
    if cfg.kind == "sglang":
        return [
            sys.executable, "-m", "sglang.launch_server",
            "--model-path", _need_model_path(cfg),
            "--host", host, "--port", port,
            "--served-model-name", name,
            *cfg.extra_args,
        ]  # fmt: skip
    values = {"port": port, "host": host, "model_path": cfg.model_path or "", "model": name}
    template = cfg.argv or []
    # Only the four known placeholders are replaced, so literal braces (JSON arguments such as
    # '{"enable_thinking": false}') pass through untouched, unlike with str.format.
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], part) for part in template] + list(cfg.extra_args)


def launch_env(cfg: LaunchConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours, plus the spec's ``env``, plus ``CUDA_VISIBLE_DEVICES``."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")  # Python servers: log lines reach the file at once
    env.update(cfg.env)
    if cfg.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = cfg.gpus
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (reads at most the last 64 KiB)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


async def probe(session: aiohttp.ClientSession, base_url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """One health check: ``GET {base_url}/models``; returns (healthy, what happened)."""
    url = f"{base_url}/models"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status == 200:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ClientError):
                    return False, f"{url} answered 200 but not JSON"
                entries = body.get("data", []) if isinstance(body, dict) else []
                ids = [m.get("id") for m in entries if isinstance(m, dict)]
                return True, ", ".join(str(i) for i in ids)
            return False, f"{url} answered HTTP {resp.status}"
    except TimeoutError:
        return False, f"{url} did not answer within {timeout:g} s"
    except aiohttp.ClientError as exc:
        return False, f"{url}: {exc.__class__.__name__}: {exc}"


async def probe_retrieval(
    session: aiohttp.ClientSession, base_url: str, timeout: float = PROBE_TIMEOUT
) -> tuple[bool, str]:
    """One health check of a retrieval service: ``GET {base_url}/health``; (ready, what happened).

    The service opens its port before it has loaded the model and the index and answers 503
    ``{"status": "loading"}`` meanwhile, so "loading" and "down" read differently.
    """
    url = f"{base_url}/health"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            try:
                body = await resp.json(content_type=None)
            except (ValueError, aiohttp.ClientError):
                body = None
            state = body.get("status") if isinstance(body, dict) else None
            if resp.status == 200 and state == "ready":
                assert isinstance(body, dict)
                return True, f"{body.get('documents', '?')} documents, {body.get('mode', '?')}"
            if state == "loading":
                assert isinstance(body, dict)
                return False, f"loading the model and index ({body.get('seconds', '?')} s so far)"
            if state == "failed":
                assert isinstance(body, dict)
                return False, f"could not load its index: {body.get('error')}"
            return False, f"{url} answered HTTP {resp.status}"
    except TimeoutError:
        return False, f"{url} did not answer within {timeout:g} s"
    except aiohttp.ClientError as exc:
        return False, f"{url}: {exc.__class__.__name__}: {exc}"


def _port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class LaunchedServer:
    """A server proctor started: the watchdog process that owns it, and where it logs."""

    role: str
    cfg: LaunchConfig
    argv: list[str]
    log_path: Path
    base_url: str
    watchdog: subprocess.Popen[bytes]
    server_pid: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    label: str = ""
    """What it is, for messages: the launch kind (``retrieval`` for a retrieval service)."""
    probe_retrieval: bool = False
    """Health is ``GET /health`` of a retrieval service, not ``GET /v1/models``."""

    @property
    def what(self) -> str:
        return self.label or self.cfg.kind

    async def probe(self, session: aiohttp.ClientSession) -> tuple[bool, str]:
        if self.probe_retrieval:
            return await probe_retrieval(session, self.base_url)
        return await probe(session, self.base_url)

    def exit_code(self) -> int | None:
        """The server's exit status once it (and so its watchdog) has exited, else None."""
        return self.watchdog.poll()

    def _kill_now(self) -> None:
        """Last resort, synchronous: SIGKILL the server's group and the watchdog."""
        if self.server_pid is not None and self.watchdog.poll() is None:
            # While the watchdog lives it has not reaped the server, so the group id is still ours.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.server_pid, signal.SIGKILL)
        self._close_lifeline()
        if self.watchdog.poll() is None:
            self.watchdog.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.watchdog.wait(timeout=5)
        self._release()

    def _close_lifeline(self) -> None:
        """Close our end of the watchdog's stdin: from then on the server is on its way down."""
        if self.watchdog.stdin is not None and not self.watchdog.stdin.closed:
            with contextlib.suppress(OSError):
                self.watchdog.stdin.close()

    def _release(self) -> None:
        """Close the pid pipe, once the watchdog has exited (a reader thread may still hold it)."""
        if self.watchdog.poll() is not None and self.watchdog.stdout is not None:
            with contextlib.suppress(OSError):
                self.watchdog.stdout.close()

    async def stop(self, log: logging.Logger) -> None:
        """Close the lifeline (the watchdog then SIGTERMs, waits, SIGKILLs) and wait for it."""
        if self.watchdog.poll() is not None:
            self._close_lifeline()
            self._release()
            return
        log.info("stopping %s server of role %r (pid %s)", self.what, self.role, self.server_pid)
        began = time.monotonic()
        try:
            self._close_lifeline()
            deadline = began + STOP_GRACE + 2.0
            while self.watchdog.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - Popen exit is not awaitable
                await asyncio.sleep(0.05)
        except BaseException:
            self._kill_now()  # cancelled again while stopping: do not leave it to chance
            raise
        if self.watchdog.poll() is None:
            log.warning("watchdog of role %r did not finish in time: killing the server", self.role)
            self._kill_now()
        self._release()
        log.info("stopped the server of role %r in %.1f s", self.role, time.monotonic() - began)


def _safe_name(role: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", role) or "model"


def _spawn(role: str, cfg: LaunchConfig, argv: list[str], *, run_dir: Path, cwd: Path) -> LaunchedServer:
    """Start the watchdog (which starts the server) in a new session, logging to the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"launch-{_safe_name(role)}.log"
    with log_path.open("ab", buffering=0) as log_file:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"=== {stamp} proctor starts {cfg.kind} for role {role!r}: {shlex.join(argv)}\n".encode())
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "proctor.models._watchdog", "--grace", str(STOP_GRACE), "--", *argv],
            stdin=subprocess.PIPE,  # the lifeline: only we hold its write end
            stdout=subprocess.PIPE,  # one line: "pid N"
            stderr=log_file,
            env=launch_env(cfg),
            cwd=cwd,
            start_new_session=True,  # Ctrl-C in the terminal reaches proctor, which then stops it
        )
    return LaunchedServer(role, cfg, argv, log_path, launch_base_url(cfg), watchdog)


async def _read_pid(server: LaunchedServer) -> None:
    """Read the watchdog's ``pid N`` line (EOF if the command could not even be started)."""
    assert server.watchdog.stdout is not None
    line = await asyncio.to_thread(server.watchdog.stdout.readline)
    match = re.match(rb"pid (\d+)", line)
    if match:
        server.server_pid = int(match.group(1))


def _failure(server: LaunchedServer, what: str) -> LaunchError:
    tail = log_tail(server.log_path)
    hint = None
    if "No module named 'llama_cpp" in tail or "No module named llama_cpp" in tail:
        hint = 'install the server with: python -m pip install "llama-cpp-python[server]"'
    elif "cannot start" in tail and ("No such file" in tail or "Errno 2" in tail):
        hint = f"is {server.argv[0]!r} installed and on PATH (or in launch.env's PATH)?"
    elif "address already in use" in tail.lower():
        hint = f"another process holds port {server.cfg.port}; stop it or choose another launch.port"
    return LaunchError(
        f"{server.what} server for role {server.role!r} {what}.\n"
        f"  command: {shlex.join(server.argv)}\n"
        f"  log: {server.log_path} (last lines below)\n" + "\n".join(f"  | {line}" for line in tail.splitlines()),
        hint=hint,
    )


async def _wait_healthy(server: LaunchedServer, session: aiohttp.ClientSession, log: logging.Logger) -> None:
    """Poll until healthy; fail early if the server exits; bounded by ``health_deadline``."""
    deadline = server.started_at + server.cfg.health_deadline
    delay = 0.1
    last_report = server.started_at
    detail = "not probed yet"
    while True:
        code = server.exit_code()
        if code is not None:
            health = "/health" if server.probe_retrieval else "/v1/models"
            raise _failure(server, f"exited with status {code} before answering {health}")
        ok, detail = await server.probe(session)
        if ok:
            log.info(
                "%s server of role %r healthy after %.1f s (serving: %s)",
                server.what,
                server.role,
                time.monotonic() - server.started_at,
                detail or "?",
            )
            return
        now = time.monotonic()
        if now >= deadline:
            raise _failure(
                server,
                f"did not become healthy within health_deadline={server.cfg.health_deadline:g} s "
                f"(last probe: {detail})",
            )
        if now - last_report >= _PROGRESS_EVERY:
            last_report = now
            log.info(
                "still waiting for the %s server of role %r: %.0f s of %g s (%s)",
                server.what,
                server.role,
                now - server.started_at,
                server.cfg.health_deadline,
                detail,
            )
        await asyncio.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 1.5, 2.0)


async def _come_up(server: LaunchedServer, session: aiohttp.ClientSession, log: logging.Logger) -> LaunchedServer:
    """Wait for a just-started server to be healthy; stop it if it does not come up."""
    try:
        await _read_pid(server)
        await _wait_healthy(server, session, log)
    except BaseException:
        await server.stop(log)
        raise
    return server


def replica_configs(cfg: LaunchConfig) -> list[LaunchConfig]:
    """One single-server config per data-parallel replica: ports ``port .. port+n-1``, own GPUs.

    Pure, like :func:`build_argv`. Replica i gets GPUs ``i*g .. i*g+g-1`` for
    ``gpus_per_replica: g``, counted in ``gpus`` when that lists the devices, else from 0.
    """
    if cfg.replicas == 1 and cfg.gpus_per_replica is None:
        return [cfg]
    devices = [d.strip() for d in cfg.gpus.split(",") if d.strip()] if cfg.gpus else None
    out = []
    for i in range(cfg.replicas):
        update: dict[str, object] = {"port": cfg.port + i, "replicas": 1}
        if cfg.gpus_per_replica:
            g = cfg.gpus_per_replica
            ids = devices[i * g : (i + 1) * g] if devices else [str(d) for d in range(i * g, (i + 1) * g)]
            update["gpus"] = ",".join(ids)
        out.append(cfg.model_copy(update=update))
    return out


@dataclass
class _Plan:
    """One server to ensure, shared by every role launching on the same host:port."""

    roles: list[str]
    cfg: LaunchConfig
    """With ``model_path`` resolved (assets assembled, relative paths made absolute)."""
    original: LaunchConfig
    model: str
    replica: int | None = None
    """Which data-parallel replica this is (``launch.replicas`` > 1), else None."""

    @property
    def name(self) -> str:
        """The role, or ``role-i`` for replica i: names the log file and the messages."""
        return self.roles[0] if self.replica is None else f"{self.roles[0]}-{self.replica}"


def _plans(models: Mapping[str, ModelConfig], base_dir: Path, log: logging.Logger) -> list[_Plan]:
    """Group launching roles by address and resolve model paths (assembling assets if needed)."""
    plans: dict[tuple[str, int], _Plan] = {}
    for role, mcfg in models.items():
        launch = mcfg.launch
        if launch is None:
            continue
        key = (connect_host(launch.host), launch.port)
        if key in plans:
            other = plans[key]
            if launch.model_dump() != other.original.model_dump():
                raise LaunchError(
                    f"roles {other.roles[0]!r} and {role!r} both launch a server on {key[0]}:{key[1]} "
                    "but with different settings",
                    hint="give each launched server its own port, or make the two launch blocks identical",
                )
            for i in range(launch.replicas):
                plans[(key[0], key[1] + i)].roles.append(role)
            continue
        original = launch
        if launch.model_path:
            resolved_path = resolve_model_path(launch.model_path, base_dir=base_dir, log=log)
            if launch.kind == "llama-cpp" and not Path(resolved_path).is_file():
                raise LaunchError(
                    f"role {role!r}: model file {resolved_path} does not exist",
                    hint="relative model_path values are taken relative to the spec file's directory",
                )
            launch = launch.model_copy(update={"model_path": resolved_path})
        several = launch.replicas > 1
        for i, cfg in enumerate(replica_configs(launch)):
            rkey = (connect_host(cfg.host), cfg.port)
            if rkey in plans:
                raise LaunchError(
                    f"role {role!r}: replica {i} on port {cfg.port} collides with role {plans[rkey].roles[0]!r}"
                )
            plans[rkey] = _Plan([role], cfg, original, mcfg.model or served_name(launch), i if several else None)
    return list(plans.values())


async def _ensure(
    plan: _Plan, *, session: aiohttp.ClientSession, run_dir: Path, base_dir: Path, log: logging.Logger
) -> LaunchedServer | None:
    """Reuse a healthy server on the plan's port, or start one and wait for it to be healthy."""
    cfg, role = plan.cfg, plan.name
    base_url = launch_base_url(cfg)
    ok, detail = await probe(session, base_url)
    if ok:
        roles = ", ".join(plan.roles)
        log.info("reusing the healthy server at %s for role(s) %s (serving: %s)", base_url, roles, detail or "?")
        wanted = served_name(cfg, plan.model)
        if detail and wanted not in detail.split(", "):
            log.warning("the reused server at %s serves %s, not %r: requests may be refused", base_url, detail, wanted)
        return None
    if await asyncio.to_thread(_port_in_use, connect_host(cfg.host), cfg.port):
        raise LaunchError(
            f"role {role!r}: port {cfg.port} on {connect_host(cfg.host)} is taken by something that is not a "
            f"healthy model server ({detail})",
            hint="stop that process, or choose another launch.port",
        )
    argv = build_argv(cfg, model=plan.model)
    if plan.replica:  # staggered: replicas loading at once would fight over disk and host memory
        await asyncio.sleep(plan.replica * plan.original.stagger)
    server = _spawn(role, cfg, argv, run_dir=run_dir, cwd=base_dir)
    gpus = f", CUDA_VISIBLE_DEVICES={cfg.gpus}" if cfg.gpus is not None else ""
    log.info(
        "starting %s for role(s) %s on %s:%d%s (log: %s)",
        cfg.kind,
        ", ".join(plan.roles) if plan.replica is None else role,
        cfg.host,
        cfg.port,
        gpus,
        server.log_path,
    )
    return await _come_up(server, session, log)


def retrieval_services(solver_options: Any) -> list[RetrievalLaunch]:
    """Every ``launch: {kind: retrieval}`` in a solver's options (its tools, their experts).

    A walk rather than a fixed path, because a retrieval service may back a ``retrieve`` tool or an
    ``ask_expert`` tool's ``retrieve:`` block alike. Blocks naming the same address must agree.
    """
    found: dict[tuple[str, int], RetrievalLaunch] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            launch = node.get("launch")
            if isinstance(launch, dict) and launch.get("kind") == "retrieval":
                try:
                    service = RetrievalLaunch.model_validate(launch)
                except ValidationError as exc:
                    raise SpecError(f"retrieval launch block: {exc.errors()[0].get('msg', 'invalid')}") from None
                key = (connect_host(service.host), service.port)
                if key in found and found[key] != service:
                    raise SpecError(f"two retrieval launch blocks on {key[0]}:{key[1]} differ; make them identical")
                found[key] = service
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(solver_options)
    return list(found.values())


def resolve_index(service: RetrievalLaunch, base_dir: Path) -> Path:
    """The service's index directory (relative paths are relative to the spec file)."""
    path = Path(service.index).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _stale_corpus(service: RetrievalLaunch, index: Path, base_dir: Path, run_dir: Path) -> Path | None:
    """The launch's corpus when ``index`` must be (re)built from it, else None (index current)."""
    from proctor.retrieval.index import file_sha256

    assert service.corpus is not None
    corpus = Path(service.corpus).expanduser()
    corpus = corpus if corpus.is_absolute() else (base_dir / corpus).resolve()
    if not corpus.is_file():
        raise LaunchError(
            f"retrieval corpus {corpus} does not exist", hint="launch.corpus is relative to the spec file"
        )
    try:
        manifest = json.loads((index / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("corpus_sha256") == file_sha256(corpus):
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    return corpus


async def _build_index_if_stale(
    service: RetrievalLaunch, index: Path, *, base_dir: Path, run_dir: Path, log: logging.Logger
) -> None:
    """Build ``index`` from the launch's ``corpus`` when it is missing or was built from other data."""
    corpus = await asyncio.to_thread(_stale_corpus, service, index, base_dir, run_dir)
    if corpus is None:
        return
    log_path = run_dir / f"launch-retrieval-{service.port}.log"
    argv = service.index_argv(str(corpus), str(index))
    log.info(
        "building the retrieval index %s from %s (once; rebuilt when the corpus changes; log: %s)",
        index,
        corpus,
        log_path,
    )
    began = time.monotonic()
    with log_path.open("ab") as log_file:
        log_file.write(f"=== proctor builds the index: {shlex.join(argv)}\n".encode())
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        try:
            code = await proc.wait()
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
    if code != 0:
        raise LaunchError(
            f"building the retrieval index {index} failed (exit {code}).\n  command: {shlex.join(argv)}\n"
            + "\n".join(f"  | {line}" for line in log_tail(log_path).splitlines())
        )
    log.info("built the retrieval index %s in %.1f s", index, time.monotonic() - began)


async def _ensure_retrieval(
    service: RetrievalLaunch, *, session: aiohttp.ClientSession, run_dir: Path, base_dir: Path, log: logging.Logger
) -> LaunchedServer | None:
    """Reuse a healthy (or loading) retrieval service on its port, or start one and wait for it."""
    ok, detail = await probe_retrieval(session, service.base_url)
    if not ok and detail.startswith("loading"):
        # Someone else's service is still loading: wait for it, then use it (and leave it running).
        deadline = time.monotonic() + service.health_deadline
        log.info("the retrieval service at %s is %s: waiting for it", service.base_url, detail)
        while not ok and detail.startswith("loading") and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            ok, detail = await probe_retrieval(session, service.base_url)
    if ok:
        log.info("reusing the healthy retrieval service at %s (%s)", service.base_url, detail)
        return None
    if await asyncio.to_thread(_port_in_use, connect_host(service.host), service.port):
        raise LaunchError(
            f"retrieval service: port {service.port} on {connect_host(service.host)} is taken by something that is "
            f"not a healthy retrieval service ({detail})",
            hint="stop that process, or choose another launch.port",
        )
    index = resolve_index(service, base_dir)
    if service.corpus is not None:
        await _build_index_if_stale(service, index, base_dir=base_dir, run_dir=run_dir, log=log)
    if not (index / "manifest.json").is_file():
        raise LaunchError(
            f"retrieval index {index} does not exist (or is not an index)",
            hint="build it with: proctor retrieval index CORPUS --out DIR (launch.index is relative to the spec file)",
        )
    argv = service.argv(str(index))
    cfg = LaunchConfig(kind="command", argv=argv, host=service.host, port=service.port, env=service.env,
                       health_deadline=service.health_deadline)  # fmt: skip
    server = _spawn(f"retrieval-{service.port}", cfg, argv, run_dir=run_dir, cwd=base_dir)
    server.label, server.probe_retrieval, server.base_url = "retrieval", True, service.base_url
    log.info(
        "starting the retrieval service for %s on %s:%d; it loads the model and index first (log: %s)",
        index,
        service.host,
        service.port,
        server.log_path,
    )
    return await _come_up(server, session, log)


@asynccontextmanager
async def launched_servers(
    models: Mapping[str, ModelConfig],
    *,
    run_dir: Path,
    base_dir: Path,
    log: logging.Logger | None = None,
    services: Sequence[RetrievalLaunch] = (),
) -> AsyncIterator[dict[str, ModelConfig]]:
    """Ensure every ``launch:`` role has a healthy server; yield the roles with addresses filled in.

    Roles without ``launch`` pass through unchanged. A launching role without its own
    ``base_url``/``replicas``/``pool_file`` gets ``base_url = http://host:port/v1``; an empty
    ``model`` becomes the served name. Servers are started concurrently; if one fails, the ones
    already started are stopped before the error propagates. Servers that were reused are never
    stopped. ``services`` (retrieval services, see :func:`retrieval_services`) are ensured alongside,
    by the same rules.
    """
    log = log or _logger
    run_dir = Path(run_dir)
    base_dir = Path(base_dir)
    plans = await asyncio.to_thread(_plans, models, base_dir, log)
    started: list[LaunchedServer] = []
    try:
        if plans or services:
            async with aiohttp.ClientSession() as session:
                results = await asyncio.gather(
                    *(_ensure(p, session=session, run_dir=run_dir, base_dir=base_dir, log=log) for p in plans),
                    *(
                        _ensure_retrieval(s, session=session, run_dir=run_dir, base_dir=base_dir, log=log)
                        for s in services
                    ),
                    return_exceptions=True,
                )
            started = [r for r in results if isinstance(r, LaunchedServer)]
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for err in errors:
                    if not isinstance(err, LaunchError):
                        raise err
                raise errors[0]
        resolved: dict[str, ModelConfig] = dict(models)
        by_role: dict[str, list[_Plan]] = {}
        for plan in plans:
            for role in plan.roles:
                by_role.setdefault(role, []).append(plan)
        for role, role_plans in by_role.items():
            mcfg = models[role]
            first = role_plans[0]
            update: dict[str, object] = {}
            if mcfg.base_url is None and not mcfg.replicas and mcfg.pool_file is None:
                if len(role_plans) == 1:
                    update["base_url"] = launch_base_url(first.cfg)
                else:  # data-parallel replicas: the role's pool is all of them
                    update["replicas"] = [launch_base_url(p.cfg) for p in role_plans]
            if not mcfg.model:
                update["model"] = served_name(first.cfg)
            update["launch"] = (
                first.cfg
                if len(role_plans) == 1
                else first.original.model_copy(update={"model_path": first.cfg.model_path})
            )
            resolved[role] = mcfg.model_copy(update=update)
        yield resolved
    finally:
        pending = list(reversed(started))
        try:
            while pending:
                await pending[0].stop(log)
                pending.pop(0)
        except BaseException:
            for server in pending:  # interrupted while stopping: the rest go down at once
                server._kill_now()
            raise
