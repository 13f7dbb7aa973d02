"""Issue 17, item 6: a YAML alias bomb and deep nesting are refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import arith_rows, run_proctor, write_jsonl
from security.frontdoor_kit import alias_bomb, proctor_job, served, spec_text

from proctor import _yaml
from proctor.testing import FakeLLMConfig, FakeLLMThread


def test_the_bomb_is_small_and_huge() -> None:
    """The attack as filed: under a kilobyte of text, millions of values once expanded."""
    text = spec_text(alias_bomb())
    assert len(alias_bomb()) < 700
    with pytest.raises(_yaml.YAMLLimitError, match="alias"):
        _yaml.safe_load(text)
    assert _yaml.safe_load(spec_text())["solver"] == "generate"


@pytest.mark.parametrize("doc", ["&a [*a]", "a: &a {b: *a}"])
def test_recursive_alias_refused(doc: str) -> None:
    with pytest.raises(yaml.YAMLError):
        _yaml.safe_load(doc)


def test_deep_nesting_refused_without_recursion_error() -> None:
    with pytest.raises(_yaml.YAMLLimitError, match="deeper than"):
        _yaml.safe_load("x: " + "[" * 5000 + "]" * 5000)


def test_server_refuses_alias_bomb_and_deep_nesting_at_submission(tmp_path: Path) -> None:
    with served(tmp_path) as srv, srv.client() as alice:
        bomb = alice.post("/v1/jobs", json=proctor_job(spec_text(alias_bomb())))
        assert bomb.status_code == 400, bomb.text
        assert bomb.json()["ok"] is False and "alias" in bomb.json()["error"]
        deep = alice.post(
            "/v1/jobs", json=proctor_job(spec_text("generate:\n  extra_body: {x: " + "[" * 3000 + "]" * 3000 + "}\n"))
        )
        assert deep.status_code == 400, deep.text
        assert "deeper than" in deep.json()["error"]
        assert alice.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
        assert list((srv.data / "jobs").glob("*")) == [] if (srv.data / "jobs").exists() else True
    assert "Traceback" not in srv.log_text()


def test_proctor_run_refuses_alias_bomb_before_any_call(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        write_jsonl(tmp_path / "data.jsonl", arith_rows(3))
        spec = tmp_path / "spec.yaml"
        spec.write_text(spec_text(alias_bomb(), base_url=llm.base_url), encoding="utf-8")
        result = run_proctor("run", spec, "--out", tmp_path / "out", timeout=60)
        assert result.returncode == 2, result.stderr
        assert "alias" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "out" / "ledger.sqlite").exists()
        assert llm.stats()["requests"] == 0
