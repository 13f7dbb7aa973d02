"""The retrieval service: ``create_app(settings)`` builds it, ``serve(settings)`` runs it.

Routes:

- ``POST /retrieve``: ToolOrchestra's request ``{"queries": [...], "topk": k, "return_scores":
  true, "eid": ...}`` answered in its shape, one list per query of ``{"document": {"id",
  "content"}, "score", "source"}``; or the simpler ``{"query": "...", "topk": k}`` answered as
  ``{"results": [...], "notes": [...]}``. Notes (e.g. "no web fallback: $TAVILY_API_KEY is not
  set") also travel in the ``X-Retrieval-Notes`` header, since the list shape has no room for them.
- ``GET /health``: 503 ``{"ok": false, "status": "loading"}`` until the model and the index are
  loaded (that happens after the port is open, so a launcher can tell "loading" from "down"),
  then 200 with the index's description.
- ``GET /metrics``: Prometheus text. ``/docs`` and ``/openapi.json``: FastAPI's.

Requests are bounded (queries per request, characters per query, ``topk``, body bytes) and
refused with a 4xx in proctor's error shape ``{"ok": false, "error", "status"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from proctor import __version__
from proctor._validation import problems
from proctor.errors import InputError, ProctorError
from proctor.retrieval.batcher import MicroBatcher
from proctor.retrieval.encoder import Encoder
from proctor.retrieval.index import Hit, SearchIndex
from proctor.retrieval.web import FallbackRule, TavilyClient, WebError, needs_fallback

__all__ = ["RetrieveRequest", "ServiceSettings", "create_app", "serve"]

log = logging.getLogger("proctor.retrieval")


@dataclass(slots=True)
class ServiceSettings:
    """Everything ``proctor retrieval serve`` can be told; defaults are the documented ones."""

    index_dir: Path
    host: str = "127.0.0.1"
    port: int = 8001
    mode: str | None = None
    """``dense``, ``bm25`` or ``hybrid``; by default hybrid when the index has both, else its kind."""
    max_batch: int = 64
    """Queries per encode+search call; 1 turns micro-batching off (one query at a time)."""
    max_queries: int = 64
    max_query_chars: int = 4096
    max_topk: int = 100
    max_body_bytes: int = 1 << 20
    rule: FallbackRule = field(default_factory=FallbackRule)
    web: TavilyClient | None = field(default_factory=TavilyClient)
    """``None`` turns the web fallback off."""
    eid_file: Path | None = None
    """JSON object ``{eid: [document ids]}``: a request carrying that ``eid`` searches only those."""
    encoder: Encoder | None = None
    """An already loaded encoder to share (tests, embedders); by default the asset is loaded."""


class RetrieveRequest(BaseModel):
    """ToolOrchestra's request (``queries``) or the simple one (``query``)."""

    model_config = ConfigDict(extra="ignore")

    queries: list[str] | None = None
    query: str | None = None
    topk: int = Field(default=3, ge=1)
    return_scores: bool = True
    eid: str | int | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message, "status": status}, status_code=status)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise InputError(f"request body over {self.limit} bytes")
            return message

        await self.app(scope, bounded, send)


