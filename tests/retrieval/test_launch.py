"""Retrieval services launched by proctor: start, reuse, failure with the log's tail, stop, no orphans.

The services are real ``proctor retrieval serve`` processes (over a small BM25 index, so no model
load) started through the real watchdog. Every wait is a bounded poll; no duration is asserted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from helpers import read_jsonl, run_proctor, write_jsonl
from retrieval_support import ORCHESTRA_CORPUS, ServerThread

from proctor.errors import LaunchError
from proctor.models.launch import launched_servers, retrieval_services
from proctor.retrieval.config import RetrievalLaunch
from proctor.retrieval.corpus import load_corpus
from proctor.retrieval.index import build_index
from proctor.retrieval.service import ServiceSettings, create_app
from proctor.testing import FakeLLMConfig, FakeLLMThread

LOG = logging.getLogger("test.retrieval.launch")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, attempts: int = 600, step: float = 0.05) -> bool:
    for _ in range(attempts):
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return bool(json.load(resp).get("ok"))
    except OSError:
        return False


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("launch") / "idx"
    build_index(load_corpus(ORCHESTRA_CORPUS), out, kinds=("bm25",))
    return out


def ensure(service: RetrievalLaunch, tmp_path: Path, during: Callable[[], None]) -> None:
    async def go() -> None:
        async with launched_servers({}, run_dir=tmp_path, base_dir=tmp_path, log=LOG, services=[service]):
            await asyncio.to_thread(during)

    asyncio.run(go())


def test_starts_waits_for_health_and_stops_on_exit(
    bm25_index: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    service = RetrievalLaunch(kind="retrieval", index=str(bm25_index), port=port)
    seen: dict[str, object] = {}
    # Only the processes this launch starts: the watchdog it spawns and that one's descendants.
    # Session fixtures of the same worker (a test Ray, a PostgreSQL cluster) have children of
    # their own that outlive this test and may start new ones (Ray workers, autovacuum) during it.
    before = {p.pid for p in psutil.Process().children()}

    def during() -> None:
        seen["ready"] = ready(port)
        body = json.dumps({"queries": ["Eiffel Tower"], "topk": 1}).encode()
        request = urllib.request.Request(service.url, body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            seen["hits"] = json.load(resp)
        started = [p for p in psutil.Process().children() if p.pid not in before]
        seen["pids"] = [p.pid for top in started for p in (top, *top.children(recursive=True))]

    with caplog.at_level(logging.INFO, logger=LOG.name):
        ensure(service, tmp_path, during)
    assert seen["ready"] is True
    assert seen["pids"], "the service's processes were not seen: the check below would prove nothing"
    assert seen["hits"][0][0]["document"]["id"] == "eiffel"  # type: ignore[index]
    assert "starting the retrieval service" in caplog.text and "retrieval server of role" in caplog.text
    assert "healthy after" in caplog.text and "stopped the server" in caplog.text
    assert not listening(port)
    assert wait_until(
        lambda: (
            not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in seen["pids"])
        )
    )  # type: ignore[attr-defined]


def test_reuses_a_healthy_service_and_leaves_it_running(
    bm25_index: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ServerThread(create_app(ServiceSettings(index_dir=bm25_index, web=None)), ready_path="/health") as own:
        service = RetrievalLaunch(kind="retrieval", index="does-not-matter", port=own.port)
        with caplog.at_level(logging.INFO, logger=LOG.name):
            ensure(service, tmp_path, lambda: None)
        assert "reusing the healthy retrieval service" in caplog.text
        assert "starting" not in caplog.text
        assert ready(own.port)


def test_a_service_that_fails_is_named_with_its_logs_tail(bm25_index: Path, tmp_path: Path) -> None:
    service = RetrievalLaunch(kind="retrieval", index=str(bm25_index), port=free_port(), extra_args=["--mode", "bogus"])
    with pytest.raises(LaunchError) as err:
        ensure(service, tmp_path, lambda: None)
    message = str(err.value)
    assert "retrieval server for role" in message and "exited with status 2 before answering /health" in message
    assert "| Error: unknown --mode 'bogus'" in message
    missing = RetrievalLaunch(kind="retrieval", index="no-such-index", port=free_port())
    with pytest.raises(LaunchError, match="retrieval index .*no-such-index does not exist"):
        ensure(missing, tmp_path, lambda: None)


def test_launch_blocks_are_found_anywhere_in_the_solver_options() -> None:
    block = {"kind": "retrieval", "index": "idx", "port": 8106}
    solver = {"type": "agent", "tools": [
        {"type": "retrieve", "launch": block},
        {"type": "ask_expert", "retrieve": {"launch": block, "topk": 2}},
    ]}  # fmt: skip
    assert retrieval_services(solver) == [RetrievalLaunch(**block)]  # type: ignore[arg-type]


_HOLDER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from proctor.models.launch import launched_servers
    from proctor.retrieval.config import RetrievalLaunch

    tmp, port, index = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    logging.basicConfig(level=logging.INFO, filename=tmp / "holder.log", format="%(message)s")

    async def main():
        service = RetrievalLaunch(kind="retrieval", index=index, port=port)
        async with launched_servers({}, run_dir=tmp, base_dir=tmp, services=[service]):
            (tmp / "ready").write_text("1")
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "ctrl-c"])
def test_no_orphan_service_when_proctor_is_killed_or_interrupted(
    bm25_index: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(port), str(bm25_index)])
    try:
        assert wait_until(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, attempts=1200)
        assert proc.poll() is None and ready(port)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert descendants
        proc.send_signal(sig)
        proc.wait(timeout=30)
        # Design target: gone within 5 s of proctor; this bounded wait is a safety net, not a timing assertion.
        assert wait_until(
            lambda: (
                not listening(port)
                and not any(d.is_running() and d.status() != psutil.STATUS_ZOMBIE for d in descendants)
            )
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert "stopped the server of role 'retrieval-" in (tmp_path / "holder.log").read_text()
    else:
        assert "proctor closed the lifeline" in (tmp_path / f"launch-retrieval-{port}.log").read_text()


def test_proctor_run_launches_the_service_for_a_retrieve_tool(bm25_index: Path, tmp_path: Path) -> None:
    port = free_port()
    script = [
        {"tool_calls": [{"name": "retrieve", "arguments": {"query": "Eiffel Tower completed"}}]},
        {"tool_calls": [{"name": "answer", "arguments": {"answer": "1889"}}]},
    ]
    write_jsonl(
        tmp_path / "data.jsonl", [{"id": "q1", "question": "When was the Eiffel Tower completed?", "answer": "1889"}]
    )
    with FakeLLMThread(FakeLLMConfig(model="orch", script=script)) as llm:
        (tmp_path / "spec.yaml").write_text(
            textwrap.dedent(f"""
            name: launch-retrieval
            dataset: {{path: data.jsonl, fields: {{id: id, input: question, target: answer}}}}
            models:
              subject: {{base_url: "{llm.base_url}", model: orch}}
            solver:
              type: agent
              tools:
                - {{type: retrieve, topk: 1, launch: {{kind: retrieval, index: "{bm25_index}", port: {port}}}}}
                - answer
            scorer: exact
            """)
        )
        dry = run_proctor("run", tmp_path / "spec.yaml", "--dry-run", timeout=120)
        assert f"retrieval service http://127.0.0.1:{port}/retrieve: not running" in dry.stdout
        assert "would start:" in dry.stdout and "retrieval serve" in dry.stdout
        result = run_proctor(
            "run", tmp_path / "spec.yaml", "--out", tmp_path / "run", "--progress", "none", timeout=180
        )
    assert result.returncode == 0, result.stdout + result.stderr
    trajectory = read_jsonl(tmp_path / "run" / "traj_log_all.jsonl")[0]
    assert "(id=eiffel)" in json.dumps(trajectory)
    run_log = (tmp_path / "run" / "run.log").read_text()
    assert "starting the retrieval service" in run_log and "stopped the server of role 'retrieval-" in run_log
    assert not listening(port)


def test_an_index_is_built_from_its_corpus_once_and_again_when_the_corpus_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(ORCHESTRA_CORPUS.read_text())
    service = RetrievalLaunch(
        kind="retrieval", index="idx", corpus="corpus.jsonl", index_args=["--bm25", "--no-dense"], port=free_port()
    )
    with caplog.at_level(logging.INFO, logger=LOG.name):
        ensure(service, tmp_path, lambda: None)
        assert "building the retrieval index" in caplog.text and (tmp_path / "idx" / "manifest.json").is_file()
        caplog.clear()
        ensure(service, tmp_path, lambda: None)
        assert "building" not in caplog.text and "starting the retrieval service" in caplog.text
        with corpus.open("a") as fh:
            fh.write(json.dumps({"id": "new", "content": "A new document."}) + "\n")
        ensure(service, tmp_path, lambda: None)
        assert "building the retrieval index" in caplog.text
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["documents"] == 13


def test_a_service_still_loading_is_waited_for_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Someone else's service answers 503 "loading" a few times, then "ready": proctor waits, starts nothing."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    probes: list[int] = []

    @app.get("/health")
    async def health() -> JSONResponse:
        probes.append(1)
        if len(probes) < 4:
            return JSONResponse({"ok": False, "status": "loading", "seconds": len(probes)}, status_code=503)
        return JSONResponse({"ok": True, "status": "ready", "documents": 12, "mode": "bm25"})

    with ServerThread(app) as other:
        service = RetrievalLaunch(kind="retrieval", index="unused", port=other.port)
        with caplog.at_level(logging.INFO, logger=LOG.name):
            ensure(service, tmp_path, lambda: None)
    assert "is loading the model and index" in caplog.text and "reusing the healthy retrieval service" in caplog.text
    assert len(probes) == 4 and not list(tmp_path.glob("launch-*.log"))
