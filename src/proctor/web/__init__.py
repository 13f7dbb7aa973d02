"""The web dashboard: jobs, a job, its samples and their trajectories, as HTML pages with JSON twins.

Mounted at ``/`` of ``proctor serve`` (``mount_on_server``) and served on its own by
``proctor view RUN_DIR...`` for local runs (read-only). Server-rendered with Jinja2 and a little
plain JavaScript; every template and asset ships in this package (docs/dashboard.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI


def mount_on_server(app: FastAPI, *, auth: Any, store: Any, manager: Any, queue_share: Any, data_dir: Path) -> None:
    """Add the dashboard to the job server's app (the API's routes are untouched)."""
    from proctor.server.web_sessions import StoredSessions
    from proctor.web.gate import ServerGate
    from proctor.web.routes import web_router
    from proctor.web.server_source import ServerSource

    source = ServerSource(store, manager, queue_share)
    sessions = StoredSessions(store)  # in the job store: kept over a restart, shared by a fleet
    app.include_router(web_router(source, ServerGate(auth, sessions), data_dir / "web-cache"))


def local_app(run_dirs: list[Path]) -> FastAPI:
    """``proctor view``: the same pages over local run directories, read-only, no login."""
    from fastapi import FastAPI

    from proctor import __version__
    from proctor.web.gate import LocalGate
    from proctor.web.routes import web_router
    from proctor.web.source import LocalSource

    source = LocalSource(run_dirs)
    cache = Path(tempfile.mkdtemp(prefix="proctor-view-"))
    app = FastAPI(title="proctor view", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.cache_dir = cache
    app.include_router(web_router(source, LocalGate(), cache))
    return app
