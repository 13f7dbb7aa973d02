"""Fixtures for tunnel tests (helpers live in ``tunnelkit``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tunnel.tunnelkit import HubServer


@pytest.fixture
def hub_server() -> Iterator[Callable[..., HubServer]]:
    """Factory: ``hub_server(grace=0.2, ...)`` starts a server; all are stopped after the test."""
    started: list[HubServer] = []

    def make(**options: Any) -> HubServer:
        server = HubServer(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
