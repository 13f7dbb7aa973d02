"""What a replica's transport is: how one attempt of a call reaches the model.

The router chooses one transport per replica when it connects (HTTP, or a proctor server's job
channel for a private role) and its retry loop then calls ``transport.send`` without knowing
which one it holds. Both give the same answers and raise the same exceptions
(:class:`~proctor.models.client.AttemptFailure` and the final ``ModelError`` classes).
"""

from __future__ import annotations

from typing import Protocol

import aiohttp

from proctor.models.types import ChatResult

__all__ = ["Transport"]


class Transport(Protocol):
    """One replica's way to its model."""

    async def send(
        self, data: bytes, sample_id: str | None, timeout: aiohttp.ClientTimeout, *, stream: bool, completions: bool
    ) -> ChatResult:
        """One attempt: ``data`` (the JSON body) to ``/chat/completions`` or ``/completions``."""
        ...

    async def aclose(self) -> None:
        """Release what the transport holds of its own (not the router's session)."""
        ...
