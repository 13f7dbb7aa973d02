"""Building an index directory from documents, and loading it back to search it.

An index directory holds:

```text
manifest.json      what was built: kinds, model, faiss index type, document count, corpus digest
documents.jsonl    the documents, in index order (row i of every index is line i)
dense.faiss        faiss index over the MiniLM vectors (inner product = cosine: vectors are unit)
embeddings.npy     the same vectors, for exact scoring inside an allow-list (``eid``)
bm25/              bm25s index
```

Dense search uses faiss ``IndexFlatIP`` (exact) unless ``approximate`` asks for HNSW, which is
worth it from a few hundred thousand documents on. BM25 uses ``bm25s``; its scores are unbounded
(not cosines), which is why the web-fallback threshold has its own value per kind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from proctor.errors import InputError
from proctor.retrieval.corpus import Document
from proctor.retrieval.encoder import MODEL_ASSET, Encoder

__all__ = ["BuildStats", "Hit", "IndexKind", "Manifest", "SearchIndex", "build_index", "file_sha256", "ENCODE_BATCH"]

IndexKind = Literal["dense", "bm25"]
ENCODE_BATCH = 64
"""Texts per forward pass while building (sorted by length, so each batch pads little)."""
FORMAT_VERSION = 1

Progress = Callable[[int], None]
"""Called with the number of documents just finished."""


@dataclass(slots=True)
class Manifest:
    """What an index directory holds."""

    documents: int
    kinds: list[str]
    model: str | None = None
    dim: int | None = None
    faiss: str | None = None
    """``flat`` (exact) or ``hnsw`` (approximate)."""
    corpus_sha256: str | None = None
    """Digest of the corpus file it was built from: a launch rebuilds the index when it changes."""
    version: int = FORMAT_VERSION
    built_at: str = ""
    build_seconds: float = 0.0

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / "manifest.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"{directory} is not a retrieval index (no manifest.json)",
                hint="build one with: proctor retrieval index CORPUS --out DIR",
            ) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from None
        if data.get("version") != FORMAT_VERSION:
            raise InputError(
                f"{directory} holds an index of format {data.get('version')!r}; rebuild it with this proctor"
            )
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(slots=True)
class BuildStats:
    documents: int
    seconds: float
    manifest: Manifest = field(repr=False)


@dataclass(slots=True)
class Hit:
    """One retrieved document."""

    index: int
    score: float


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (what tells a launch that its corpus changed)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sorted_batches(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Row numbers grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + size] for i in range(0, len(order), size)]


def embed_documents(
    encoder: Encoder, texts: Sequence[str], *, progress: Progress | None = None
) -> npt.NDArray[np.float32]:
    """Unit vectors for every text, in the texts' order, encoded in length-sorted batches."""
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    lengths = [len(t) for t in texts]
    for rows in _sorted_batches(lengths, ENCODE_BATCH):
        vectors[rows] = encoder.encode([texts[i] for i in rows])
        if progress:
            progress(len(rows))
    return vectors


def _bm25_tokens(texts: Sequence[str]) -> Any:
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", show_progress=False)


