"""Micro-batching: a batch answers exactly what one-by-one searches answer; a bad query fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proctor.retrieval.batcher import MicroBatcher, Query
from proctor.retrieval.encoder import Encoder
from proctor.retrieval.index import Hit, SearchIndex

QUERIES = [
    "When was the Eiffel Tower completed?",
    "who made python",
    "the glacier near the harbour",
    "How high is Mount Everest in metres, as established by the survey in 2020?",
    "violin",
    "Record 17",
]


def _queue_then_start(
    batcher: MicroBatcher, texts: list[str], topk: int, allowed: list[int] | None = None
) -> list[list[Hit] | BaseException]:
    """Queue every query *before* the worker starts, so the worker takes them as one batch."""

    async def go() -> list[list[Hit] | BaseException]:
        tasks = [asyncio.ensure_future(batcher.search(t, topk, allowed)) for t in texts]
        await asyncio.sleep(0)  # every task has put its query on the queue
        batcher.start()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)

    try:
        return asyncio.run(go())
    finally:
        batcher.close()


def _alone(index: SearchIndex, mode: str, text: str, topk: int, allowed: list[int] | None = None) -> list[Hit]:
    loop = asyncio.new_event_loop()
    try:
        query = Query(text, topk, allowed, loop.create_future(), loop)
        return MicroBatcher(index, mode=mode).search_now([query])[0]
    finally:
        loop.close()


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_batched_results_equal_single_results(index_dir: Path, encoder: Encoder, mode: str) -> None:
    index = SearchIndex(index_dir, encoder=encoder)
    batcher = MicroBatcher(index, mode=mode, max_batch=4)  # 6 queries: two length-sorted sub-batches
    batched = _queue_then_start(batcher, QUERIES, 5)
    assert batcher.stats.batches == 1 and batcher.stats.largest == len(QUERIES)
    for text, hits in zip(QUERIES, batched, strict=True):
        assert not isinstance(hits, BaseException)
        single = _alone(index, mode, text, 5)
        assert [h.index for h in hits] == [h.index for h in single], text
        assert [h.score for h in hits] == pytest.approx([h.score for h in single], abs=1e-5)


def test_one_bad_query_fails_only_itself(index_dir: Path, encoder: Encoder) -> None:
    index = SearchIndex(index_dir, encoder=encoder)
    batcher = MicroBatcher(index, mode="dense")
    texts = [QUERIES[0], "bad \ud800 surrogate", QUERIES[1]]  # a lone surrogate: the tokenizer refuses it
    results = _queue_then_start(batcher, texts, 3)
    assert isinstance(results[1], Exception)
    assert batcher.stats.failed == 1
    for text, hits in ((texts[0], results[0]), (texts[2], results[2])):
        assert not isinstance(hits, BaseException)
        assert [h.index for h in hits] == [h.index for h in _alone(index, "dense", text, 3)]
