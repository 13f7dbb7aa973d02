"""Shared test fixtures: a fake OpenAI server, and running `proctor` as a real subprocess."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pg_kit
import pytest

from proctor.testing import FakeLLMConfig, FakeLLMThread

BACKENDS = ("sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--realmodel",
        action="store_true",
        default=False,
        help="also run tests that need the real small GGUF model and llama-cpp-python",
    )
    parser.addoption(
        "--databases",
        default=",".join(BACKENDS),
        help="job-store back ends the server tests run on (comma-separated: sqlite,postgres)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Give the processes the tests start a Ctrl-C that works, however the suite was started.

    A shell starts a background job (``bash scripts/test.sh &``, CI wrappers) with SIGINT ignored,
    and an ignored signal stays ignored across fork and exec: every ``proctor`` the tests start
    would then ignore the SIGINT the Ctrl-C tests send it. Python's own handler is reset to the
    default at exec, so children get SIGINT back.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that starts a server (it uses ``store_backend``) runs once per job-store back end."""
    if "store_backend" in metafunc.fixturenames:
        chosen = [b.strip() for b in metafunc.config.getoption("--databases").split(",") if b.strip()]
        unknown = set(chosen) - set(BACKENDS)
        if unknown:
            raise pytest.UsageError(f"--databases: unknown back end(s) {sorted(unknown)}; choose from {BACKENDS}")
        only = metafunc.definition.get_closest_marker("store")
        if only is not None:  # @pytest.mark.store("postgres"): a test about one back end
            chosen = [b for b in chosen if b in only.args]
        metafunc.parametrize("store_backend", chosen, indirect=True, scope="module")


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg_kit.PostgresCluster]:
    """One throwaway PostgreSQL per test process (xdist worker), stopped by its handle at the end."""
    reason = pg_kit.missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = pg_kit.PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def store_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The job store of the servers this module's tests start: SQLite, or the throwaway PostgreSQL.

    Parametrized by ``pytest_generate_tests``. The choice travels in an environment variable that
    the server helpers read (``pg_kit.store_url_for``), so helper signatures stay as they were.
    """
    backend = getattr(request, "param", "sqlite")
    with pytest.MonkeyPatch.context() as patch:
        if backend == "postgres":
            cluster = request.getfixturevalue("postgres_cluster")
            patch.setenv(pg_kit.ENV, str(cluster.root))
        else:
            patch.delenv(pg_kit.ENV, raising=False)
        yield backend
