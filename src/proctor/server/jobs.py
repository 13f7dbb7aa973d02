"""Turning a submission into a job directory, and a job directory into a running process group.

Layout of ``DATA/jobs/<id>/``: ``spec.yaml`` (the spec as the job runs it: keys referenced by
environment-variable name only), uploaded files next to it, ``out/`` (the engine's run directory:
ledger, samples, stats, events, run.log) and ``job.log`` (the process's stdout and stderr, appended
across restarts so SSE offsets stay valid).

Every job runs in a bubblewrap sandbox (``proctor.sandbox``): its own PID namespace, an
unprivileged uid, a clean environment, rlimits, and a view holding the read-only Python
installation, its own directory read-only and only ``out/`` writable. The outer ``bwrap`` process
is the job's pid (its own session); killing it ends every process inside, however it forked.
Its stdout goes straight to ``job.log`` rather than through a pipe: the log survives a crash of the
server, and a dead server cannot block the job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import psutil
import yaml

from proctor import _yaml
from proctor.errors import InputError
from proctor.evals.spec import parse_spec
from proctor.executors.on_server import check_executor, ray_argv, ray_env
from proctor.models.private import ENV as PRIVATE_ENV
from proctor.models.private import PrivateEndpoints
from proctor.sandbox import Limits, Sandbox
from proctor.server import cgroups, lmeval_policy, policy
from proctor.server.schemas import ModelEndpoint, SubmitRequest
from proctor.server.scrub import scrub_secrets as scrub_secrets  # moved to scrub.py; re-exported
from proctor.server.settings import BASE_URL_PATTERN, MODEL_PATTERN, CommandTemplate, ServerSettings, TemplateParam

log = logging.getLogger("proctor.server")

RESERVED_NAMES = {"spec.yaml", "job.log", "out"}
ENV_PASSTHROUGH = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
)
"""The only server environment variables a job inherits: a job must never see the server's keys."""


ENGINE_KINDS = ("proctor", "lm_eval")
"""Job kinds the engine runs (``proctor run spec.yaml``): an ``lm_eval:`` spec is one too."""


def key_env_name(role: str) -> str:
    return f"PROCTOR_API_KEY_{role.upper()}"


@dataclass(slots=True)
class JobSecrets:
    """What a job needs that is never written down: key values by env name, the tunnel token."""

    env: dict[str, str] = field(default_factory=dict)

    def values(self) -> list[str]:
        return [v for v in self.env.values() if v]


@dataclass(slots=True)
class Prepared:
    """A validated submission: what to store (no secrets) and what to keep in memory."""

    request: dict[str, Any]
    key_envs: list[str]
    secrets: JobSecrets
    private_roles: list[str]


def collect_keys(models: dict[str, ModelEndpoint]) -> JobSecrets:
    secrets = JobSecrets()
    for role, endpoint in models.items():
        if endpoint.api_key is not None and endpoint.api_key.get_secret_value():
            secrets.env[key_env_name(role)] = endpoint.api_key.get_secret_value()
    return secrets


