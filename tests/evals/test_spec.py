from __future__ import annotations

from pathlib import Path

import pytest

from proctor.errors import SpecError
from proctor.evals.spec import apply_model_override, dump_spec, load_spec, parse_spec

MINIMAL = """\
name: arith
dataset:
  path: data.jsonl            # relative to the spec file
  fields: {id: id, input: question, target: answer}
solver: generate
scorer: exact
models:
  subject: {base_url: http://127.0.0.1:8000/v1, model: fake}
concurrency: 128
"""


def test_minimal_spec_from_the_issue_loads_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(MINIMAL)
    spec = load_spec(path)
    assert spec.name == "arith"
    assert spec.dataset.fields.input == "question"
    assert spec.solver.type == "generate" and spec.scorer.type == "exact"
    assert spec.models["subject"].base_url == "http://127.0.0.1:8000/v1"
    assert spec.concurrency == 128


def _error(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="spec.yaml")
    return str(info.value)


def base() -> dict:
    return {"name": "x", "dataset": {"path": "d.jsonl"}, "solver": "generate", "scorer": "exact",
            "models": {"subject": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}}


def test_unknown_key_is_named() -> None:
    data = base()
    data["dataset"]["limt"] = 3
    assert "dataset.limt: unknown key" in _error(data)


def test_wrong_type_names_key_and_value() -> None:
    data = base()
    data["concurrency"] = "lots"
    msg = _error(data)
    assert "concurrency:" in msg and "'lots'" in msg


def test_api_key_in_file_is_refused() -> None:
    data = base()
    data["models"]["subject"]["api_key"] = "sk-should-not-be-here"
    msg = _error(data)
    assert "models.subject.api_key: unknown key" in msg
    assert "sk-should-not-be-here" not in msg


def test_missing_subject_and_missing_keys() -> None:
    data = base()
    data["models"] = {"judge": data["models"]["subject"]}
    assert "'subject' role" in _error(data)
    data = base()
    del data["dataset"]
    assert "dataset: required key is missing" in _error(data)


def test_bad_shard_and_model_source() -> None:
    data = base()
    data["dataset"]["shard"] = "5/4"
    assert "dataset.shard" in _error(data)
    data = base()
    data["models"]["subject"] = {"model": "m"}
    assert "models.subject" in _error(data)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\ndataset: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_model_override() -> None:
    spec = parse_spec(base(), source="s")
    spec = apply_model_override(spec, "subject=http://127.0.0.1:9/v1@other")
    assert spec.models["subject"].base_url == "http://127.0.0.1:9/v1"
    assert spec.models["subject"].model == "other"
    spec = apply_model_override(spec, "subject=http://127.0.0.1:7/v1")
    assert spec.models["subject"].model == "other"
    with pytest.raises(SpecError, match="ROLE=URL@NAME"):
        apply_model_override(spec, "nonsense")
    with pytest.raises(SpecError, match="model name is needed"):
        apply_model_override(spec, "judge=http://127.0.0.1:7/v1")


def test_dump_redacts_secret_looking_values(tmp_path: Path) -> None:
    data = base()
    data["models"]["subject"]["params"] = {"extra_body": {"auth_token": "abc123"}}
    data["models"]["subject"]["api_key_env"] = "MY_KEY"
    text = dump_spec(parse_spec(data, source="s"), dataset_path=tmp_path / "d.jsonl")
    assert "abc123" not in text
    assert "MY_KEY" in text  # names of variables are not secrets


def test_fingerprint_changes_with_model_and_solver_only() -> None:
    spec = parse_spec(base(), source="s")
    fp = spec.fingerprint()
    assert spec.model_copy(update={"concurrency": 3}).fingerprint() == fp
    assert apply_model_override(spec, "subject=http://127.0.0.1:7/v1").fingerprint() == fp  # same model
    assert apply_model_override(spec, "subject=http://127.0.0.1:9/v1@other").fingerprint() != fp


def test_model_name_is_required_unless_launched() -> None:
    data = base()
    del data["models"]["subject"]["model"]
    msg = _error(data)
    assert "models.subject: 'model' (the model name sent in requests) is required" in msg
    assert "Value error" not in msg
    data["models"]["subject"] = {"launch": {"kind": "llama-cpp", "port": 5000, "model_path": "m.gguf"}}
    assert parse_spec(data, source="s").models["subject"].model == ""
