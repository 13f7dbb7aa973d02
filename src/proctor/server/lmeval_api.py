"""lm-eval-server's REST API on ``proctor serve``: ``/job``, ``/jobs`` and their stop/delete routes.

A client written for lm-eval-server (github.com/trustyai-explainability/lm-eval-server) works
against proctor by adding an ``Authorization`` header: the body is lm-eval's CLI argument names
plus ``env_vars``. Each job is an ordinary ``lm_eval`` job (``harness.args`` maps the arguments
onto the spec, ``lmeval_policy`` decides what is allowed), so it is durable, queued with every
other job, owner-scoped and sandboxed. Differences (string ids, bounded log tails, proctor's error
shape) are listed in docs/lm-eval.md.
"""

from __future__ import annotations

import datetime
import shlex
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from proctor import _yaml
from proctor.errors import ConflictError, InputError
from proctor.harness.args import MODEL_TYPES, LmEvalArgs, spec_data
from proctor.server import logs
from proctor.server.auth import Principal, check_access
from proctor.server.lmeval_policy import REFUSED_KEYS
from proctor.server.schemas import ModelEndpoint, SubmitRequest
from proctor.server.store import TERMINAL_STATES, JobRow

TAIL_LINES = 200
TAIL_BYTES = 64 * 1024
"""The ``stdout`` tail of ``GET /job/{id}``: the last lines of the job's log, at most this much."""
STATUS = {
    "queued": "Queued",
    "waiting_for_credentials": "Queued",
    "running": "Running",
    "waiting_for_tunnel": "Running",
    "succeeded": "Completed",
    "failed": "Failed",
    "timed_out": "Failed",
    "cancelled": "Stopped",
}
IGNORED_ARGS = ("batch_size", "max_batch_size", "log_samples", "verbosity", "show_config")
"""Accepted with any value: proctor batches by concurrency, always writes the per-task samples,
and its log is the job's log."""
UNSUPPORTED_ARGS = (
    "device",
    "use_cache",
    "cache_requests",
    "check_integrity",
    "write_out",
    "system_instruction",
    "fewshot_as_multiturn",
    "wandb_args",
    "hf_hub_log_args",
    "predict_only",
)
"""lm-eval arguments proctor does not serve: accepted only when empty or false (as lm-eval-server's
README body lists them), otherwise a 400 naming them."""
KEY_VARS = {env for _chat, _base, env in MODEL_TYPES.values() if env}
"""``env_vars`` that hold the model's API key: kept in memory like any key, never stored or set."""


class LmEvalRequest(BaseModel):
    """``POST /job``'s body: lm-eval's CLI argument names (lm-eval-server's README), plus ``env_vars``."""

    model_config = ConfigDict(extra="allow")

    model: str
    tasks: str | list[str]
    model_args: str | dict[str, Any] = ""
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: float | None = None
    gen_kwargs: str | dict[str, Any] | None = None
    apply_chat_template: bool | str = False
    include_path: str | None = None
    """The name of a task directory registered on the server (nothing can be uploaded here)."""
    seed: str | int | None = None
    output_path: str | None = None
    trust_remote_code: bool | None = None
    lm_eval_path: str | None = None
    env_vars: dict[str, str] = Field(default_factory=dict)


class JobSummary(BaseModel):
    job_id: str
    argument: str
    status: str
    timestamp: str
    exit_code: int | None
    inference_progress_pct: int


class JobDetail(JobSummary):
    stdout: list[str]
    stderr: list[str]


