"""`proctor run` options on an ``lm_eval:`` spec: each one either works or is refused in one line,
never silently ignored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness.test_lm_eval_run import EXAMPLE
from helpers import run_proctor

from proctor.testing import FakeLLMConfig, FakeLLMThread


@pytest.mark.parametrize(
    "options", [["--executor", "ray"], ["--workers", "3"], ["--ray-address", "127.0.0.1:6379"]], ids=str
)
def test_executor_options_are_refused_for_an_lm_eval_spec(tmp_path: Path, options: list[str]) -> None:
    result = run_proctor("run", EXAMPLE / "spec.yaml", "--out", tmp_path / "run", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "local executor only" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_dry_run_of_an_lm_eval_spec_probes_its_models_and_runs_nothing(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "ex")
    spec = tmp_path / "ex" / "spec.yaml"
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        spec.write_text(spec.read_text().replace("http://127.0.0.1:8000/v1", llm.base_url))
        result = run_proctor("run", spec, "--out", tmp_path / "run", "--dry-run", cwd=tmp_path)
        calls = llm.stats()["requests"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "where requests go" in result.stdout and llm.base_url in result.stdout
    assert calls == 0 and not (tmp_path / "run").exists()
    dead = run_proctor("run", spec, "--out", tmp_path / "run", "--dry-run", cwd=tmp_path)
    assert dead.returncode == 2 and "no (" in dead.stdout, dead.stdout + dead.stderr
