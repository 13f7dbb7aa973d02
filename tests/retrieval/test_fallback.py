"""The web-fallback rule at its edges: fewer than 3 hits with score > 0.1 and > 100 characters."""

from __future__ import annotations

from typing import Any

import pytest

from proctor.retrieval.web import FallbackRule, needs_fallback


def hit(score: float, chars: int) -> dict[str, Any]:
    return {"document": {"id": "d", "content": "x" * chars}, "score": score}


@pytest.mark.parametrize(
    ("hits", "falls_back"),
    [
        ([hit(0.5, 200)] * 3, False),  # 3 good hits: enough
        ([hit(0.5, 200)] * 2, True),  # 2 good hits: too few
        ([hit(0.5, 200)] * 2 + [hit(0.5, 101)], False),  # 101 characters is more than 100
        ([hit(0.5, 200)] * 2 + [hit(0.5, 100)], True),  # 100 characters is not
        ([hit(0.5, 200)] * 2 + [hit(0.1, 200)], True),  # a score of exactly 0.1 is not above 0.1
        ([hit(0.5, 200)] * 2 + [hit(0.1000001, 200)], False),
        ([], True),
    ],
    ids=["3-good", "2-good", "101-chars", "100-chars", "score-0.1", "score-above-0.1", "no-hits"],
)
def test_fallback_rule_edges(hits: list[dict[str, Any]], falls_back: bool) -> None:
    assert needs_fallback(FallbackRule(), hits, "dense") is falls_back


def test_every_number_is_configurable_and_bm25_has_its_own_threshold() -> None:
    rule = FallbackRule(min_good=1, min_chars=10, min_score={"dense": 0.5, "hybrid": 0.5, "bm25": 7.0})
    assert needs_fallback(rule, [hit(0.6, 11)], "dense") is False
    assert needs_fallback(rule, [hit(0.6, 10)], "dense") is True
    assert needs_fallback(rule, [hit(6.9, 50)], "bm25") is True
    assert needs_fallback(rule, [hit(7.5, 50)], "bm25") is False
    assert needs_fallback(FallbackRule(), [hit(4.0, 500)] * 3, "bm25") is True  # BM25's default: 5.0