def create_router(
    *,
    manager: Any,
    store: Any,
    caller: Callable[[Request], Principal],
    check_queue: Callable[[Principal], None],
) -> APIRouter:
    """The routes, bound to the server's job manager, store and auth (mounted by ``create_app``)."""
    router = APIRouter(tags=["lm-eval-server API"])

    def own(request: Request, job_id: str) -> tuple[Principal, JobRow]:
        principal = caller(request)
        job = store.get(job_id)
        check_access(principal, job)
        if job.kind != "lm_eval":
            raise InputError(f"job {job_id} is not an lm_eval job", hint=f"see it with GET /v1/jobs/{job_id}")
        return principal, job

    def mine(principal: Principal) -> list[JobRow]:
        return [j for j in store.list_jobs(owner=principal.name) if j.kind == "lm_eval"]

    def summary(job: JobRow) -> dict[str, Any]:
        job_dir = manager.job_dir(job.id)
        return {
            "job_id": job.id,
            "argument": argument_line(job_dir / "spec.yaml"),
            "status": STATUS.get(job.state, job.state),
            "timestamp": datetime.datetime.fromtimestamp(job.created_at, datetime.UTC).isoformat(),
            "exit_code": job.exit_code,
            "inference_progress_pct": 100 if job.state == "succeeded" else progress_pct(job_dir / "out"),
        }

    async def stop(principal: Principal, job: JobRow) -> bool:
        if job.state in TERMINAL_STATES:
            return False
        try:
            await manager.cancel(principal, job)
        except ConflictError:  # it finished meanwhile
            return False
        return True

    @router.post("/job", summary="Queue an lm-evaluation-harness job")
    async def submit(request: Request, body: LmEvalRequest) -> dict[str, Any]:
        """lm-eval's CLI arguments as JSON; returns ``{"status", "message", "job_id"}``."""
        principal = caller(request)
        req = submit_request(body)
        check_queue(principal)
        job, _warnings, _secret = manager.submit(principal, req)
        return {"status": "success", "message": f"Job {job.id} successfully queued.", "job_id": job.id}

    @router.get("/jobs", summary="List your lm-evaluation-harness jobs")
    async def list_jobs(request: Request, include_completed: bool = True, include_finished: bool = True) -> Any:
        """``include_completed=false`` or ``include_finished=false``: only jobs not yet finished."""
        jobs = mine(caller(request))
        if not (include_completed and include_finished):
            jobs = [j for j in jobs if j.state not in TERMINAL_STATES]
        return {"jobs": [summary(j) for j in jobs]}

    @router.get("/job/{job_id}", summary="One job, with the tail of its log")
    async def job_detail(request: Request, job_id: str) -> Any:
        _, job = own(request, job_id)
        return {**summary(job), "stdout": log_tail(manager.job_dir(job.id) / "job.log"), "stderr": []}

    @router.get("/job/{job_id}/stop", summary="Stop a job (it can be resumed: POST /v1/jobs/{id}/resume)")
    async def stop_job(request: Request, job_id: str) -> Any:
        principal, job = own(request, job_id)
        stopped = await stop(principal, job)
        message = f"Job {job_id} stopped." if stopped else f"Job {job_id} has already finished."
        return {"status": "success", "message": message}

    @router.delete("/job/{job_id}", summary="Stop a job if it runs, and delete it and its files")
    async def delete_job(request: Request, job_id: str) -> Any:
        principal, job = own(request, job_id)
        await stop(principal, job)
        manager.delete(principal, store.get(job_id))
        return {"status": "success", "message": f"Job {job_id} deleted successfully."}

    @router.get("/jobs/stop", summary="Stop all your jobs that have not finished")
    async def stop_all(request: Request) -> Any:
        principal = caller(request)
        stopped = [j.id for j in mine(principal) if await stop(principal, j)]
        return {"status": "success", "message": f"{len(stopped)} job(s) stopped.", "job_ids": stopped}

    @router.delete("/jobs", summary="Stop and delete all your jobs")
    async def delete_all(request: Request) -> Any:
        principal = caller(request)
        deleted = []
        for job in mine(principal):
            await stop(principal, job)
            manager.delete(principal, store.get(job.id))
            deleted.append(job.id)
        return {"status": "success", "message": f"{len(deleted)} job(s) deleted.", "job_ids": deleted}

    return router


