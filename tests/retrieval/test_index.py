"""Building index directories (dense, BM25, approximate) and searching them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_proctor
from retrieval_support import ORCHESTRA_CORPUS

from proctor.errors import InputError
from proctor.retrieval.corpus import load_corpus
from proctor.retrieval.encoder import Encoder
from proctor.retrieval.index import SearchIndex, build_index


def test_dense_and_bm25_find_the_right_document(index_dir: Path, encoder: Encoder) -> None:
    index = SearchIndex(index_dir, encoder=encoder)
    assert index.kinds == ["bm25", "dense"] and len(index.documents) == 52
    vectors = encoder.encode(["When was the Eiffel Tower completed?", "Who created Python?"])
    dense = index.search_dense(vectors, 3)
    assert [index.documents[h[0].index]["id"] for h in dense] == ["eiffel", "python"]
    assert dense[0][0].score > dense[0][1].score > 0
    lexical = index.search_bm25(["Eiffel Tower completed", "Guido van Rossum"], 2)
    assert index.documents[lexical[0][0].index]["id"] == "eiffel"
    assert {index.documents[h.index]["id"] for h in lexical[1]} == {"python", "rossum"}


def test_an_allow_list_restricts_the_search(index_dir: Path, encoder: Encoder) -> None:
    index = SearchIndex(index_dir, encoder=encoder)
    allowed = [index.position["everest"], index.position["python"]]
    vector = encoder.encode(["When was the Eiffel Tower completed?"])[0]
    hits = index.search_dense_within(vector, allowed, 5)
    assert sorted(index.documents[h.index]["id"] for h in hits) == ["everest", "python"]
    assert [index.documents[h.index]["id"] for h in index.search_bm25(["Eiffel python"], 5, within=[allowed])[0]] == [
        "python"
    ]


def test_approximate_index_builds_and_searches(tmp_path: Path, encoder: Encoder) -> None:
    docs = load_corpus(ORCHESTRA_CORPUS)
    stats = build_index(docs, tmp_path / "hnsw", kinds=("dense",), approximate=True, encoder=encoder)
    assert stats.manifest.faiss == "hnsw"
    index = SearchIndex(tmp_path / "hnsw", encoder=encoder)
    hits = index.search_dense(encoder.encode(["highest mountain on Earth"]), 1)
    assert index.documents[hits[0][0].index]["id"] == "everest"


def test_a_directory_that_is_not_an_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a retrieval index"):
        SearchIndex(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to write into it"):
        build_index(load_corpus(ORCHESTRA_CORPUS), tmp_path, kinds=("bm25",))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_cli_builds_an_index_with_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    result = run_proctor("retrieval", "index", ORCHESTRA_CORPUS, "--out", out, "--bm25", "--no-dense", timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"indexed 12 documents (bm25) into {out}" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kinds"] == ["bm25"] and manifest["documents"] == 12