def prepare(req: SubmitRequest, job_dir: Path, settings: ServerSettings) -> Prepared:
    """Validate ``req`` and write the job directory; raise ``InputError`` before anything runs."""
    private_roles = (req.private_roles or ["subject"]) if req.private else []
    secrets = collect_keys(req.models)
    for role in private_roles:
        secrets.env.pop(key_env_name(role), None)
    # A private role's local URL must never reach the server's records: only its model name.
    stored_models = {
        role: ep.model_dump(
            exclude={"api_key", "base_url"} if role in private_roles else {"api_key"}, exclude_none=True
        )
        for role, ep in req.models.items()
    }
    request: dict[str, Any] = {
        "kind": req.kind,
        "models": stored_models,
        "limit": req.limit,
        "concurrency": req.concurrency,
        "retry_errors": req.retry_errors,
        "limits": _check_limits(req, settings),
    }
    if req.kind == "command":
        template = _template(req, settings)
        request["template"] = req.template
        request["params"] = _check_params(req.template or "", template, req.params)
        if req.files:
            raise InputError("command jobs take no uploaded files; their template names what they run")
        if not private_roles and "subject" in req.models and not req.models["subject"].base_url:
            raise InputError("a command job's subject needs a base_url")
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "out").mkdir(exist_ok=True)
        return Prepared(request, sorted(secrets.env), secrets, private_roles)

    if not req.spec:
        raise InputError("a proctor job needs 'spec' (the task spec's YAML text)")
    spec = _rewrite_spec(req, settings, private_roles, set(secrets.env))
    if "lm_eval" in spec:
        request["kind"] = "lm_eval"
        request["env"] = lmeval_policy.check_env_vars(req.env_vars, settings.lm_eval)
    elif req.kind == "lm_eval" or req.env_vars:
        raise InputError("kind lm_eval (and env_vars) need a spec with an lm_eval: section")
    if settings.sandbox.enabled:
        policy.check_spec(spec, settings.sandbox)
    request["ray"] = check_executor(spec, settings.ray_address)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "out").mkdir(exist_ok=True)
    for name, upload in req.files.items():
        if name.split("/")[0] in RESERVED_NAMES:
            raise InputError(f"an uploaded file may not be called {name!r}")
        target = job_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            raw = (
                base64.b64decode(upload.content, validate=True)
                if upload.encoding == "base64"
                else upload.content.encode()
            )
        except ValueError:
            raise InputError(f"file {name!r} is not valid base64") from None
        target.write_bytes(raw)
    (job_dir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return Prepared(request, sorted(secrets.env), secrets, private_roles)


def _check_limits(req: SubmitRequest, settings: ServerSettings) -> dict[str, int]:
    """The job's own lower ceilings (stored with the job); a value above the server's is a 400."""
    given = req.limits.model_dump(exclude_none=True) if req.limits is not None else {}
    for key, value in given.items():
        ceiling = settings.sandbox.ceiling(key)
        if value > ceiling:
            raise InputError(f"limits.{key}: at most {ceiling} on this server")
    return dict(given)


def job_ceiling(request: dict[str, Any], settings: ServerSettings, key: str) -> int:
    """The server's ceiling for ``limits.KEY``, lowered by what the job asked for at submission."""
    ceiling = settings.sandbox.ceiling(key)
    asked: int = (request.get("limits") or {}).get(key, ceiling)
    return min(ceiling, asked)


def job_limits(request: dict[str, Any], settings: ServerSettings) -> Limits:
    """The job's rlimits: the server's ceilings, lowered by what the job asked for at submission."""
    keys = ("memory_mb", "processes", "file_size_mb", "open_files")
    return Limits(**{key: job_ceiling(request, settings, key) for key in keys})


def job_sandbox(request: dict[str, Any], job_dir: Path, settings: ServerSettings, *, uid: int | None) -> Sandbox:
    """The job's view: its directory read-only, ``out/`` writable, plus what the admin published
    (registered datasets, absolute paths in its command template, ``sandbox.readable``), and a
    ``/tmp`` of ``sandbox.tmp_mb`` MiB, or less if the submission's ``limits`` asked for less."""
    job_dir = job_dir.resolve()
    readable = [job_dir, *settings.sandbox.readable, *(p.resolve() for p in settings.datasets.values())]
    readable += lmeval_policy.readable_paths(settings.lm_eval)
    template = settings.templates.get(request.get("template") or "") if request["kind"] == "command" else None
    if template is not None:
        readable += [Path(part) for part in template.argv if part.startswith("/") and os.path.exists(part)]
    return Sandbox(
        cwd=job_dir,
        readable=tuple(readable),
        writable=(job_dir / "out",),
        network=True,
        uid=uid,
        die_with_parent=False,
        tmp_mb=job_ceiling(request, settings, "tmp_mb"),
    )


def give_out_dir(job_dir: Path, uid: int) -> None:
    """Make ``out/`` (and everything in it) the job's uid's, so a job running as that uid can write.

    Only meaningful for a server running as root; symlinks are changed themselves, never followed.
    """
    out = job_dir / "out"
    out.mkdir(exist_ok=True)
    os.lchown(out, uid, uid)
    for root, dirs, files in os.walk(out, followlinks=False):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(root, name), uid, uid)


def _template(req: SubmitRequest, settings: ServerSettings) -> CommandTemplate:
    """The registered template a command job names, after checking the built-in values it will
    substitute from the request (``{model}``, ``{base_url}``), so a bad one is a 400 now rather
    than a job that fails, or worse runs with an injected option, later."""
    if not req.template:
        raise InputError("a command job needs 'template' (one the server's admin registered)")
    template = settings.templates.get(req.template)
    if template is None:
        known = ", ".join(sorted(settings.templates)) or "none"
        raise InputError(f"no command template {req.template!r} on this server (registered: {known})")
    subject = req.models.get("subject")
    if subject is not None:
        _check_builtins({"model": subject.model or "", "base_url": subject.base_url or ""})
    return template


BUILTIN_PATTERNS = {"model": MODEL_PATTERN, "base_url": BASE_URL_PATTERN}
"""The built-in placeholders that carry user input, and what they must match when not empty."""


