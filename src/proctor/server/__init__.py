"""The job server: submit evaluations, follow their logs, fetch their results.

``create_app(settings)`` builds the FastAPI app; ``serve(settings)`` runs it under uvicorn.
Names are imported lazily: ``proctor run`` (which every server job is) must not pay for FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proctor.server.app import create_app
    from proctor.server.serve import serve
    from proctor.server.settings import CommandTemplate, ServerSettings, load_settings

__all__ = ["CommandTemplate", "ServerSettings", "create_app", "load_settings", "serve"]

_WHERE = {
    "create_app": "proctor.server.app",
    "serve": "proctor.server.serve",
    "CommandTemplate": "proctor.server.settings",
    "ServerSettings": "proctor.server.settings",
    "load_settings": "proctor.server.settings",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'proctor.server' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
