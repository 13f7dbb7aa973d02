"""Fixtures for the retrieval tests: one encoder and one small index per test process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from retrieval_support import synthetic_corpus

pytest.importorskip("faiss", reason="the retrieval extra is not installed")

from proctor.retrieval.corpus import Document  # noqa: E402
from proctor.retrieval.encoder import Encoder  # noqa: E402
from proctor.retrieval.index import build_index  # noqa: E402


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder.load()


@pytest.fixture(scope="session")
def corpus_rows() -> list[dict[str, str]]:
    return synthetic_corpus(40)


@pytest.fixture(scope="session")
def index_dir(
    tmp_path_factory: pytest.TempPathFactory, encoder: Encoder, corpus_rows: list[dict[str, str]]
) -> Iterator[Path]:
    """A dense + BM25 index of 52 documents."""
    out = tmp_path_factory.mktemp("index") / "idx"
    docs = [Document(r["id"], r["content"], r.get("title", "")) for r in corpus_rows]
    build_index(docs, out, kinds=("dense", "bm25"), encoder=encoder)
    yield out
