"""Micro-batching: every query waiting when the worker is free is encoded and searched together.

There is no fixed wait (no "collect for 5 ms"): the single worker thread takes whatever is queued
the moment it finishes the previous batch. Under no load a query is served alone, at once; under
load the batches grow by themselves, and one ``encode(batch)`` plus one ``search(batch)`` costs far
less than that many single calls. Queries are sorted by token count and cut into sub-batches of at
most ``max_batch``, so a long query does not make every short one pay for its padding.

One worker thread owns the encoder and the faiss index, which is also what keeps faiss from being
called concurrently (upstream's GPU crash). A batch that raises is retried one query at a time, so
one bad query fails only its own future. Only local work runs here: the web fallback is awaited on
the event loop by the service, never on this thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from proctor.retrieval.index import Hit, SearchIndex

__all__ = ["BatchStats", "MicroBatcher", "Query"]

_log = logging.getLogger("proctor.retrieval")


@dataclass(slots=True)
class Query:
    """One query waiting for the worker, with the future its request awaits."""

    text: str
    topk: int
    allowed: list[int] | None
    """Restrict the search to these document rows (an ``eid`` allow-list), or ``None``."""
    future: asyncio.Future[list[Hit]]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class BatchStats:
    """Counters the service exposes on ``/metrics``."""

    batches: int = 0
    queries: int = 0
    failed: int = 0
    busy_seconds: float = 0.0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)


class MicroBatcher:
    """Queue in front of one worker thread that searches ``index`` for batches of queries."""

    def __init__(self, index: SearchIndex, *, mode: str, max_batch: int = 64) -> None:
        self.index = index
        self.mode = mode
        self.max_batch = max(1, max_batch)
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[Query | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="retrieval-batcher", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def close(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=10)

    async def search(self, text: str, topk: int, allowed: list[int] | None = None) -> list[Hit]:
        """Queue one query and wait for its hits (best first)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Hit]] = loop.create_future()
        self._queue.put(Query(text, topk, allowed, future, loop))
        return await future

    # -- the worker thread -------------------------------------------------------------------

    def _take(self) -> list[Query] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if item is None:
                self._queue.put(None)  # finish this batch, then stop
                return batch
            batch.append(item)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            began = time.perf_counter()
            order = sorted(batch, key=lambda q: len(q.text))
            for start in range(0, len(order), self.max_batch):
                self._serve(order[start : start + self.max_batch])
            self.stats.busy_seconds += time.perf_counter() - began
            self.stats.batches += 1
            self.stats.queries += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))

    def _serve(self, group: list[Query]) -> None:
        try:
            results = self.search_now(group)
        except Exception as exc:
            if len(group) == 1:
                _log.warning("query failed: %s: %s", type(exc).__name__, exc)
                self.stats.failed += 1
                _settle(group[0], exc=exc)
                return
            for query in group:  # isolate the bad one: each query on its own
                self._serve([query])
            return
        for query, hits in zip(group, results, strict=True):
            _settle(query, hits=hits)

    def search_now(self, group: Sequence[Query]) -> list[list[Hit]]:
        """Encode and search a group synchronously (the worker's step; also the one-by-one path)."""
        index = self.index
        widest = max(q.topk for q in group)
        if self.mode == "bm25":
            return [
                hits[: q.topk]
                for q, hits in zip(
                    group,
                    index.search_bm25([q.text for q in group], widest, within=[q.allowed for q in group]),
                    strict=True,
                )
            ]
        assert index.encoder is not None
        vectors = index.encoder.encode([q.text for q in group])
        dense: list[list[Hit]] = [[] for _ in group]
        unrestricted = [i for i, q in enumerate(group) if q.allowed is None]
        if unrestricted:
            found = index.search_dense(vectors[unrestricted], widest if self.mode == "dense" else widest * 2)
            for i, hits in zip(unrestricted, found, strict=True):
                dense[i] = hits
        for i, q in enumerate(group):
            if q.allowed is not None:
                dense[i] = index.search_dense_within(vectors[i], q.allowed, widest * 2)
        if self.mode == "dense":
            return [hits[: q.topk] for q, hits in zip(group, dense, strict=True)]
        lexical = index.search_bm25([q.text for q in group], widest * 2, within=[q.allowed for q in group])
        return [
            fuse(d, b, vectors[i], index)[: q.topk]
            for i, (q, d, b) in enumerate(zip(group, dense, lexical, strict=True))
        ]


def fuse(dense: list[Hit], lexical: list[Hit], vector: object, index: SearchIndex, *, k: int = 60) -> list[Hit]:
    """Hybrid ranking: reciprocal-rank fusion of the dense and BM25 lists.

    The score reported for each hit stays its cosine similarity (computed for BM25-only hits), so
    the web-fallback threshold means the same thing in hybrid mode as in dense mode.
    """
    import numpy as np

    fused: dict[int, float] = {}
    for ranked in (dense, lexical):
        for rank, hit in enumerate(ranked):
            fused[hit.index] = fused.get(hit.index, 0.0) + 1.0 / (k + rank + 1)
    cosine = {h.index: h.score for h in dense}
    missing = [i for i in fused if i not in cosine]
    if missing:
        assert index.vectors is not None
        scores = np.asarray(index.vectors[missing]) @ np.asarray(vector)
        cosine.update({i: float(s) for i, s in zip(missing, scores, strict=True)})
    order = sorted(fused, key=lambda i: (-fused[i], i))
    return [Hit(i, cosine[i]) for i in order]


def _settle(query: Query, *, hits: list[Hit] | None = None, exc: BaseException | None = None) -> None:
    def apply() -> None:
        if query.future.done():
            return
        if exc is not None:
            query.future.set_exception(exc)
        else:
            query.future.set_result(hits or [])

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        query.loop.call_soon_threadsafe(apply)