def build_index(
    docs: Sequence[Document],
    out: Path,
    *,
    kinds: Sequence[IndexKind] = ("dense",),
    approximate: bool = False,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    corpus_sha256: str | None = None,
) -> BuildStats:
    """Write an index of ``docs`` into ``out`` (created; written to a temp dir, then renamed in)."""
    import faiss

    if not kinds:
        raise InputError("nothing to build: choose --dense, --bm25 or both")
    started = time.monotonic()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise InputError(f"{out} exists and is not a retrieval index; refusing to write into it")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=False)
    try:
        with (tmp / "documents.jsonl").open("w", encoding="utf-8") as fh:
            for doc in docs:
                fh.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
        texts = [d.text for d in docs]
        manifest = Manifest(documents=len(docs), kinds=sorted(set(kinds)), corpus_sha256=corpus_sha256)
        if "bm25" in kinds:
            import bm25s

            retriever = bm25s.BM25()
            retriever.index(_bm25_tokens(texts), show_progress=False)
            retriever.save(str(tmp / "bm25"))
        if "dense" in kinds:
            encoder = encoder or Encoder.load()
            vectors = embed_documents(encoder, texts, progress=progress)
            index: Any
            if approximate:
                index = faiss.IndexHNSWFlat(encoder.dim, 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = 128
            else:
                index = faiss.IndexFlatIP(encoder.dim)
            index.add(vectors)
            faiss.write_index(index, str(tmp / "dense.faiss"))
            np.save(tmp / "embeddings.npy", vectors)
            manifest.model, manifest.dim, manifest.faiss = MODEL_ASSET, encoder.dim, "hnsw" if approximate else "flat"
        elif progress:
            progress(len(docs))
        manifest.built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.build_seconds = round(time.monotonic() - started, 3)
        (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n", encoding="utf-8")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return BuildStats(len(docs), time.monotonic() - started, manifest)


class SearchIndex:
    """A loaded index directory: documents plus whichever of the dense and BM25 indexes it has."""

    def __init__(self, directory: Path, *, encoder: Encoder | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self.documents: list[dict[str, str]] = []
        with (self.directory / "documents.jsonl").open(encoding="utf-8") as fh:
            self.documents = [json.loads(line) for line in fh if line.strip()]
        self.position = {d["id"]: i for i, d in enumerate(self.documents)}
        self.dense: Any = None
        self.vectors: npt.NDArray[np.float32] | None = None
        self.encoder: Encoder | None = None
        self.bm25: Any = None
        if "dense" in self.manifest.kinds:
            import faiss

            self.dense = faiss.read_index(str(self.directory / "dense.faiss"))
            self.vectors = np.load(self.directory / "embeddings.npy", mmap_mode="r")
            self.encoder = encoder or Encoder.load()
        if "bm25" in self.manifest.kinds:
            import bm25s

            self.bm25 = bm25s.BM25.load(str(self.directory / "bm25"))

    @property
    def kinds(self) -> list[str]:
        return list(self.manifest.kinds)

    def search_dense(self, vectors: npt.NDArray[np.float32], k: int) -> list[list[Hit]]:
        """The ``k`` nearest documents of each query vector, best first."""
        k = min(k, len(self.documents))
        scores, rows = self.dense.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return [
            [Hit(int(r), float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def search_dense_within(self, vector: npt.NDArray[np.float32], rows: Sequence[int], k: int) -> list[Hit]:
        """Exact cosine ranking of one query over an allow-list of document rows."""
        assert self.vectors is not None
        if not rows:
            return []
        scores = np.asarray(self.vectors[list(rows)]) @ vector
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(rows[i]), float(scores[i])) for i in order]

    def search_bm25(
        self, queries: Sequence[str], k: int, *, within: Sequence[Sequence[int] | None] | None = None
    ) -> list[list[Hit]]:
        """BM25 ranking of each query (over all documents, or over its allow-list), best first."""
        results: list[list[Hit]] = []
        tokens = _bm25_tokens(queries)
        vocab_inv = {v: t for t, v in tokens.vocab.items()}
        for qi, ids in enumerate(tokens.ids):
            words = [vocab_inv[i] for i in ids]
            scores = (
                np.asarray(self.bm25.get_scores(words), dtype=np.float32)
                if words
                else np.zeros(len(self.documents), np.float32)
            )
            allowed = within[qi] if within else None
            candidates = np.asarray(allowed if allowed is not None else range(len(self.documents)), dtype=np.int64)
            if candidates.size == 0:
                results.append([])
                continue
            sub = scores[candidates]
            order = np.argsort(-sub, kind="stable")[:k]
            results.append([Hit(int(candidates[i]), float(sub[i])) for i in order if sub[i] > 0])
        return results
