from __future__ import annotations

import json
from pathlib import Path

import pytest

from proctor.errors import DatasetError
from proctor.evals.dataset import load_dataset
from proctor.evals.spec import DatasetConfig

ROWS = [{"id": f"s{i}", "question": f"q{i}", "answer": str(i), "cat": "a" if i % 2 else "b"} for i in range(10)]
FIELDS = {"id": "id", "input": "question", "target": "answer", "category": "cat"}


def config(path: str, **kw: object) -> DatasetConfig:
    return DatasetConfig.model_validate({"path": path, "fields": FIELDS, **kw})


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return name


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_loads_the_same_samples(tmp_path: Path, fmt: str) -> None:
    name = f"data.{fmt}"
    if fmt == "jsonl":
        write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        write(tmp_path, name, json.dumps({"data": ROWS}))
    elif fmt == "csv":
        write(
            tmp_path,
            name,
            "id,question,answer,cat\n" + "".join(f"{r['id']},{r['question']},{r['answer']},{r['cat']}\n" for r in ROWS),
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / name)
    loaded = load_dataset(config(name), base_dir=tmp_path)
    assert [s.id for s in loaded.samples] == [r["id"] for r in ROWS]
    assert loaded.samples[3].input == "q3" and loaded.samples[3].target == "3"
    assert loaded.samples[3].category == "a"
    assert len(loaded.digest) == 64


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset file not found: .*nope.jsonl"):
        load_dataset(config("nope.jsonl"), base_dir=tmp_path)


def test_unparseable_line_gives_its_number(tmp_path: Path) -> None:
    write(tmp_path, "d.jsonl", json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n{broken\n")
    with pytest.raises(DatasetError, match=r"line 4 is not valid JSON"):
        load_dataset(config("d.jsonl"), base_dir=tmp_path)


def test_missing_field_names_sample_and_field(tmp_path: Path) -> None:
    rows = [dict(ROWS[0]), {"id": "s1", "answer": "1"}]
    write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError) as info:
        load_dataset(config("d.jsonl"), base_dir=tmp_path)
    msg = str(info.value)
    assert "line 2" in msg and "'question'" in msg and "input" in msg and "answer, id" in msg


def test_duplicate_ids_are_listed(tmp_path: Path) -> None:
    rows = [*ROWS, {**ROWS[2]}, {**ROWS[5]}, {**ROWS[5]}]
    write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError) as info:
        load_dataset(config("d.jsonl"), base_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith("2 duplicate sample id(s)")
    assert "'s2' (line 3, line 11)" in msg and "'s5' (line 6, line 12, line 13)" in msg


def test_limit_shuffle_and_shards(tmp_path: Path) -> None:
    write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))
    assert len(load_dataset(config("d.jsonl", limit=4), base_dir=tmp_path).samples) == 4
    assert len(load_dataset(config("d.jsonl"), base_dir=tmp_path, limit=3).samples) == 3
    a = [s.id for s in load_dataset(config("d.jsonl", shuffle=True, seed=1), base_dir=tmp_path).samples]
    b = [s.id for s in load_dataset(config("d.jsonl", shuffle=True, seed=1), base_dir=tmp_path).samples]
    c = [s.id for s in load_dataset(config("d.jsonl", shuffle=True, seed=2), base_dir=tmp_path).samples]
    assert a == b and a != c and sorted(a) == sorted(r["id"] for r in ROWS)
    shards = [
        [s.id for s in load_dataset(config("d.jsonl", shard=f"{i}/3"), base_dir=tmp_path).samples] for i in range(3)
    ]
    assert sorted(sum(shards, [])) == sorted(r["id"] for r in ROWS)
    assert not set(shards[0]) & set(shards[1])


def test_alternative_field_names_and_choices_and_images(tmp_path: Path) -> None:
    rows = [
        {"_id": "h1", "question": "q", "answer": "B", "choices": ["x", "y"], "image": ""},
        {"_id": "h2", "question": "q", "answer": "A", "choices": '["x", "y"]', "image": "data:image/png;base64,AA"},
    ]
    write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig.model_validate(
        {
            "path": "d.jsonl",
            "fields": {
                "id": ["id", "_id"],
                "input": "question",
                "target": "answer",
                "choices": "choices",
                "images": "image",
            },
        }
    )
    samples = load_dataset(cfg, base_dir=tmp_path).samples
    assert [s.id for s in samples] == ["h1", "h2"]
    assert samples[1].choices == ["x", "y"]
    assert samples[0].images == [] and samples[1].images == ["data:image/png;base64,AA"]


def test_unknown_extension_asks_for_format(tmp_path: Path) -> None:
    write(tmp_path, "d.txt", "x")
    with pytest.raises(DatasetError, match="set dataset.format"):
        load_dataset(config("d.txt"), base_dir=tmp_path)
