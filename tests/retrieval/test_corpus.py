"""Reading a corpus: formats, field mapping, and every refusal before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_proctor
from retrieval_support import write_corpus

from proctor.errors import DatasetError
from proctor.retrieval.corpus import CorpusFields, load_corpus


def test_reads_jsonl_csv_json_and_parquet_with_a_field_mapping(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"pid": "a", "heading": "Alpha", "body": "first text"}, {"pid": "b", "heading": "Beta", "body": "second"}]
    fields = CorpusFields.parse(id="pid", title="heading", content="body")
    write_corpus(tmp_path / "c.jsonl", rows)
    (tmp_path / "c.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "c.csv").write_text("pid,heading,body\na,Alpha,first text\nb,Beta,second\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name in ("c.jsonl", "c.json", "c.csv", "c.parquet"):
        docs = load_corpus(tmp_path / name, fields=fields)
        assert [(d.id, d.title, d.content) for d in docs] == [("a", "Alpha", "first text"), ("b", "Beta", "second")], (
            name
        )
        assert docs[0].text == "Alpha\nfirst text"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no documents"),
        (
            '{"id": "x", "content": "one"}\n{"id": "x", "content": "two"}\n',
            "duplicate document id(s): 'x' (line 1, line 2)",
        ),
        (
            '{"id": "x", "content": "one"}\n{"id": "y", "text_": "two"}\n',
            "line 2: field 'content' or 'contents' or 'text'",
        ),
        ('{"id": "x", "content": "one"}\n{not json\n', "line 2 is not valid JSON"),
    ],
    ids=["empty", "duplicate-ids", "missing-field", "bad-json"],
)
def test_a_bad_corpus_is_refused_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        load_corpus(path)
    assert message in str(err.value)


def test_missing_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="corpus file not found"):
        load_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="is a directory"):
        load_corpus(tmp_path)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_corpus(binary)


def test_cli_refuses_duplicate_ids_before_any_work(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", [{"id": "1", "content": "a"}, {"id": "1", "content": "b"}])
    out = tmp_path / "index"
    result = run_proctor("retrieval", "index", corpus, "--out", out, timeout=60)
    assert result.returncode == 2
    assert "duplicate document id(s): '1'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_refuses_an_unknown_format_and_nothing_to_build(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", [{"id": "1", "content": "a"}])
    result = run_proctor("retrieval", "index", corpus, "--out", tmp_path / "i", "--format", "xml", timeout=60)
    assert result.returncode == 2 and "unknown --format 'xml'" in result.stderr
    result = run_proctor("retrieval", "index", corpus, "--out", tmp_path / "i", "--no-dense", timeout=60)
    assert result.returncode == 2 and "nothing to build" in result.stderr