def _check_builtins(values: dict[str, str]) -> None:
    for pname, pattern in BUILTIN_PATTERNS.items():
        value = values.get(pname, "")
        if value and not re.fullmatch(pattern, value):
            raise InputError(f"the subject's {pname} is not allowed in a command template: it must match {pattern}")


def _check_params(name: str, template: CommandTemplate, given: dict[str, str]) -> dict[str, str]:
    unknown = set(given) - set(template.params)
    if unknown:
        raise InputError(f"template {name!r} has no parameter(s) {', '.join(sorted(unknown))}")
    values: dict[str, str] = {}
    for pname, param in template.params.items():
        value = given.get(pname, param.default)
        if value is None:
            raise InputError(f"template {name!r} needs parameter {pname!r}")
        _check_value(name, pname, param, value)
        values[pname] = value
    return values


def _check_value(name: str, pname: str, param: TemplateParam, value: str) -> None:
    if not re.fullmatch(param.pattern, value):
        raise InputError(f"parameter {pname!r} of template {name!r} must match {param.pattern}")
    if value.startswith("-") and not param.allow_dash:
        raise InputError(
            f"parameter {pname!r} of template {name!r} may not start with '-' (it would read as an option)",
            hint="the server's admin can set allow_dash: true on that parameter",
        )


