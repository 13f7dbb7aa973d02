"""``busy_numeric`` (bench/scale.py's CPU-heavy scorer): scores as numeric, refuses a bad cpu_ms."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import run_proctor, write_spec

from proctor.errors import SpecError
from proctor.evals.registry import build_scorer
from proctor.evals.spec import ComponentConfig
from proctor.evals.types import Sample, SolveResult
from proctor.testing import FakeLLMThread


def test_busy_numeric_scores_like_numeric_after_spending_cpu() -> None:
    import asyncio

    scorer = build_scorer(ComponentConfig.model_validate({"type": "busy_numeric", "cpu_ms": 20}))
    before = time.thread_time()
    score = asyncio.run(scorer(Sample(id="a", input="1+1?", target="2"), SolveResult(output="2"), None))  # type: ignore[arg-type]
    assert score.value == 1.0 and time.thread_time() - before >= 0.02


def test_busy_numeric_in_a_run_and_a_bad_cpu_ms(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    accuracy = {}
    for scorer in ("numeric", "{type: busy_numeric, cpu_ms: 1}"):
        spec = write_spec(tmp_path, fake_llm.base_url, n=10, scorer=scorer)
        r = run_proctor("run", spec, "--out", tmp_path / scorer[:8], "--progress", "none")
        assert r.returncode == 0, r.stderr
        accuracy[scorer] = json.loads((tmp_path / scorer[:8] / "eval_stats.json").read_text())["accuracy"]
    assert accuracy["numeric"] == accuracy["{type: busy_numeric, cpu_ms: 1}"]
    assert accuracy["numeric"]["denominator"] == 10
    with pytest.raises(SpecError, match=r"scorer\.cpu_ms"):
        build_scorer(ComponentConfig.model_validate({"type": "busy_numeric", "cpu_ms": "lots"}))
