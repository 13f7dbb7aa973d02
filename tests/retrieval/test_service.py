"""The retrieval service over real HTTP: shapes, web fallback off the batch worker, allow-lists."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from retrieval_support import FakeTavily, ServerThread

from proctor.retrieval.encoder import Encoder
from proctor.retrieval.service import ServiceSettings, create_app
from proctor.retrieval.web import FallbackRule, TavilyClient

KEY_ENV = "PROCTOR_TEST_TAVILY_KEY"
SECRET = "tvly-test-secret-0123456789"


@pytest.fixture
def tavily() -> Iterator[tuple[FakeTavily, ServerThread]]:
    fake = FakeTavily()
    with ServerThread(fake.app) as server:
        yield fake, server
    fake.release.set()


def service(index_dir: Path, encoder: Encoder, **kw: Any) -> ServerThread:
    settings = ServiceSettings(index_dir=index_dir, port=0, encoder=encoder, **kw)
    return ServerThread(create_app(settings), ready_path="/health")


def test_toolorchestra_shape_simple_form_health_and_metrics(index_dir: Path, encoder: Encoder) -> None:
    with service(index_dir, encoder, mode="dense", web=None) as srv:
        health = httpx.get(srv.url + "/health").json()
        assert health["ok"] and health["status"] == "ready" and health["documents"] == 52
        r = httpx.post(
            srv.url + "/retrieve",
            json={"queries": ["Eiffel Tower year", "Python creator"], "topk": 2, "return_scores": True, "eid": 7},
        )
        assert r.status_code == 200
        body = r.json()
        assert len(body) == 2 and all(len(hits) == 2 for hits in body)
        first = body[0][0]
        assert first["document"]["id"] == "eiffel" and set(first["document"]) == {"id", "content"}
        assert first["source"] == "local" and 0 < first["score"] <= 1
        simple = httpx.post(srv.url + "/retrieve", json={"query": "Python creator", "topk": 1}).json()
        assert simple["results"][0]["document"]["id"] == "python" and simple["notes"] == []
        bare = httpx.post(srv.url + "/retrieve", json={"queries": ["Python creator"], "return_scores": False}).json()
        assert "score" not in bare[0][0]
        metrics = httpx.get(srv.url + "/metrics").text
        assert "proctor_retrieval_queries_total 4" in metrics and "proctor_retrieval_ready 1" in metrics
        assert "/retrieve" in httpx.get(srv.url + "/openapi.json").json()["paths"]


def test_web_hits_follow_local_ones_and_the_key_stays_secret(
    index_dir: Path,
    encoder: Encoder,
    tavily: tuple[FakeTavily, ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    fake, server = tavily
    monkeypatch.setenv(KEY_ENV, SECRET)
    web = TavilyClient(key_env=KEY_ENV, base_url=server.url, max_results=2)
    with service(index_dir, encoder, mode="dense", web=web) as srv:
        r = httpx.post(
            srv.url + "/retrieve", json={"queries": ["quantum chromodynamics of neutron stars"], "topk": 3}, timeout=60
        )
    hits = r.json()[0]
    assert [h["source"] for h in hits] == ["local"] * 3 + ["web"] * 2
    assert hits[3]["document"] == {
        "id": "https://web.example/0",
        "content": "Web 0\nfull page text of https://web.example/0",
    }
    assert [c[0] for c in fake.calls] == ["search", "extract"]
    assert fake.calls[0][1] == {"query": "quantum chromodynamics of neutron stars", "max_results": 2}
    assert all(c[2] == f"Bearer {SECRET}" for c in fake.calls)
    out, err = capfd.readouterr()
    assert SECRET not in r.text + json.dumps(dict(r.headers)) + out + err


def test_enough_local_hits_mean_no_web_call(
    index_dir: Path, encoder: Encoder, tavily: tuple[FakeTavily, ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = tavily
    monkeypatch.setenv(KEY_ENV, SECRET)
    rule = FallbackRule(min_good=1, min_chars=50)
    with service(
        index_dir, encoder, mode="dense", rule=rule, web=TavilyClient(key_env=KEY_ENV, base_url=server.url)
    ) as srv:
        hits = httpx.post(
            srv.url + "/retrieve", json={"queries": ["When was the Eiffel Tower completed?"], "topk": 3}, timeout=60
        ).json()[0]
    assert [h["source"] for h in hits] == ["local"] * 3 and fake.calls == []


def test_without_a_key_there_is_no_fallback_and_a_note(
    index_dir: Path, encoder: Encoder, tavily: tuple[FakeTavily, ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, server = tavily
    monkeypatch.delenv(KEY_ENV, raising=False)
    with service(index_dir, encoder, mode="dense", web=TavilyClient(key_env=KEY_ENV, base_url=server.url)) as srv:
        r = httpx.post(srv.url + "/retrieve", json={"queries": ["neutron stars"], "topk": 2}, timeout=60)
        simple = httpx.post(srv.url + "/retrieve", json={"query": "neutron stars", "topk": 2}, timeout=60).json()
    note = f"no web fallback: ${KEY_ENV} is not set"
    assert json.loads(r.headers["x-retrieval-notes"]) == [note] and simple["notes"] == [note]
    assert all(h["source"] == "local" for h in r.json()[0]) and fake.calls == []


def test_a_slow_fallback_does_not_delay_other_queries(
    index_dir: Path, encoder: Encoder, tavily: tuple[FakeTavily, ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held query's web search waits until the other query has been answered."""
    fake, server = tavily
    monkeypatch.setenv(KEY_ENV, SECRET)
    with service(index_dir, encoder, mode="dense", web=TavilyClient(key_env=KEY_ENV, base_url=server.url)) as srv:
        slow: dict[str, Any] = {}

        def ask_slow() -> None:
            slow["response"] = httpx.post(
                srv.url + "/retrieve", json={"queries": ["hold: deep sea vents"], "topk": 3}, timeout=60
            )

        thread = threading.Thread(target=ask_slow)
        thread.start()
        for _ in range(400):  # bounded: until the held query has reached the fake web search
            if fake.calls:
                break
            threading.Event().wait(0.05)
        assert fake.calls, "the held query never reached the web search"
        fast = httpx.post(srv.url + "/retrieve", json={"queries": ["fast: deep sea vents"], "topk": 3}, timeout=20)
        assert fast.status_code == 200 and "response" not in slow  # answered while the other still waits
        fake.release.set()
        thread.join(timeout=60)
    assert slow["response"].status_code == 200 and slow["response"].json()[0][-1]["source"] == "web"