def _rewrite_spec(
    req: SubmitRequest, settings: ServerSettings, private_roles: list[str], keyed_envs: set[str]
) -> dict[str, Any]:
    try:
        spec = _yaml.safe_load(req.spec or "")
    except yaml.YAMLError as exc:
        raise InputError(f"the spec is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise InputError("the spec must be a YAML mapping (name, dataset, solver, scorer, models)")
    models = spec.get("models")
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise InputError("the spec's 'models' must map role names to model settings")
    for role in list(req.models) + private_roles:
        models.setdefault(role, {})
    for role, cfg in models.items():
        if not isinstance(role, str) or not isinstance(cfg, dict):
            raise InputError("the spec's 'models' must map role names to model settings")
        if "launch" in cfg:
            raise InputError(f"models.{role}.launch is not allowed on a server: give the endpoint's base_url")
        endpoint = req.models.get(role)
        if endpoint is not None and role not in private_roles:
            if endpoint.base_url:
                for key in ("replicas", "pool_file"):
                    cfg.pop(key, None)
                cfg["base_url"] = endpoint.base_url
            if endpoint.model:
                cfg["model"] = endpoint.model
        pool_file = cfg.get("pool_file")
        if isinstance(pool_file, str):
            pool_file = cfg["pool_file"] = PurePosixPath(pool_file).as_posix()
        if pool_file is not None and (not isinstance(pool_file, str) or pool_file not in req.files):
            raise InputError(f"models.{role}.pool_file must name an uploaded file")
        env_name = key_env_name(role)
        if role in private_roles:
            if endpoint is not None and endpoint.model:
                cfg["model"] = endpoint.model
            # The real facade URL is filled in at each start (the port may differ after a restart).
            for key in ("replicas", "pool_file"):
                cfg.pop(key, None)
            cfg["base_url"] = "http://127.0.0.1:1/private-facade-placeholder/v1"
            cfg["api_key_env"] = env_name
        elif env_name in keyed_envs:
            cfg["api_key_env"] = env_name
        else:
            # Never let a spec name one of the server's own variables: it would send its value away.
            cfg.pop("api_key_env", None)
        if "model" not in cfg:
            raise InputError(f"models.{role} needs a model name (give it in the spec or with --model-name)")
    if "lm_eval" in spec:  # lm-eval's tasks replace the dataset; their own policy (lmeval_policy)
        lmeval_policy.rewrite_spec(spec, req.files, settings.lm_eval)
        _validate_lm_eval(spec)
        return spec
    dataset = spec.get("dataset")
    if req.dataset:
        path = settings.datasets.get(req.dataset)
        if path is None:
            known = ", ".join(sorted(settings.datasets)) or "none"
            raise InputError(f"no dataset {req.dataset!r} registered on this server (registered: {known})")
        dataset = dataset if isinstance(dataset, dict) else {}
        dataset["path"] = str(path.resolve())
        spec["dataset"] = dataset
    elif isinstance(dataset, dict) and isinstance(dataset.get("path"), str):
        dataset["path"] = PurePosixPath(dataset["path"]).as_posix()
        if dataset["path"] not in req.files:
            raise InputError(
                f"the spec's dataset {dataset['path']!r} was not uploaded",
                hint="upload it next to the spec (the client does this) or name a registered dataset",
            )
    else:
        raise InputError("the spec needs dataset.path (an uploaded file) or the request a registered 'dataset'")
    _validate_with_engine(spec)
    return spec


def _validate_lm_eval(spec: dict[str, Any]) -> None:
    from proctor.harness.spec import parse_lm_eval_spec

    parse_lm_eval_spec(spec, source="the submitted spec")


def _validate_with_engine(spec: dict[str, Any]) -> None:
    """Use the engine's own spec schema, so errors come back before queueing."""
    parse_spec(spec, source="the submitted spec")


TUNNEL_SLACK = 30.0
"""Seconds a private role's client waits beyond the tunnel's own deadline, so that the facade's
503/504 (which says why) arrives before the engine gives up on its own."""


def set_private_waits(job_dir: Path, roles: list[str], *, tunnel_deadline: float) -> None:
    """Let the tunnel do the waiting for the private roles of the job's spec copy.

    Where their calls go is not written here: the job gets it as a typed run option in its
    environment (``proctor.models.private.PrivateEndpoints``, see ``build_env``).

    The submitter's agent may attach after the job starts, or go away for a while: the facade
    then holds each call (up to ``tunnel_deadline``) and answers it as soon as an agent is back.
    So a private role gets a ``request_timeout`` and a retry deadline longer than that, and
    health probes that wait like calls instead of failing after 5 s: no start-up check (which
    would end the run with "no healthy replica" when the agent is a little late), and a probe
    timeout as long as a call's, so a gap in the tunnel never opens the circuit breaker.
    Done at each start, with the server's current deadline. Longer values in the spec are kept.
    """
    path = job_dir / "spec.yaml"
    spec = _yaml.safe_load(path.read_text(encoding="utf-8"))
    wait = tunnel_deadline + TUNNEL_SLACK
    for role in roles:
        cfg = spec["models"][role]
        cfg["request_timeout"] = _at_least(cfg.get("request_timeout"), wait)
        retry = cfg["retry"] = cfg.get("retry") if isinstance(cfg.get("retry"), dict) else {}
        retry["total_deadline"] = _at_least(retry.get("total_deadline"), wait + TUNNEL_SLACK)
        health = cfg["health"] = cfg.get("health") if isinstance(cfg.get("health"), dict) else {}
        health["check_at_start"] = False
        health["timeout"] = _at_least(health.get("timeout"), wait)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def _at_least(value: Any, floor: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= floor:
        return float(value)
    return floor


def build_argv(request: dict[str, Any], job_id: str, job_dir: Path, settings: ServerSettings) -> list[str]:
    """The job's argv; secrets never appear here (``ps`` shows argv to every local user)."""
    if request["kind"] in ENGINE_KINDS:
        # -I (isolated): the job directory is not on sys.path, so an uploaded proctor/ or yaml.py
        # is never imported, and no PYTHON* variable changes what runs.
        argv = [sys.executable, "-I", "-m", "proctor", "run", "spec.yaml", "--out", "out"]
        if request.get("limit"):
            argv += ["--limit", str(request["limit"])]
        if request.get("concurrency"):
            argv += ["--concurrency", str(request["concurrency"])]
        if request.get("retry_errors"):
            argv.append("--retry-errors")
        return argv + ray_argv(request, settings.ray_address)
    template = settings.templates.get(request["template"])
    if template is None:
        raise InputError(f"command template {request['template']!r} is no longer registered on this server")
    subject = request.get("models", {}).get("subject", {})
    # Checked again at each start: a stored request may predate the rules or the template's edit.
    given = {"model": subject.get("model", ""), "base_url": subject.get("base_url", "")}
    _check_builtins(given)
    params = _check_params(request["template"], template, request.get("params", {}))
    values = {
        "job_id": job_id,
        "job_dir": str(job_dir),
        "out_dir": str(job_dir / "out"),
        "python": sys.executable,
        **given,
        **params,
    }
    return [re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), part) for part in template.argv]


