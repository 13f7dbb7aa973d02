"""Outputs during and after a run, progress display, `proctor analyze`, and the shipped examples."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import read_jsonl, run_proctor, write_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_reports_are_refreshed_during_the_run(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.1)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=60, concurrency=2)
        out = tmp_path / "run"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proctor",
                "run",
                str(spec),
                "--out",
                str(out),
                "--report-interval",
                "0.3",
                "--progress",
                "none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen_partial = None
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                stats_file = out / "eval_stats.json"
                if stats_file.exists():
                    stats = json.loads(stats_file.read_text())  # atomic: always a whole file
                    if not stats["final"] and stats["counts"]["scored"] > 0:
                        seen_partial = stats
                        break
                time.sleep(0.05)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert seen_partial is not None and seen_partial["counts"]["scored"] < 60
    final = json.loads((out / "eval_stats.json").read_text())
    assert final["final"] is True and final["counts"]["scored"] == 60


def test_rich_progress_bar(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=10)
    result = run_proctor("run", spec, "--out", tmp_path / "run", "--progress", "rich")
    assert result.returncode == 0
    assert "samples" in result.stdout and "10/10" in result.stdout and "acc" in result.stdout


def test_analyze_tables_json_and_plots(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=12)
    out = tmp_path / "run"
    assert run_proctor("run", spec, "--out", out).returncode == 0
    result = run_proctor("analyze", out, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["events"] == 12
    (group,) = data["groups"]
    assert group["section"] == "model" and group["name"] == "subject" and group["count"] == 12
    assert group["target"] == fake_llm.base_url and sum(group["histogram"]["counts"]) == 12
    result = run_proctor("analyze", out, "--plots")
    assert result.returncode == 0 and "subject" in result.stdout
    assert next((out / "analysis").glob("hist-model-subject-*.png")).stat().st_size > 1000
    assert (out / "analysis" / "concurrency.png").exists()
    result = run_proctor("analyze", tmp_path)
    assert result.returncode == 2 and "no events.jsonl" in result.stderr


def test_shipped_examples_run_against_a_fake_that_knows_some_answers() -> None:
    for name, field in (("arith", "answer"), ("mcq", "answer")):
        rows = read_jsonl(EXAMPLES / name / "data.jsonl")

        # The fake answers the first half right and says "I don't know" to the rest.
        def key(r: dict) -> str:  # unique per sample (some MCQ questions share their text)
            return f"A) {r['choices'][0]}\nB) {r['choices'][1]}" if "choices" in r else r["question"]

        answers = {key(r): f"Answer: {r[field]}" for r in rows[: len(rows) // 2]}
        with FakeLLMThread(FakeLLMConfig(reply="I don't know", answers=answers)) as llm:
            with __import__("tempfile").TemporaryDirectory() as tmp:
                out = Path(tmp) / "run"
                result = run_proctor(
                    "run", EXAMPLES / name / "spec.yaml", "--out", out, "--model", f"subject={llm.base_url}@fake"
                )
                assert result.returncode == 0, (name, result.stderr)
                stats = json.loads((out / "eval_stats.json").read_text())
        assert stats["counts"]["scored"] == len(rows) <= 200
        assert stats["accuracy"]["correct"] >= len(rows) // 2 - 1, name
        assert len(stats["by_category"]) >= 4
