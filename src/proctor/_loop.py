"""The one way proctor starts an event loop.

uvloop (installed with ``uvicorn[standard]``) runs the same asyncio code with less CPU per
I/O event; it matters most for the tunnel agent, which relays every private-mode call. Where it
is missing (other platforms), plain asyncio runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
