"""Shared test fixtures: a fake OpenAI server, and running `proctor` as a real subprocess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proctor.testing import FakeLLMConfig, FakeLLMThread


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--realmodel", action="store_true", default=False,
                     help="also run tests that need the real small GGUF model and llama-cpp-python")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--realmodel"):
        return
    skip = pytest.mark.skip(reason="needs the real model: run with --realmodel")
    for item in items:
        if "realmodel" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMThread]:
    """A fake OpenAI server in a thread, answering arithmetic, on an ephemeral loopback port."""
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        yield llm
