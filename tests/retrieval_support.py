"""Helpers for the retrieval tests: a real uvicorn server in a thread, a fake Tavily, corpora."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request

ORCHESTRA_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "orchestra" / "corpus.jsonl"


class ServerThread:
    """Any ASGI app on 127.0.0.1 (ephemeral port) in a thread; ``with`` starts and stops it."""

    def __init__(self, app: Any, *, ready_path: str | None = None) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.ready_path = ready_path
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("server thread did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        if self.ready_path:
            while httpx.get(self.url + self.ready_path, timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.ready_path} never answered 200")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class FakeTavily:
    """Tavily's /search and /extract on a FastAPI app; queries containing ``hold`` wait for ``release``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.release = threading.Event()
        self.app = FastAPI()

        @self.app.post("/search")
        async def search(request: Request) -> dict[str, Any]:
            body = json.loads(await request.body())
            self.calls.append(("search", body, request.headers.get("authorization", "")))
            if "hold" in body["query"]:
                for _ in range(600):  # bounded: at most 30 s
                    if self.release.is_set():
                        break
                    await asyncio.sleep(0.05)
            n = body.get("max_results", 3)
            return {
                "results": [
                    {
                        "url": f"https://web.example/{i}",
                        "title": f"Web {i}",
                        "content": f"snippet {i}",
                        "score": 0.9 - i / 10,
                    }
                    for i in range(n)
                ]
            }

        @self.app.post("/extract")
        async def extract(request: Request) -> dict[str, Any]:
            body = json.loads(await request.body())
            self.calls.append(("extract", body, request.headers.get("authorization", "")))
            return {
                "results": [{"url": u, "raw_content": f"full page text of {u}"} for u in body["urls"]],
                "failed_results": [],
            }


def synthetic_corpus(n: int) -> list[dict[str, str]]:
    """``n`` short, distinct documents (plus the orchestra example's), for index and load tests."""
    topics = ["river", "mountain", "violin", "comet", "glacier", "harbour", "orchard", "volcano", "library", "desert"]
    rows = [json.loads(line) for line in ORCHESTRA_CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i in range(n):
        a, b = topics[i % len(topics)], topics[(i * 7 + 3) % len(topics)]
        rows.append(
            {
                "id": f"doc-{i}",
                "title": f"Note {i} on the {a}",
                "content": f"Record {i}: the {a} near the {b} was surveyed in year {1800 + i}, "
                f"and the survey counted {i * 13 % 97} features of interest along its length.",
            }
        )
    return rows


def write_corpus(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
