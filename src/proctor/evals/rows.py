"""Reading the rows of a data file (JSONL, JSON, CSV, Parquet), with errors that point at the row.

Shared by the engine's datasets (``proctor.evals.dataset``) and the retrieval service's corpora
(``proctor.retrieval.corpus``): one reader, so both accept the same files and report a bad line
in the same words. What a row must contain is the caller's business.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proctor.errors import DatasetError

__all__ = ["infer_format", "read_rows"]


def infer_format(path: Path) -> str:
    """The format a file's extension names (jsonl, json, csv or parquet), else a ``DatasetError``."""
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in formats:
        raise DatasetError(
            f"cannot tell the format of {path.name} from its extension {suffix or '(none)'}",
            hint="set dataset.format to one of jsonl, json, csv, parquet",
        )
    return formats[suffix]


def read_rows(path: Path, raw: bytes, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row) pairs; ``where`` is how an error message points at the row."""
    if fmt == "parquet":
        yield from _parquet_rows(path)
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    if fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {lineno} is not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}: line {lineno} is a JSON {type(row).__name__}, expected an object")
            yield f"line {lineno}", row
    elif fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            ) from None
        if isinstance(data, dict):
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise DatasetError(
                    f"{path}: expected a JSON list of objects (or an object with exactly one list in it)"
                )
            data = data[lists[0]]
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of objects, got a {type(data).__name__}")
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                raise DatasetError(f"{path}: item {index} is a JSON {type(row).__name__}, expected an object")
            yield f"item {index}", row
    elif fmt == "csv":
        reader = csv.DictReader(text.splitlines())
        for index, row in enumerate(reader):
            if None in row:
                raise DatasetError(f"{path}: row {index + 2} has more cells than the header has columns")
            yield f"row {index + 2}", dict(row)
    else:  # pragma: no cover - guarded by the spec's Literal
        raise DatasetError(f"unknown dataset format {fmt!r}")


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq  # deferred: pyarrow costs ~0.2 s to import

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(f"{path} is not a readable Parquet file: {exc}") from None
    for index, row in enumerate(table.to_pylist()):
        yield f"row {index}", row
