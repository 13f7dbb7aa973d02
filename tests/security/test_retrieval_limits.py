"""Attacks on the retrieval service: oversized requests get a 4xx in the error shape; loopback by default."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from retrieval_support import ORCHESTRA_CORPUS, ServerThread

pytest.importorskip("bm25s", reason="the retrieval extra is not installed")

from proctor.retrieval.corpus import load_corpus  # noqa: E402
from proctor.retrieval.index import build_index  # noqa: E402
from proctor.retrieval.service import ServiceSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sec") / "idx"
    build_index(load_corpus(ORCHESTRA_CORPUS), out, kinds=("bm25",))
    return out


@pytest.fixture(scope="module")
def url(bm25_index: Path) -> Iterator[str]:
    settings = ServiceSettings(
        index_dir=bm25_index, port=0, web=None, max_queries=8, max_query_chars=200, max_topk=20, max_body_bytes=4096
    )
    with ServerThread(create_app(settings), ready_path="/health") as srv:
        yield srv.url + "/retrieve"


def _refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and body["status"] == status and words in body["error"]


def test_too_many_queries_in_one_request(url: str) -> None:
    _refused(httpx.post(url, json={"queries": ["a"] * 9}), 400, "9 queries in one request; at most 8")


def test_a_query_that_is_too_long(url: str) -> None:
    _refused(httpx.post(url, json={"queries": ["x" * 201]}), 400, "query 0 has 201 characters; at most 200")


@pytest.mark.parametrize(
    ("topk", "status", "words"), [(21, 400, "topk 21 is over the limit of 20"), (0, 422, "topk"), ("many", 422, "topk")]
)
def test_bad_topk(url: str, topk: object, status: int, words: str) -> None:
    _refused(httpx.post(url, json={"queries": ["a"], "topk": topk}), status, words)


def test_an_oversized_body_is_refused_before_parsing(url: str) -> None:
    _refused(httpx.post(url, json={"queries": ["a" * 5000]}), 413, "request body over 4096 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"queries": ["'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"]}'

    response = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and response.json()["ok"] is False


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"topk": 3}',
        b'{"queries": [], "topk": 3}',
        b'{"queries": ["a"], "query": "b"}',
        b'{"queries": [1, 2]}',
    ],
    ids=["not-json", "no-query", "empty", "both-forms", "not-strings"],
)
def test_malformed_requests_get_a_4xx_in_the_error_shape(url: str, body: bytes) -> None:
    response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422) and response.json()["ok"] is False


def test_serve_binds_loopback_by_default(bm25_index: Path, tmp_path: Path) -> None:
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proctor", "retrieval", "serve", str(bm25_index), "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        listening: list[str] = []
        deadline = time.monotonic() + 60
        while not listening and time.monotonic() < deadline and proc.poll() is None:
            listening = [
                c.laddr.ip
                for c in psutil.Process(proc.pid).net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
            time.sleep(0.1)
        assert listening == ["127.0.0.1"], (tmp_path / "serve.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