class _State:
    """What the app holds: loaded lazily in a thread so ``/health`` can answer "loading"."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        self.loaded_after: float | None = None
        self.error: str | None = None
        self.index: SearchIndex | None = None
        self.batcher: MicroBatcher | None = None
        self.mode = ""
        self.allow: dict[str, list[int]] = {}
        self.counters = {"requests": 0, "queries": 0, "fallbacks": 0, "web_failures": 0, "refused": 0}
        self.session: aiohttp.ClientSession | None = None

    def load(self) -> None:
        try:
            index = SearchIndex(self.settings.index_dir, encoder=self.settings.encoder)
            kinds = index.kinds
            mode = self.settings.mode or ("hybrid" if len(kinds) == 2 else kinds[0])
            if mode == "hybrid" and len(kinds) != 2 or mode in ("dense", "bm25") and mode not in kinds:
                raise InputError(
                    f"search mode {mode!r} needs a {mode} index; {self.settings.index_dir} has: {', '.join(kinds)}"
                )
            if self.settings.eid_file is not None:
                self.allow = _read_allow_list(self.settings.eid_file, index)
            if index.encoder is not None:
                index.encoder.encode(["warm up"])  # the first forward pass pays for lazy setup
            self.mode = mode
            self.index = index
            self.batcher = MicroBatcher(index, mode=mode, max_batch=self.settings.max_batch)
            self.batcher.start()
            self.loaded_after = time.monotonic() - self.started
            log.info(
                "retrieval index %s loaded in %.1f s (%d documents, %s)",
                self.settings.index_dir,
                self.loaded_after,
                len(index.documents),
                mode,
            )
        except ProctorError as exc:
            self.error = exc.message
            log.error("cannot load the index: %s", exc.message)
        except Exception as exc:  # a damaged index file: report it on /health, keep the traceback in the log
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("cannot load the index")


def _read_allow_list(path: Path, index: SearchIndex) -> dict[str, list[int]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the eid allow-list {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object mapping each eid to a list of document ids")
    allow: dict[str, list[int]] = {}
    for eid, ids in data.items():
        if not isinstance(ids, list):
            raise InputError(f"{path}: eid {eid!r} must map to a list of document ids")
        unknown = [str(i) for i in ids if str(i) not in index.position]
        if unknown:
            raise InputError(
                f"{path}: eid {eid!r} names {len(unknown)} unknown document id(s): {', '.join(unknown[:5])}"
            )
        allow[str(eid)] = [index.position[str(i)] for i in ids]
    return allow


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for ``settings``; the index loads (in a thread) when the app starts."""
    state = _State(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.session = aiohttp.ClientSession()
        loader = threading.Thread(target=state.load, name="retrieval-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await state.session.close()
            if state.batcher is not None:
                await asyncio.to_thread(state.batcher.close)

    app = FastAPI(
        title="proctor retrieval service",
        version=__version__,
        description="Dense (MiniLM + faiss), BM25 or hybrid retrieval, micro-batched, with a web fallback.",
        lifespan=lifespan,
    )
    app.state.retrieval = state

    @app.exception_handler(ProctorError)
    async def _proctor_error(_request: Request, exc: ProctorError) -> JSONResponse:
        state.counters["refused"] += 1
        return _error(exc.http_status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        state.counters["refused"] += 1
        # The message names fields, never echoes values (a query may be long or private).
        return _error(422, f"invalid request: {problems(exc.errors())}")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the model and index are loaded; 503 while loading (or if loading failed)."""
        if state.error is not None:
            return JSONResponse({"ok": False, "status": "failed", "error": state.error}, status_code=503)
        if state.index is None:
            return JSONResponse(
                {"ok": False, "status": "loading", "seconds": round(time.monotonic() - state.started, 1)},
                status_code=503,
            )
        return JSONResponse(
            {
                "ok": True,
                "status": "ready",
                "documents": len(state.index.documents),
                "mode": state.mode,
                "kinds": state.index.kinds,
                "loaded_after_s": round(state.loaded_after or 0.0, 3),
                "web_fallback": settings.web is not None and settings.web.key() is not None,
            }
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        """Prometheus text: requests, queries, batches, fallbacks."""
        lines = [f"proctor_retrieval_ready {int(state.index is not None)}"]
        lines += [f"proctor_retrieval_{name}_total {value}" for name, value in state.counters.items()]
        if state.batcher is not None:
            stats = state.batcher.stats
            lines += [
                f"proctor_retrieval_batches_total {stats.batches}",
                f"proctor_retrieval_batched_queries_total {stats.queries}",
                f"proctor_retrieval_failed_queries_total {stats.failed}",
                f"proctor_retrieval_largest_batch {stats.largest}",
                f"proctor_retrieval_busy_seconds_total {stats.busy_seconds:.6f}",
            ]
        return "\n".join(lines) + "\n"

    @app.post("/retrieve", response_model=None)
    async def retrieve(body: RetrieveRequest) -> JSONResponse:
        """Search the index for each query; fall back to the web when the local hits are thin."""
        if state.index is None or state.batcher is None:
            return _error(
                503, "the index is still loading" if state.error is None else f"the index failed to load: {state.error}"
            )
        if (body.queries is None) == (body.query is None):
            raise InputError("give either 'queries' (a list) or 'query' (one string)")
        queries = body.queries if body.queries is not None else [body.query or ""]
        if not queries:
            raise InputError("'queries' is empty")
        if len(queries) > settings.max_queries:
            raise InputError(f"{len(queries)} queries in one request; at most {settings.max_queries}")
        if body.topk > settings.max_topk:
            raise InputError(f"topk {body.topk} is over the limit of {settings.max_topk}")
        for n, q in enumerate(queries):
            if len(q) > settings.max_query_chars:
                raise InputError(f"query {n} has {len(q)} characters; at most {settings.max_query_chars}")
        allowed = state.allow.get(str(body.eid)) if body.eid is not None else None
        state.counters["requests"] += 1
        state.counters["queries"] += len(queries)
        notes: list[str] = []
        answers = await asyncio.gather(
            *(_answer(state, q, body.topk, allowed, notes) for q in queries), return_exceptions=True
        )
        failed = [(n, a) for n, a in enumerate(answers) if isinstance(a, BaseException)]
        if failed:
            n, exc = failed[0]
            return _error(400, f"query {n} could not be searched: {type(exc).__name__}: {str(exc)[:200]}")
        results = [a for a in answers if not isinstance(a, BaseException)]
        if not body.return_scores:
            results = [[{k: v for k, v in h.items() if k != "score"} for h in hits] for hits in results]
        headers = {"X-Retrieval-Notes": json.dumps(sorted(set(notes)))} if notes else {}
        if body.query is not None:
            return JSONResponse({"results": results[0], "notes": sorted(set(notes))}, headers=headers)
        return JSONResponse(results, headers=headers)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _local(index: SearchIndex, hits: list[Hit]) -> list[dict[str, Any]]:
    out = []
    for hit in hits:
        doc = index.documents[hit.index]
        out.append(
            {"document": {"id": doc["id"], "content": doc["content"]}, "score": round(hit.score, 6), "source": "local"}
        )
    return out


async def _answer(
    state: _State, query: str, topk: int, allowed: list[int] | None, notes: list[str]
) -> list[dict[str, Any]]:
    """Local hits from the batch worker, then (on the event loop, off the worker) the web if needed."""
    assert state.batcher is not None and state.index is not None
    hits = _local(state.index, await state.batcher.search(query, topk, allowed))
    web = state.settings.web
    if web is None or not needs_fallback(state.settings.rule, hits, state.mode):
        return hits
    if web.key() is None:
        notes.append(f"no web fallback: ${web.key_env} is not set")
        return hits
    state.counters["fallbacks"] += 1
    assert state.session is not None
    try:
        return hits + await web.search(state.session, query)
    except WebError as exc:
        state.counters["web_failures"] += 1
        notes.append(str(exc))
        return hits


def serve(settings: ServiceSettings) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    app = create_app(settings)
    log.info("retrieval service on http://%s:%d (index %s)", settings.host, settings.port, settings.index_dir)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
