"""One aiohttp session per event loop for the tools' HTTP calls.

Making a client per call is how evaluation harnesses run out of file descriptors at concurrency
64; tools therefore share one session per loop. When the model router exposes its own session
(``ctx.models.session``) tools use that one instead, so all HTTP traffic of a run shares one
connection pool. Otherwise the session lives here until ``close_sessions()`` — which the agent
solver's ``aclose()`` calls at the end of a run (the engine must call ``aclose()`` on solvers and
scorers that have it).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiohttp

__all__ = ["close_sessions", "get_session"]

_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def get_session(models: Any = None) -> aiohttp.ClientSession:
    """The router's session when it has one, else this loop's shared tool session."""
    shared = getattr(models, "session", None)
    if isinstance(shared, aiohttp.ClientSession) and not shared.closed:
        return shared
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        _SESSIONS[loop] = session
    return session


async def close_sessions() -> None:
    """Close the current loop's tool session (safe to call twice, or when none was made)."""
    loop = asyncio.get_running_loop()
    session = _SESSIONS.pop(loop, None)
    if session is not None and not session.closed:
        await session.close()