def test_an_eid_allow_list_limits_the_documents(index_dir: Path, encoder: Encoder, tmp_path: Path) -> None:
    allow = tmp_path / "eids.json"
    allow.write_text(json.dumps({"q1": ["everest", "python"]}))
    with service(index_dir, encoder, mode="hybrid", web=None, eid_file=allow) as srv:
        restricted = httpx.post(
            srv.url + "/retrieve", json={"queries": ["Eiffel Tower"], "topk": 5, "eid": "q1"}
        ).json()[0]
        other = httpx.post(srv.url + "/retrieve", json={"queries": ["Eiffel Tower"], "topk": 5, "eid": "q2"}).json()[0]
    assert sorted(h["document"]["id"] for h in restricted) == ["everest", "python"]
    assert other[0]["document"]["id"] == "eiffel"


def test_a_bad_query_fails_its_request_only(index_dir: Path, encoder: Encoder) -> None:
    with service(index_dir, encoder, mode="dense", web=None) as srv:
        bad = httpx.post(
            srv.url + "/retrieve",
            content=b'{"queries": ["ok", "bad \\ud800"], "topk": 2}',
            headers={"content-type": "application/json"},
        )
        good = httpx.post(srv.url + "/retrieve", json={"queries": ["Python creator"], "topk": 1})
    assert (
        bad.status_code == 400 and bad.json()["ok"] is False and "query 1 could not be searched" in bad.json()["error"]
    )
    assert good.status_code == 200 and good.json()[0][0]["document"]["id"] == "python"


def test_an_index_that_cannot_be_loaded_is_reported_on_health(tmp_path: Path) -> None:
    from retrieval_support import ORCHESTRA_CORPUS

    from proctor.retrieval.corpus import load_corpus
    from proctor.retrieval.index import build_index

    build_index(load_corpus(ORCHESTRA_CORPUS), tmp_path / "idx", kinds=("bm25",))
    for f in (tmp_path / "idx" / "bm25").iterdir():
        f.write_bytes(b"damaged")
    with ServerThread(create_app(ServiceSettings(index_dir=tmp_path / "idx", web=None))) as srv:
        for _ in range(400):  # bounded: until loading has finished one way or the other
            health = httpx.get(srv.url + "/health")
            if health.json()["status"] != "loading":
                break
            threading.Event().wait(0.05)
        retrieve = httpx.post(srv.url + "/retrieve", json={"queries": ["x"]})
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert retrieve.status_code == 503 and "failed to load" in retrieve.json()["error"]
