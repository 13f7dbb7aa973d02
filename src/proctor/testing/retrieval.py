"""A small retrieval service stand-in for tests, examples and benchmarks.

It speaks the protocol of the ``retrieve`` tool: ``POST /retrieve`` with
``{"queries": [...], "topk": k}`` answers one list per query of
``{"document": {"id", "content"}, "score"}``, ranked by BM25 over an in-memory corpus read from a
JSONL file (one ``{"id", "content"}`` — or ``"contents"``/``"text"`` — object per line).
``GET /health`` answers ``{"ok": true, "documents": n}``. An optional ``latency`` makes it behave
like a real service under load.

In-process::

    async with RetrievalServer.from_file("corpus.jsonl") as srv:
        url = srv.url            # http://127.0.0.1:PORT/retrieve

As a process: ``python -m proctor.testing.retrieval --corpus corpus.jsonl --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any, cast

from aiohttp import web

__all__ = ["BM25Index", "RetrievalServer", "load_corpus"]

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by for from has he in is it its of on or that the to was were will with what which who whom".split()
)


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOP]


def load_corpus(path: str | Path) -> list[dict[str, str]]:
    """Documents from a JSONL file; a line without an id gets its line number."""
    docs = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            content = obj.get("content") or obj.get("contents") or obj.get("text") or ""
            if obj.get("title"):
                content = f"{obj['title']}\n{content}"
            docs.append({"id": str(obj.get("id", n)), "content": str(content)})
    return docs


class BM25Index:
    """Okapi BM25 (k1=1.5, b=0.75): plenty for a stand-in, and deterministic."""

    def __init__(self, docs: list[dict[str, str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = docs
        self.k1, self.b = k1, b
        self.tfs = [Counter(tokenize(d["content"])) for d in docs]
        self.lengths = [sum(tf.values()) for tf in self.tfs]
        self.avg = (sum(self.lengths) / len(docs)) if docs else 0.0
        df: Counter[str] = Counter()
        for tf in self.tfs:
            df.update(tf.keys())
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        terms = tokenize(query)
        scored = []
        for i, tf in enumerate(self.tfs):
            s = 0.0
            for t in terms:
                f = tf.get(t)
                if f:
                    norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / (self.avg or 1))
                    s += self.idf[t] * f * (self.k1 + 1) / (f + norm)
            if s > 0:
                scored.append((s, i))
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [{"document": dict(self.docs[i]), "score": round(s, 6)} for s, i in scored[:k]]


class RetrievalServer:
    """The stand-in as an aiohttp app on 127.0.0.1, started and stopped by ``async with``."""

    def __init__(
        self, docs: list[dict[str, str]], *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0
    ) -> None:
        self.index = BM25Index(docs)
        self.host, self.port, self.latency = host, port, latency
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> RetrievalServer:
        return cls(load_corpus(path), **kw)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/retrieve"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/retrieve", self._retrieve)
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "documents": len(self.index.docs)})

    async def _retrieve(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        queries = body.get("queries") if isinstance(body, dict) else None
        topk = body.get("topk", 3) if isinstance(body, dict) else 3
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            return web.json_response({"error": "'queries' must be a list of strings"}, status=400)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            return web.json_response({"error": "'topk' must be a positive integer"}, status=400)
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.json_response([self.index.search(q, topk) for q in queries])

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        # An asyncio.Server (or uvloop's): the AbstractServer that aiohttp declares has no sockets.
        self.port = cast(asyncio.Server, server).sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RetrievalServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(args: argparse.Namespace) -> None:
    srv = RetrievalServer.from_file(args.corpus, host=args.host, port=args.port, latency=args.latency)
    await srv.start()
    print(f"retrieval stand-in: {len(srv.index.docs)} documents at {srv.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await srv.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proctor.testing.retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="JSONL file of {id, content} documents")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
