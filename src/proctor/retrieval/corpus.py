"""Reading a corpus into documents, and refusing a bad one before any embedding is computed.

A corpus is read like a dataset (``proctor.evals.dataset``: jsonl, json, csv or parquet, the same
row readers and the same error messages) with its own field mapping: ``id``, ``title`` (optional)
and ``content``. Every problem (missing file, empty corpus, missing field, duplicate ids) is found
here, before the minutes an index build can take.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proctor.errors import DatasetError

# The dataset loader's row readers: one parser (and one set of messages) for every tabular file.
from proctor.evals.rows import infer_format, read_rows

__all__ = ["CorpusFields", "Document", "load_corpus"]


@dataclass(frozen=True, slots=True)
class CorpusFields:
    """Which column holds each part of a document; each may name alternatives, first present wins."""

    id: tuple[str, ...] = ("id", "_id", "doc_id")
    title: tuple[str, ...] = ("title",)
    content: tuple[str, ...] = ("content", "contents", "text")

    @classmethod
    def parse(cls, *, id: str | None = None, title: str | None = None, content: str | None = None) -> CorpusFields:
        """Fields from ``a,b``-style CLI values; ``None`` keeps the default for that part."""

        def split(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
            if value is None:
                return default
            return tuple(p.strip() for p in value.split(",") if p.strip())

        base = cls()
        return cls(split(id, base.id), split(title, base.title), split(content, base.content))


@dataclass(frozen=True, slots=True)
class Document:
    """One retrievable passage; ``text`` (title, a newline, content) is what gets embedded."""

    id: str
    content: str
    title: str = ""

    @property
    def text(self) -> str:
        return f"{self.title}\n{self.content}" if self.title else self.content

    def to_json(self) -> dict[str, str]:
        out = {"id": self.id, "content": self.content}
        if self.title:
            out["title"] = self.title
        return out


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = row.get(name)
        if value is not None:
            return value
    return None


def load_corpus(path: str | Path, *, fields: CorpusFields | None = None, fmt: str | None = None) -> list[Document]:
    """Every document of the corpus file, checked: non-empty, every field present, unique ids."""
    fields = fields or CorpusFields()
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"corpus file not found: {path}")
    if path.is_dir():
        raise DatasetError(f"corpus path is a directory, not a file: {path}")
    fmt = fmt or infer_format(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read the corpus file {path}: {exc.strerror or exc}") from None
    docs: list[Document] = []
    places: list[str] = []
    for where, row in read_rows(path, raw, fmt):
        doc_id = _first(row, fields.id)
        content = _first(row, fields.content)
        for part, value, names in (("id", doc_id, fields.id), ("content", content, fields.content)):
            if value is None:
                have = ", ".join(sorted(row)) or "(none)"
                wanted = " or ".join(repr(n) for n in names)
                raise DatasetError(
                    f"{path}: {where}: field {wanted} (the document's {part}) is missing; the row has: {have}",
                    hint=f"fix the data, or map the {part} to another column with --{part}-field",
                )
        title = _first(row, fields.title)
        docs.append(Document(str(doc_id), str(content), "" if title is None else str(title)))
        places.append(where)
    if not docs:
        raise DatasetError(f"the corpus {path} holds no documents", hint="an index needs at least one document")
    counts = Counter(d.id for d in docs)
    dupes = [i for i, n in counts.items() if n > 1]
    if dupes:
        where_of: dict[str, list[str]] = {}
        for doc, loc in zip(docs, places, strict=True):
            if counts[doc.id] > 1:
                where_of.setdefault(doc.id, []).append(loc)
        shown = "; ".join(f"{i!r} ({', '.join(where_of[i])})" for i in dupes[:20])
        more = f" and {len(dupes) - 20} more" if len(dupes) > 20 else ""
        raise DatasetError(
            f"{path}: {len(dupes)} duplicate document id(s): {shown}{more}", hint="every document needs a unique id"
        )
    return docs
