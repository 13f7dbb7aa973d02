from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_proctor

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
    return {
        "name": "x",
        "dataset": {"path": "d.jsonl"},
        "solver": "generate",
        "scorer": "exact",
        "models": {"subject": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}},
    }


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
    judged = parse_spec({**base(), "scorer": "judge"}, source="s")  # names the judge role, no model for it
    with pytest.raises(SpecError, match="model name is needed"):
        apply_model_override(judged, "judge=http://127.0.0.1:7/v1")
    assert apply_model_override(judged, "judge=http://127.0.0.1:7/v1@j").models["judge"].model == "j"


def test_model_override_of_a_role_the_spec_never_uses_names_the_roles_it_uses() -> None:
    data = base()
    data["models"]["judge"] = dict(data["models"]["subject"])
    data["solver"] = {"type": "agent", "tools": [{"type": "ask_expert", "name": "ask", "roles": ["coder"]}]}
    spec = parse_spec(data, source="s")
    with pytest.raises(SpecError) as err:
        apply_model_override(spec, "judg=http://127.0.0.1:7/v1@x")
    assert err.value.exit_code == 2
    assert str(err.value) == (
        "--model 'judg=http://127.0.0.1:7/v1@x': the spec uses no role 'judg'; its roles are: coder, judge, subject"
    )
    assert apply_model_override(spec, "coder=http://127.0.0.1:7/v1@c").models["coder"].model == "c"


def test_model_override_of_an_unknown_role_exits_2_from_the_cli(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text('{"id": "1", "question": "q", "answer": "a"}\n')
    path = tmp_path / "spec.yaml"
    path.write_text(MINIMAL)
    result = run_proctor("run", path, "--model", "judg=http://127.0.0.1:9/v1@j", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "the spec uses no role 'judg'; its roles are: subject" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_dump_redacts_secret_looking_values(tmp_path: Path) -> None:
    data = base()
    data["models"]["subject"]["params"] = {"extra_body": {"auth_token": "abc123", "api_key": "sk-1", "x-api-key": "k2"}}
    data["models"]["subject"]["api_key_env"] = "MY_KEY"
    data["models"]["subject"]["launch"] = {"kind": "command", "port": 9, "argv": ["x"], "env": {"HF_TOKEN": "hf-3"}}
    text = dump_spec(parse_spec(data, source="s"), dataset_path=tmp_path / "d.jsonl")
    for secret in ("abc123", "sk-1", "k2", "hf-3"):
        assert secret not in text
    assert "MY_KEY" in text  # names of variables are not secrets


def test_dump_keeps_every_ordinary_setting_so_the_run_directory_spec_loads_back_equal(tmp_path: Path) -> None:
    data = base()
    data["generate"] = {"max_tokens": 256, "temperature": 0}
    data["models"]["subject"]["params"] = {"max_tokens": 16, "extra_body": {"max_completion_tokens": 8}}
    data["solver"] = {
        "type": "agent",
        "max_total_tokens": 1000,
        "tools": [{"type": "web_search", "api_key_env": "TAVILY_API_KEY"}, {"type": "python"}],
    }
    spec = apply_model_override(parse_spec(data, source="s"), "subject=http://127.0.0.1:9/v1@other")
    dumped = tmp_path / "spec.yaml"
    dumped.write_text(dump_spec(spec, dataset_path=tmp_path / "d.jsonl"))
    assert "***" not in dumped.read_text()
    again = load_spec(dumped)
    assert again.generate.max_tokens == 256 and again.models["subject"].params.max_tokens == 16
    assert again.model_dump(exclude={"dataset"}) == spec.model_dump(exclude={"dataset"})
    assert again.fingerprint() == spec.fingerprint()


def test_values_typed_as_secrets_are_redacted_wherever_they_are() -> None:
    from pydantic import SecretStr

    from proctor.evals.spec import REDACTED, _redact

    assert _redact({"anything": SecretStr("s3cret"), "list": [SecretStr("x")]}) == {
        "anything": REDACTED,
        "list": [REDACTED],
    }


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("max_tokens", False),
        ("max_completion_tokens", False),
        ("max_total_tokens", False),
        ("api_key_env", False),
        ("token_budget", False),
        ("tokens", False),
        ("api_key", True),
        ("apiKey", True),
        ("APIKEY", True),
        ("OPENAI_API_KEY", True),
        ("x-api-key", True),
        ("HF_TOKEN", True),
        ("token", True),
        ("client_secret", True),
        ("password", True),
        ("Authorization", True),
    ],
)
def test_secret_names_are_whole_words_not_substrings(name: str, secret: bool) -> None:
    from proctor.evals.spec import is_secret_name

    assert is_secret_name(name) is secret


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
