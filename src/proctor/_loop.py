"""The one way proctor starts an event loop, and the process settings that go with it.

uvloop (installed with ``uvicorn[standard]``) runs the same asyncio code; where it is missing
(other platforms), plain asyncio does. Long-running proctor processes (a run, the tunnel agent,
the server) also tune the garbage collector: see ``tune_gc``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for an I/O-bound process.

    Each request allocates a few small dicts, most freed at once by reference counting. By
    default the collector still runs every 700 allocations, and each older-generation pass walks
    the ~100k objects made at start-up (pydantic, typer, aiohttp). Freezing those and collecting
    the young generation less often cut the engine's overhead over a bare aiohttp client by
    about a third (bench/overhead.py: 1.54x -> 1.40x at C=512), and the tunnel's CPU per call.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is available, with the collector tuned."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
