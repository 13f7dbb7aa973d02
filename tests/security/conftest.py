"""Fixtures of the sandbox attacks (``test_sandbox_*.py``); their kit is ``sandbox_kit.py``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import stop_process  # noqa: E402
from sandbox_kit import SecureServer, start_secure_server  # noqa: E402


@pytest.fixture
def secure_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_backend: str) -> Iterator[Any]:
    """Factory: ``secure_server(**config)`` starts a sandboxed server child; stopped at teardown.

    Once per job-store back end (``store_backend``: SQLite, PostgreSQL)."""
    started: list[tuple[Any, SecureServer]] = []

    def make(**config: Any) -> SecureServer:
        proc, server = start_secure_server(tmp_path, len(started), monkeypatch, **config)
        started.append((proc, server))
        return server

    yield make
    for proc, server in started:
        for c in server.clients:
            c.close()
        stop_process(proc)


@pytest.fixture(scope="module")
def shared_secure_server(tmp_path_factory: pytest.TempPathFactory, store_backend: str) -> Iterator[SecureServer]:
    """One default sandboxed server for a whole module (attacks refused at submission)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        proc, server = start_secure_server(tmp_path_factory.mktemp("shared"), 0, monkeypatch)
    try:
        yield server
    finally:
        for c in server.clients:
            c.close()
        stop_process(proc)
