"""The dashboard's routes: every page as HTML and, at the same URL plus ``.json``, as JSON.

``web_router(source, gate, cache_dir)`` is mounted at ``/`` by ``proctor serve`` and by
``proctor view``. Pages read run directories off the event loop (a thread), never block the API.
Errors: a ``.json`` twin answers in the server's one error shape; a page answers an HTML page
with the same status, or a redirect to the login form when nobody is logged in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from proctor.errors import AuthenticationError, InputError, NotFoundError, PermissionDeniedError, ProctorError
from proctor.server.frontdoor import error_response
from proctor.web import pages
from proctor.web.analysis_cache import AnalysisCache
from proctor.web.gate import Gate, Viewer
from proctor.web.render import STATIC_DIR, Templates
from proctor.web.rundata import RunData, SampleFilter
from proctor.web.session import COOKIE_NAME, csrf_ok
from proctor.web.source import JobInfo, JobSource

MAX_FORM_BYTES = 16 * 1024
ACTIONS = ("cancel", "resume", "delete")
SECURITY_HEADERS = {
    # No inline script or style, nothing from elsewhere: every asset ships in the package.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme) may be redirected to after login."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


async def form_fields(request: Request) -> dict[str, str]:
    """A small urlencoded form (login, logout, the action buttons): first value of each field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InputError(f"a form of the dashboard is at most {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=16)
    except ValueError:
        raise InputError("a form of the dashboard has at most 16 fields") from None
    return {k: v[0] for k, v in fields.items()}


def web_router(source: JobSource, gate: Gate, cache_dir: Path) -> APIRouter:
    """The pages (see docs/dashboard.md) over ``source``; ``gate`` says who is looking."""
    router = APIRouter(include_in_schema=False)
    templates = Templates()
    analyses = AnalysisCache(cache_dir)

    def set_cookie(response: Response, request: Request, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=gate.cookie_max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def html(name: str, request: Request, viewer: Viewer | None, status: int = 200, **context: Any) -> HTMLResponse:
        body = templates.render(
            name,
            viewer=viewer,
            csrf=viewer.session.csrf if viewer and viewer.session else None,
            login_needed=gate.login_needed,
            read_only=source.read_only,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def failure(request: Request, exc: ProctorError, as_json: bool, viewer: Viewer | None) -> Response:
        if isinstance(exc, AuthenticationError) and not as_json and gate.login_needed:
            return RedirectResponse(f"/login?next={quote(str(request.url.path))}", status_code=303)
        if as_json:
            return error_response(exc.http_status, exc.message, hint=exc.hint)
        return html("error.html", request, viewer, status=exc.http_status, message=exc.message, hint=exc.hint)

    async def page(
        request: Request, template: str, as_json: bool, build: Callable[[Viewer], dict[str, Any]], **extra: Any
    ) -> Response:
        viewer: Viewer | None = None
        try:
            viewer = gate.viewer(request)
            data = await run_in_threadpool(build, viewer)
        except ProctorError as exc:
            return failure(request, exc, as_json, viewer)
        response: Response
        if as_json:
            response = JSONResponse(data)
        else:
            response = html(template, request, viewer, data=data, **extra)
        if viewer.new_cookie:
            set_cookie(response, request, viewer.new_cookie)
        return response

    def job_of(viewer: Viewer, job_id: str) -> JobInfo:
        job = source.get(viewer.principal, job_id)
        if job is None:  # unknown, or another user's: the same answer
            raise NotFoundError("not found")
        return job

    # -- login -------------------------------------------------------------------------------------

    @router.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return error_response(404, "not found")  # type: ignore[return-value]
        return FileResponse(path, headers={"Cache-Control": "max-age=300"})

    @router.get("/login")
    async def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
        return html("login.html", request, None, next=_safe_next(next), error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        try:
            form = await form_fields(request)
        except ProctorError as exc:
            return failure(request, exc, False, None)
        token, next = form.get("token", ""), form.get("next", "/")  # noqa: A001
        cookie = await run_in_threadpool(gate.login, token.strip())
        if cookie is None:
            return html("login.html", request, None, status=401, next=_safe_next(next), error="the token is not valid")
        response = RedirectResponse(_safe_next(next), status_code=303)
        set_cookie(response, request, cookie)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        try:
            viewer: Viewer | None = gate.viewer(request)
            csrf = (await form_fields(request)).get("csrf")
        except ProctorError:
            viewer, csrf = None, None
        if viewer is None or not csrf_ok(viewer.session, csrf):
            return html("error.html", request, viewer, status=403, message="the form has expired", hint="reload it")
        gate.logout(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    # -- jobs --------------------------------------------------------------------------------------

    def jobs(viewer: Viewer) -> dict[str, Any]:
        return pages.jobs_page(source.list_jobs(viewer.principal))

    @router.get("/jobs.json")
    async def jobs_json(request: Request) -> Response:
        return await page(request, "jobs.html", True, jobs)

    # The list is at ``/``: on ``proctor serve``, ``GET /jobs`` is lm-eval-server's API (lmeval_api.py).
    @router.get("/")
    async def jobs_html(request: Request) -> Response:
        return await page(request, "jobs.html", False, jobs)

    # Routes ending in .json come before their HTML twins: ``{job_id}`` alone would match "x.json".
    @router.get("/jobs/{job_id}.json")
    async def job_json(request: Request, job_id: str) -> Response:
        return await page(request, "job.html", True, lambda v: pages.job_page(job_of(v, job_id)))

    @router.get("/jobs/{job_id}")
    async def job_html(request: Request, job_id: str) -> Response:
        return await page(request, "job.html", False, lambda v: pages.job_page(job_of(v, job_id)))

    # -- samples -----------------------------------------------------------------------------------

    @router.get("/jobs/{job_id}/samples.json")
    @router.get("/jobs/{job_id}/samples")
    async def samples_view(
        request: Request,
        job_id: str,
        state: Annotated[str | None, Query(max_length=32)] = None,
        score: Annotated[str | None, Query(pattern="^(correct|wrong|none)?$")] = None,
        category: Annotated[str | None, Query(max_length=256)] = None,
        error_class: Annotated[str | None, Query(max_length=64)] = None,
        q: Annotated[str | None, Query(max_length=256)] = None,
        page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
    ) -> Response:
        flt = SampleFilter(state=state, score=score, category=category, error_class=error_class, q=q)
        as_json = request.url.path.endswith(".json")
        return await page(
            request, "samples.html", as_json, lambda v: pages.samples_page(job_of(v, job_id), flt, page_no)
        )

    @router.get("/jobs/{job_id}/samples/{sample_id:path}")
    async def sample_view(request: Request, job_id: str, sample_id: str) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            job = job_of(viewer, job_id)
            data = RunData(job.run_dir)
            found = data.sample(sample_id)
            if found is None and sample_id.endswith(".json"):
                found = data.sample(sample_id.removesuffix(".json"))
                if found is not None:
                    request.state.as_json = True
            if found is None:
                raise NotFoundError("not found")
            return pages.sample_page(job, found)

        request.state.as_json = False
        try:
            viewer = gate.viewer(request)
            data = await run_in_threadpool(build, viewer)
        except ProctorError as exc:
            return failure(request, exc, sample_id.endswith(".json"), None)
        if request.state.as_json:
            return JSONResponse(data)
        return html("sample.html", request, viewer, data=data)

    # -- analysis ----------------------------------------------------------------------------------

    def analysis(job_id: str) -> Callable[[Viewer], dict[str, Any]]:
        def build(viewer: Viewer) -> dict[str, Any]:
            job = job_of(viewer, job_id)
            try:
                result = analyses.analysis(job.run_dir)
            except InputError as exc:
                return pages.analysis_page(job, None, exc.message)
            return pages.analysis_page(job, result, None)

        return build

    @router.get("/jobs/{job_id}/analysis.json")
    async def analysis_json(request: Request, job_id: str) -> Response:
        return await page(request, "analysis.html", True, analysis(job_id))

    @router.get("/jobs/{job_id}/analysis")
    async def analysis_html(request: Request, job_id: str, fragment: bool = False) -> Response:
        template = "analysis_tables.html" if fragment else "analysis.html"
        return await page(request, template, False, analysis(job_id))

    @router.get("/jobs/{job_id}/plots.json")
    async def plots_json(request: Request, job_id: str) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            job = job_of(viewer, job_id)
            try:
                names = analyses.plots(job.id, job.run_dir)
            except InputError as exc:
                return {"ok": True, "plots": [], "problem": exc.message}
            return {"ok": True, "plots": [f"/jobs/{job.id}/plots/{n}" for n in names], "problem": None}

        return await page(request, "", True, build)

    @router.get("/jobs/{job_id}/plots/{name}")
    async def plot(request: Request, job_id: str, name: str) -> Response:
        try:
            viewer = gate.viewer(request)
            job = await run_in_threadpool(job_of, viewer, job_id)
            path = analyses.plot_path(job.id, job.run_dir, name)
        except ProctorError as exc:
            return failure(request, exc, True, None)
        return FileResponse(path, media_type="image/png")

    # -- live log (SSE, with the session cookie) -----------------------------------------------------

    @router.get("/jobs/{job_id}/log")
    async def log_stream(
        request: Request,
        job_id: str,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        try:
            viewer = gate.viewer(request)
            job = await run_in_threadpool(job_of, viewer, job_id)
            offset = 0
            if last_event_id is not None:
                if not last_event_id.strip().isdigit():
                    raise InputError("Last-Event-ID must be a byte offset (the id of an event this server sent)")
                offset = int(last_event_id.strip())
            if job.log_path is None:
                raise NotFoundError("not found")
        except ProctorError as exc:
            return failure(request, exc, True, None)
        return StreamingResponse(
            source.follow_log(job, offset),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- actions (POST forms with the session's CSRF token) ----------------------------------------

    @router.post("/jobs/{job_id}/{action}")
    async def act(request: Request, job_id: str, action: str) -> Response:
        viewer: Viewer | None = None
        try:
            viewer = gate.viewer(request)
            csrf = (await form_fields(request)).get("csrf")
            if source.read_only:
                raise PermissionDeniedError("this dashboard is read-only")
            if not csrf_ok(viewer.session, csrf):
                raise PermissionDeniedError("the form has expired or did not come from this dashboard: reload it")
            job = await run_in_threadpool(job_of, viewer, job_id)
            if action not in ACTIONS:
                raise NotFoundError("not found")
            if action not in job.actions:
                raise InputError(f"cannot {action} a job that is {job.state}")
            await source.act(viewer.principal, job, action)
        except ProctorError as exc:
            return failure(request, exc, False, viewer)
        target = "/" if action == "delete" else f"/jobs/{quote(job_id)}"
        return RedirectResponse(target, status_code=303)

    return router
