"""Fixtures of the server tests; helpers live in server_helpers.py, beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_helpers import make_server  # noqa: E402,F401 - the fixture


@pytest.fixture(autouse=True)
def _every_store(store_backend: str) -> str:
    """Run each server test on every job-store back end (SQLite, PostgreSQL): see tests/conftest.py."""
    return store_backend