def build_env(
    request: dict[str, Any],
    job_id: str,
    job_dir: Path,
    secrets: JobSecrets,
    settings: ServerSettings,
    *,
    private_urls: dict[str, str],
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_PASSTHROUGH or k.startswith("LC_")}
    env.update(
        PYTHONUNBUFFERED="1",
        PROCTOR_PROGRESS="json",
        PROCTOR_JOB_ID=job_id,
        PROCTOR_OUT_DIR=str(job_dir / "out"),
    )
    if settings.sandbox.enabled:
        # The sandbox has its own /tmp; the server's HOME and TMPDIR are not in its view.
        env.update(HOME="/tmp", TMPDIR="/tmp", PROCTOR_SANDBOX="1")
        env.pop("PYTHONPATH", None)
        env.pop("USER", None)
    env.update(lmeval_policy.job_env(request, settings.lm_eval))
    env.update(secrets.env)
    env.update(ray_env(request))
    if request["kind"] == "command":
        template = settings.templates.get(request["template"])
        if template is not None:
            env.update(template.env)
        subject = request.get("models", {}).get("subject", {})
        base_url = private_urls.get("subject") or subject.get("base_url")
        if base_url:
            env["OPENAI_BASE_URL"] = base_url
            env["PROCTOR_OPENAI_BASE_URL"] = base_url
        key = secrets.env.get(key_env_name("subject"))
        if key:
            env["OPENAI_API_KEY"] = key
        if subject.get("model"):
            env["OPENAI_MODEL"] = subject["model"]
    elif private_urls:
        # Where the private roles' calls go (the facade, over the job channel): a run option, not the spec.
        env[PRIVATE_ENV] = PrivateEndpoints(roles=private_urls).to_env()
    return env


async def spawn(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    sandbox: Sandbox | None = None,
    limits: Limits | None = None,
    cgroup_procs: list[Path] | None = None,
) -> asyncio.subprocess.Process:
    """Start the job in its own session (in ``sandbox`` when given), output appended to ``log_path``.

    ``cgroup_procs``: the job's first process writes its pid there before it execs anything else.

    With a sandbox, ``env`` is the whole environment inside it: bwrap is started with it and hands
    it on (never in bwrap's arguments, which every user of the host can read).
    """
    if sandbox is not None:
        argv = sandbox.argv(argv)
    if limits is not None:
        argv = [*limits.argv(), *argv]
    if cgroup_procs:
        argv = [*cgroups.wrapper(cgroup_procs), *argv]
    with open(log_path, "ab", buffering=0) as log_file:  # noqa: ASYNC230 - only opens an fd for the child; no I/O here
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


async def kill_tree(pid: int, *, grace: float, proc: asyncio.subprocess.Process | None = None) -> None:
    """SIGTERM the job's processes, SIGKILL what is left after ``grace``.

    A sandboxed job (``pid`` is its outer ``bwrap``): every process of the job is in its PID
    namespace, hence a descendant of ``pid``. They get SIGTERM (the engine flushes and exits);
    then SIGKILL of the namespace's init (a descendant too) ends whatever is left, however it
    forked, and SIGKILL of ``bwrap`` itself. Without a sandbox (``--no-sandbox``): the process group, plus
    descendants collected first (one that called setsid() has left the group).
    """
    try:
        leader = psutil.Process(pid)
        sandboxed = leader.name() == "bwrap"
        strays = leader.children(recursive=True)
    except psutil.Error:
        sandboxed, strays = False, []
    if not sandboxed:
        strays = [p for p in strays if _pgid(p.pid) != pid]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    for p in strays:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    if proc is not None and grace > 0:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=grace)
    elif grace > 0:
        await asyncio.to_thread(psutil.wait_procs, [p for p in [_proc(pid)] if p], timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for p in strays + group_members(pid):
        with contextlib.suppress(psutil.Error):
            p.kill()
    if proc is not None:
        await proc.wait()
    remaining = group_members(pid) + [p for p in strays if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if remaining:
        await asyncio.to_thread(psutil.wait_procs, remaining, timeout=5)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def is_same_process(pid: int | None, started: float | None) -> bool:
    """True when ``pid`` is still the process we started (not a later one that reused the pid)."""
    if not pid or started is None:
        return False
    proc = _proc(pid)
    if proc is None:
        return False
    try:
        return abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def run_cleanup_hooks(job_id: str, job_dir: Path, settings: ServerSettings) -> None:
    """Remove what a job left outside its process group; a hook that cannot run is skipped quietly."""
    for hook in settings.cleanup_hooks:
        try:
            if hook == "docker":
                await _docker_cleanup(job_id, settings.hook_timeout)
            elif isinstance(hook, list):
                argv = [part.replace("{job_id}", job_id).replace("{job_dir}", str(job_dir)) for part in hook]
                await _run_quiet(argv, settings.hook_timeout)
        except (TimeoutError, OSError) as exc:
            log.debug("cleanup hook %s for %s skipped: %s", hook, job_id, exc)


async def _docker_cleanup(job_id: str, timeout: float) -> None:
    if shutil.which("docker") is None:
        return
    rc, out = await _run_quiet(["docker", "ps", "-aq", "--filter", f"label=proctor.job={job_id}"], timeout)
    ids = out.split()
    if rc == 0 and ids:
        await _run_quiet(["docker", "rm", "-f", *ids], timeout)


async def _run_quiet(argv: list[str], timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")
