"""The FastAPI application: ``create_app(settings)`` builds it, ``serve()`` runs it.

The factory is separate from serving so that tests (and embedders) can mount the app on their own
uvicorn, socket and event loop. Every error a route raises on purpose is a ``ProctorError``,
rendered by one handler as ``{"ok": false, "error": ..., "status": ...}``.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Scope

from proctor import __version__
from proctor._validation import problems
from proctor.errors import InputError, NotFoundError, ProctorError
from proctor.server import artifacts, lmeval_api, logs
from proctor.server.auth import Authenticator, Principal, anonymize, check_access
from proctor.server.batches import BATCH_ID_PATTERN, batch_view
from proctor.server.frontdoor import FrontDoor, error_response
from proctor.server.metrics import Metrics, MetricsMiddleware
from proctor.server.quotas import QueueShare, Quota
from proctor.server.scheduler import JobManager
from proctor.server.schemas import (
    JOB_ID_RE,
    ArtifactInfo,
    BatchView,
    JobView,
    LogPage,
    ResumeRequest,
    ServerInfo,
    SubmitRequest,
    SubmitResponse,
)
from proctor.server.settings import ServerSettings
from proctor.server.store import TERMINAL_STATES, JobStore
from proctor.server.tunnel.hub import TunnelHub
from proctor.tunnel.protocol import FACADE_ROUTE

log = logging.getLogger("proctor.server")

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The job's id.")]


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the server for ``settings``; the job store and scheduler start with the app's lifespan."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.store_url)
    auth = Authenticator(store, open_mode=settings.open, cache_seconds=settings.token_cache_seconds)
    metrics = Metrics()
    manager = JobManager(settings, store, metrics, Quota(store, settings.rate_limit))
    queue_share = QueueShare(store, settings.queued_per_user, settings.queue_max)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        try:
            yield
        finally:
            await manager.stop()
            store.close()

    app = FastAPI(
        title="proctor job server",
        version=__version__,
        description="Submit LLM evaluations as durable jobs; follow their logs; fetch their results.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.manager = manager
    # Added first, so the metrics middleware wraps it and counts its early 401/413/408 answers.
    app.add_middleware(
        FrontDoor,
        check_caller=None if settings.open else auth.identify,
        max_body=settings.max_upload_bytes,
        body_timeout=settings.body_timeout,
        body_deadline=settings.body_deadline,
        body_min_rate=settings.body_min_rate,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics, route_of=_route_of)
    app.state.metrics = metrics
    hub = _attach_tunnel(app, manager, auth)

    @app.exception_handler(ProctorError)
    async def _proctor_error(_request: Request, exc: ProctorError) -> JSONResponse:
        return error_response(
            exc.http_status, exc.message, hint=exc.hint, retry_after=getattr(exc, "retry_after", None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes, wrong methods, bodies FastAPI could not parse (nesting too deep for
        # Python's JSON parser): the same shape as every other error, not FastAPI's {"detail"}.
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Same shape as every other error; the message never echoes input values (they may be keys).
        return error_response(422, f"invalid request: {problems(exc.errors())}")

    def caller(request: Request) -> Principal:
        principal = auth.identify(request)
        assert principal is not None
        return principal

    def own_job(request: Request, job_id: str) -> tuple[Principal, Any]:
        principal = caller(request)
        job = store.get(job_id)
        check_access(principal, job)
        return principal, job

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness: the process answers and its job store is readable."""
        store.count({"queued"})
        return {"ok": True, "version": __version__}

    @app.get("/metrics", tags=["server"], response_class=PlainTextResponse)
    async def prometheus(request: Request) -> PlainTextResponse:
        """Prometheus text format: queue length, running jobs, job outcomes, request latency.

        Public unless the server's config says ``metrics_require_token: true``."""
        if settings.metrics_require_token:
            auth.require_token(request)
        text = metrics.render(
            queued=store.count({"queued"}),
            running=len(manager.running),
            slots=settings.slots,
            waiting=store.count({"waiting_for_credentials"}),
            waiting_tunnel=store.count({"waiting_for_tunnel"}),
            channel_answers=hub.channel_answers,
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/server", tags=["server"], response_model=ServerInfo)
    async def server_info(request: Request) -> ServerInfo:
        """Idle or busy, slots, queue; other users' job ids anonymized. No token needed."""
        principal = auth.identify(request, required=False)
        active = store.list_jobs(states={"running", "waiting_for_tunnel"})
        queued = store.queued()
        entries = []
        for position, job in enumerate(active + queued):
            mine = principal is not None and principal.may_access(job)
            entries.append(
                {
                    "id": job.id if mine else anonymize(job.id),
                    "state": job.state,
                    "mine": mine,
                    "queue_position": position - len(active) + 1 if job.state == "queued" else None,
                }
            )
        return ServerInfo(
            status="busy" if manager.running or queued else "idle",
            version=__version__,
            slots=settings.slots,
            running=len(manager.running),
            queue_length=len(queued),
            queue_max=settings.queue_max,
            open=settings.open,
            rate_limit=settings.rate_limit,
            jobs=entries,
            you=principal.name if principal else None,
            tunnel=True,
        )

    @app.post("/v1/jobs", tags=["jobs"], status_code=201, response_model=SubmitResponse)
    async def submit(request: Request, body: SubmitRequest) -> SubmitResponse:
        """Queue a job. The response's ``tunnel_secret`` (private mode) is shown only here."""
        principal = caller(request)
        queue_share.check(principal, retry_after=manager.retry_after())
        artifacts.check_uploads(
            body.files,
            job_dir=manager.job_dir(body.job_id) if body.job_id and JOB_ID_RE.match(body.job_id) else None,
            max_files=settings.max_upload_files,
            max_bytes=settings.max_job_disk_bytes,
        )
        job, warnings, tunnel_secret = manager.submit(principal, body)
        return SubmitResponse(job=manager.view(job), warnings=warnings, tunnel_secret=tunnel_secret)

    @app.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        request: Request,
        all: bool = False,  # noqa: A002
        batch: Annotated[str | None, Query(pattern=BATCH_ID_PATTERN, description="Only this batch's jobs.")] = None,
    ) -> dict[str, Any]:
        """The caller's jobs (an admin may ask for everyone's with ``all=true``)."""
        principal = caller(request)
        owner = None if (all and principal.admin) else principal.name
        queue = [j.id for j in store.queued()]
        jobs = store.list_jobs(owner=owner, batch=batch)
        return {"ok": True, "jobs": [manager.view(j, queue=queue).model_dump() for j in jobs]}

    @app.get("/v1/batches/{batch_id}", tags=["jobs"], response_model=BatchView)
    async def batch_status(
        request: Request,
        batch_id: Annotated[str, Path(pattern=BATCH_ID_PATTERN)],
        all: bool = False,  # noqa: A002
    ) -> BatchView:
        """The caller's jobs of one batch with a count per state; 404 when the caller has none."""
        principal = caller(request)
        jobs = store.list_jobs(owner=None if (all and principal.admin) else principal.name, batch=batch_id)
        if not jobs:
            raise NotFoundError(f"no batch {batch_id!r}")
        queue = [j.id for j in store.queued()]
        return batch_view(batch_id, [manager.view(j, queue=queue) for j in jobs])

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView)
    async def job_status(request: Request, job_id: JobId) -> JobView:
        _, job = own_job(request, job_id)
        return manager.view(job)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], response_model=JobView)
    async def cancel(request: Request, job_id: JobId) -> JobView:
        """Kill the job's whole process group and run the cleanup hooks; returns when it is gone."""
        principal, job = own_job(request, job_id)
        return manager.view(await manager.cancel(principal, job))

    @app.post("/v1/jobs/{job_id}/resume", tags=["jobs"], response_model=SubmitResponse)
    async def resume(request: Request, job_id: JobId, body: ResumeRequest) -> SubmitResponse:
        """Queue a stopped job again (ahead of newer jobs), with the keys the server could not keep.

        A private job that is still live (queued, running or waiting for its tunnel) is not
        restarted: it gets a new tunnel secret, for a new agent to serve it.
        """
        principal, job = own_job(request, job_id)
        if job.state in TERMINAL_STATES or job.state == "waiting_for_credentials":  # it will queue again
            queue_share.check(principal, retry_after=manager.retry_after())
        job, tunnel_secret = manager.resume(principal, job, body)
        return SubmitResponse(job=manager.view(job), tunnel_secret=tunnel_secret)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def delete(request: Request, job_id: JobId) -> dict[str, Any]:
        """Forget a stopped job and remove its directory."""
        principal, job = own_job(request, job_id)
        manager.delete(principal, job)
        return {"ok": True, "deleted": job_id}

    @app.get(
        "/v1/jobs/{job_id}/logs",
        tags=["jobs"],
        response_model=LogPage,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_logs(
        request: Request,
        job_id: JobId,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=4 * 1024 * 1024)] = 1024 * 1024,
        follow: bool = False,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Any:
        """Page the job's log by byte offset, or (``follow=1``) stream it as SSE until the job ends.

        SSE event ids are byte offsets; a reconnect with ``Last-Event-ID`` continues after it.
        """
        _, job = own_job(request, job_id)
        path = manager.job_dir(job.id) / "job.log"
        if not follow:
            data, size = logs.read_page(path, offset, limit)
            return LogPage(
                offset=offset,
                next_offset=offset + len(data),
                data=data.decode("utf-8", errors="replace"),
                eof=offset + len(data) >= size,
                state=job.state,
            )
        if last_event_id is not None:
            if not last_event_id.strip().isdigit():
                raise InputError("Last-Event-ID must be a byte offset (the id of an event this server sent)")
            offset = int(last_event_id.strip())

        def finished() -> str | None:
            if job.id in manager.running:  # in memory: no query per event per follower
                return None
            current = store.find(job.id)
            if current is None:
                return "deleted"
            return current.state if current.state in TERMINAL_STATES else None

        return StreamingResponse(
            logs.follow(path, offset, manager.watch(job.id), finished, poll=manager.follow_poll(job.id)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/jobs/{job_id}/artifacts", tags=["results"], response_model=list[ArtifactInfo])
    async def list_artifacts(request: Request, job_id: JobId) -> list[ArtifactInfo]:
        _, job = own_job(request, job_id)
        root = manager.job_dir(job.id)
        return artifacts.list_artifacts(root) if root.is_dir() else []

    @app.get("/v1/jobs/{job_id}/artifacts/{path:path}", tags=["results"], response_class=FileResponse)
    async def get_artifact(request: Request, job_id: JobId, path: str) -> StreamingResponse:
        """One file of the job directory (e.g. ``out/eval_stats.json``); nothing outside it."""
        _, job = own_job(request, job_id)
        handle, size = artifacts.open_artifact(manager.job_dir(job.id), path)
        return StreamingResponse(
            artifacts.iter_file(handle, size),
            media_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
            headers={"Content-Length": str(size)},
        )

    @app.get("/v1/jobs/{job_id}/results.tar.gz", tags=["results"], response_class=Response)
    async def results_tar(request: Request, job_id: JobId) -> StreamingResponse:
        """The whole job directory as a tar.gz, streamed."""
        _, job = own_job(request, job_id)
        root = manager.job_dir(job.id)
        if not root.is_dir():
            raise NotFoundError(f"job {job.id} has no files")
        return StreamingResponse(
            artifacts.iter_tar_gz(root, job.id),
            media_type="application/gzip",
            headers={"Content-Disposition": f'attachment; filename="{job.id}.tar.gz"'},
        )

    # lm-eval-server's paths (/job, /jobs, /jobs/stop) come before the dashboard's, which must not shadow them.
    app.include_router(
        lmeval_api.create_router(
            manager=manager,
            store=store,
            caller=caller,
            check_queue=lambda principal: queue_share.check(principal, retry_after=manager.retry_after()),
        )
    )
    _mount_dashboard(app, auth=auth, store=store, manager=manager, queue_share=queue_share, data_dir=settings.data_dir)
    return app


def _mount_dashboard(app: FastAPI, **parts: Any) -> None:
    """The web dashboard at ``/`` (``proctor.web``, docs/dashboard.md); the API is not changed."""
    from proctor.web import mount_on_server

    mount_on_server(app, **parts)


def served_app(app: FastAPI) -> ASGIApp:
    """What uvicorn should serve: ``app``, behind the tunnel's fast path when private mode is on.

    The fast path answers facade calls (every model call of a private job) before FastAPI's
    middleware and routing, about a third of the server's CPU per call. Those calls then skip
    the app's metrics middleware, so the facade gets its own, with the same route label.
    """
    hub: TunnelHub | None = getattr(app.state, "tunnel_hub", None)
    if hub is None:
        return app
    metrics: Metrics = app.state.metrics

    def with_metrics(facade: ASGIApp) -> ASGIApp:
        # The route label of facade calls in ``/metrics``, whichever path served them.
        return MetricsMiddleware(facade, metrics=metrics, route_of=lambda _scope: FACADE_ROUTE)

    return hub.wrap_app(app, wrap_facade=with_metrics)


def _attach_tunnel(app: FastAPI, manager: JobManager, auth: Authenticator) -> TunnelHub:
    """Mount the manager's private-mode tunnel: the agents' WebSocket, the job channel and the facade."""
    authenticate: Callable[[str], Principal | None] = auth.from_token
    hub = manager.hub
    if auth.open_mode:
        # Open mode: no token needed; the agent is identified by its IP like every other request.
        def by_host(token: str | None, host: str | None) -> Principal | None:
            return auth.from_token(token) or (Principal(f"ip:{host}") if host else None)

        hub.set_authenticator(by_host, with_client_host=True)
    else:
        hub.set_authenticator(authenticate)
    app.include_router(hub.router)
    app.state.tunnel_hub = hub
    return hub


def dump_openapi(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2)