def submit_request(body: LmEvalRequest) -> SubmitRequest:
    """The ``lm_eval`` job a ``POST /job`` body stands for; ``InputError`` naming what is refused."""
    extra = sorted(body.model_extra or {})
    unknown = [k for k in extra if k not in IGNORED_ARGS + UNSUPPORTED_ARGS]
    if unknown:
        raise InputError(f"unknown argument(s): {', '.join(unknown)[:200]}", hint="use lm-eval's CLI argument names")
    given = [k for k in extra if k in UNSUPPORTED_ARGS and (body.model_extra or {})[k] not in (None, "", False, 0)]
    if given:
        raise InputError(
            f"{', '.join(given)}: not supported by proctor's lm-eval jobs",
            hint="leave them out (or empty/false); see docs/lm-eval.md",
        )
    for key in ("trust_remote_code", "lm_eval_path", "output_path"):
        if getattr(body, key) not in (None, "", False):
            raise InputError(f"{key} is not allowed on this server", hint=REFUSED_KEYS[key])
    tasks = ",".join(body.tasks) if isinstance(body.tasks, list) else body.tasks
    data = spec_data(
        LmEvalArgs(
            model=body.model,
            tasks=tasks,
            model_args=body.model_args,
            num_fewshot=body.num_fewshot,
            limit=body.limit,
            gen_kwargs=body.gen_kwargs or "",
            apply_chat_template=body.apply_chat_template,
            include_path=body.include_path,
            seed=body.seed,
        ),
        who="POST /job",
    )
    env = {k: v for k, v in body.env_vars.items() if k not in KEY_VARS}
    keys = [v for k, v in body.env_vars.items() if k in KEY_VARS]
    models = {"subject": ModelEndpoint(api_key=SecretStr(keys[0]))} if keys else {}
    return SubmitRequest(kind="lm_eval", spec=yaml.safe_dump(data, sort_keys=False), env_vars=env, models=models)


def argument_line(spec_path: Path) -> str:
    """The ``lm_eval`` command line equivalent to the job's spec (for ``argument``)."""
    try:
        spec = _yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        section, subject = spec["lm_eval"], spec["models"]["subject"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return ""
    chat = bool(section.get("apply_chat_template"))
    base = str(subject.get("base_url", "")).rstrip("/")
    if "private-facade" in base:
        base = "(private)"
    margs = f"model={subject.get('model', '')},base_url={base}/{'chat/completions' if chat else 'completions'}"
    margs += f",num_concurrent={spec.get('concurrency', 32)},tokenized_requests=False"
    tasks = section.get("tasks")
    argv = ["lm_eval", "run", "--model", "local-chat-completions" if chat else "local-completions"]
    argv += ["--model_args", margs, "--tasks", ",".join(tasks) if isinstance(tasks, list) else str(tasks)]
    for key in ("num_fewshot", "limit", "include_path", "seed"):
        if section.get(key) is not None:
            argv += [f"--{key}", str(section[key])]
    if section.get("gen_kwargs"):
        argv += ["--gen_kwargs", ",".join(f"{k}={v}" for k, v in section["gen_kwargs"].items())]
    if chat:
        argv.append("--apply_chat_template")
    return shlex.join(argv)


def progress_pct(run_dir: Path) -> int:
    """Requests answered / requests known, from the job's ledger (exact; lm-eval hands requests
    over one type at a time, so the figure is of the types seen so far)."""
    path = run_dir / "ledger.sqlite"
    if not path.is_file():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            total, done = conn.execute("SELECT count(*), sum(state = 'scored') FROM samples").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(100 * (done or 0) / total) if total else 0


def log_tail(path: Path) -> list[str]:
    """The job log's last ``TAIL_LINES`` lines (at most ``TAIL_BYTES``), newline kept on each."""
    try:
        size = path.stat().st_size
    except OSError:
        return []
    start = max(0, size - TAIL_BYTES)
    data, _ = logs.read_page(path, start, TAIL_BYTES)
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if start > 0 and lines:
        lines = lines[1:]  # a partial first line
    return lines[-TAIL_LINES:]
