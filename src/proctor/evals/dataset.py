"""Reading a dataset into samples, and refusing a bad one before any model call is made.

Every problem a dataset can have (missing file, unparseable line, missing field, duplicate id) is
found here, up front, and reported with enough detail to fix it: a run that fails an hour in on
line 1,781 is exactly what proctor exists to prevent.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proctor.errors import DatasetError
from proctor.evals.rows import infer_format, read_rows
from proctor.evals.spec import DatasetConfig, FieldName
from proctor.evals.types import Sample

_MISSING = object()


@dataclass(slots=True)
class LoadedDataset:
    samples: list[Sample]
    """The selection to run (after shuffle, shard and limit)."""
    all_samples: list[Sample]
    """Every sample in the file: what a resumed run is checked against."""
    path: Path
    digest: str
    """sha256 of the file's bytes: changes whenever the data does."""
    total_rows: int


def resolve_path(config: DatasetConfig, base_dir: Path) -> Path:
    path = Path(config.path).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def load_dataset(config: DatasetConfig, *, base_dir: Path, limit: int | None = None) -> LoadedDataset:
    """Load, map, check, then select (shuffle → shard → limit) the samples of a dataset."""
    path = resolve_path(config, base_dir)
    if not path.exists():
        raise DatasetError(f"dataset file not found: {path}", hint="dataset.path is relative to the spec file")
    if path.is_dir():
        raise DatasetError(f"dataset path is a directory, not a file: {path}")
    fmt = config.format or infer_format(path)
    raw = path.read_bytes()
    rows = list(read_rows(path, raw, fmt))
    samples = [_to_sample(row, where, index, config) for index, (where, row) in enumerate(rows)]
    _check_unique(samples, rows)
    selected = _select(samples, config, limit)
    return LoadedDataset(selected, samples, path, hashlib.sha256(raw).hexdigest(), len(rows))


def _lookup(row: dict[str, Any], name: FieldName) -> Any:
    for candidate in [name] if isinstance(name, str) else name:
        if candidate in row and row[candidate] is not None:
            return row[candidate]
    return _MISSING


def _describe(name: FieldName) -> str:
    return repr(name) if isinstance(name, str) else " or ".join(repr(n) for n in name)


def _to_sample(row: dict[str, Any], where: str, index: int, config: DatasetConfig) -> Sample:
    fields = config.fields

    def required(key: str, name: FieldName) -> Any:
        value = _lookup(row, name)
        if value is _MISSING:
            have = ", ".join(sorted(row)) or "(none)"
            raise DatasetError(
                f"{where}: field {_describe(name)} (mapped to {key}) is missing; the row has: {have}",
                hint=f"fix the data, or map {key} to another column in dataset.fields",
            )
        return value

    def optional(name: FieldName | None) -> Any:
        if name is None:
            return None
        value = _lookup(row, name)
        return None if value is _MISSING else value

    sample_id = str(index) if fields.id is None else str(required("id", fields.id))
    value = required("input", fields.input)
    if not isinstance(value, str | list):
        value = str(value)
    target = None if fields.target is None else required("target", fields.target)
    if target is not None and not isinstance(target, str | list):
        target = str(target)
    choices = optional(fields.choices)
    if choices is not None:
        if isinstance(choices, str):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                choices = None
        if not isinstance(choices, list) or not choices:
            assert fields.choices is not None  # optional() found a value, so the field is mapped
            raise DatasetError(f"{where}: field {_describe(fields.choices)} must hold a non-empty list of choices")
        choices = [str(c) for c in choices]
    images = optional(fields.images)
    if images in ("", None):
        images = []
    elif isinstance(images, str):
        images = [images]
    category = optional(fields.category)
    metadata = {name: row.get(name) for name in fields.metadata}
    return Sample(
        id=sample_id,
        input=value,
        target=target,
        choices=choices,
        category=None if category is None else str(category),
        metadata=metadata,
        images=list(images),
    )


def _check_unique(samples: list[Sample], rows: list[tuple[str, dict[str, Any]]]) -> None:
    counts = Counter(s.id for s in samples)
    dupes = [i for i, n in counts.items() if n > 1]
    if not dupes:
        return
    where: dict[str, list[str]] = {}
    for sample, (loc, _) in zip(samples, rows, strict=True):
        if sample.id in counts and counts[sample.id] > 1:
            where.setdefault(sample.id, []).append(loc)
    shown = "; ".join(f"{i!r} ({', '.join(where[i])})" for i in dupes[:20])
    more = f" and {len(dupes) - 20} more" if len(dupes) > 20 else ""
    raise DatasetError(f"{len(dupes)} duplicate sample id(s): {shown}{more}", hint="every sample needs a unique id")


def _select(samples: list[Sample], config: DatasetConfig, limit: int | None) -> list[Sample]:
    selected = list(samples)
    if config.shuffle:
        random.Random(config.seed).shuffle(selected)
    if config.shard:
        index, count = (int(p) for p in config.shard.split("/"))
        selected = selected[index::count]
    effective = min(x for x in (limit, config.limit) if x is not None) if (limit or config.limit) else None
    return selected[:effective] if effective else selected
