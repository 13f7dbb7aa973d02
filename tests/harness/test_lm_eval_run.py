"""lm-eval tasks run by `proctor run` (real processes) against the fake LLM server."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import read_jsonl, run_proctor

from proctor.testing import FakeLLMConfig, FakeLLMThread
from proctor.testing._replies import arith

pytest.importorskip("lm_eval")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lm-eval"
N_GEN, N_MC, N_CHOICES = 40, 30, 4
N_REQUESTS = N_GEN + N_MC * N_CHOICES


def copy_example(tmp_path: Path, models: str = "") -> Path:
    """The example spec and tasks in tmp_path (a test may add settings to the subject role)."""
    shutil.copytree(EXAMPLE / "tasks", tmp_path / "tasks")
    spec = (EXAMPLE / "spec.yaml").read_text()
    if models:
        spec = spec.replace("  subject: {base_url: http://127.0.0.1:8000/v1, model: fake}", models)
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path / "spec.yaml"


def expected_metrics() -> dict[tuple[str, str], float]:
    """What the fake model (arith, truncating division) scores, computed from the data alone."""
    gen = read_jsonl(EXAMPLE / "tasks" / "arith_gen.jsonl")
    mc = read_jsonl(EXAMPLE / "tasks" / "arith_mc.jsonl")
    gen_right = sum(arith(r["question"]) == r["answer"] for r in gen) / len(gen)
    mc_right = sum(r["choices"].index(arith(r["question"])) == r["gold"] for r in mc) / len(mc)
    assert 0 < gen_right < 1 and 0 < mc_right < 1  # the data makes the metrics informative
    return {
        ("proctor_arith", "exact_match"): gen_right,
        ("proctor_arith_mc", "acc"): mc_right,
        ("proctor_arith_mc", "acc_norm"): mc_right,
    }


def metrics(out: Path) -> dict[tuple[str, str], float]:
    stats = json.loads((out / "eval_stats.json").read_text())
    return {(b["task"], b["metric"]): b["value"] for b in stats["metrics"]}


def ledger_labels(out: Path, state: str = "scored") -> set[str]:
    """Labels (task/doc/idx) of the requests the ledger holds in ``state``."""
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        return {json.loads(r[0]) for r in conn.execute("SELECT target FROM samples WHERE state=?", (state,))}
    finally:
        conn.close()


def test_generation_and_multiple_choice_metrics_with_lm_eval_outputs(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        spec = copy_example(tmp_path)
        out = tmp_path / "run"
        args: list[Any] = ["run", spec, "--out", out, "-m", f"subject={llm.base_url}@fake", "--progress", "plain"]
        result = run_proctor(*args)
        assert result.returncode == 0, result.stderr
        counts = llm.counts
        assert len(counts) == N_REQUESTS and set(counts.values()) == {1}  # each request sent once
        # Run again: every answer comes from the ledger, none from the model.
        first = metrics(out)
        again = run_proctor(*args)
        assert again.returncode == 0, again.stderr
        assert llm.counts == counts
    assert first == pytest.approx(expected_metrics())
    assert metrics(out) == first
    assert "progress (generate_until requests): 40/40" in result.stdout
    assert f"progress (loglikelihood requests): {N_MC * N_CHOICES}/{N_MC * N_CHOICES}" in result.stdout
    # lm-eval's own --output_path layout: results JSON and per-task samples.
    (results_file, *_) = sorted((out / "lm_eval" / "fake").glob("results_*.json"))
    results = json.loads(results_file.read_text())
    assert results["results"]["proctor_arith_mc"]["acc,none"] == pytest.approx(first[("proctor_arith_mc", "acc")])
    for task, n in (("proctor_arith", N_GEN), ("proctor_arith_mc", N_MC)):
        samples = sorted((out / "lm_eval" / "fake").glob(f"samples_{task}_2*.jsonl"))  # the date follows the name
        assert samples and len(read_jsonl(samples[0])) == n
    assert sum(1 for e in read_jsonl(out / "events.jsonl") if e["kind"] == "model") == N_REQUESTS
    assert "run arith-lm-eval: lm-eval tasks proctor_arith, proctor_arith_mc" in (out / "run.log").read_text()


def test_kill_9_at_random_moments_then_resume_redoes_no_answered_request(tmp_path: Path) -> None:
    rng = random.Random(os.getpid())
    concurrency = 4
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.03, jitter=0.01)) as llm:
        spec = copy_example(tmp_path)
        out = tmp_path / "run"
        argv = [
            sys.executable,
            "-m",
            "proctor",
            "run",
            str(spec),
            "--out",
            str(out),
            "-c",
            str(concurrency),
            "-m",
            f"subject={llm.base_url}@fake",
            "--progress",
            "none",
        ]
        durable: dict[str, int] = {}
        kills = 0
        for _ in range(2):
            target = llm.stats()["requests"] + rng.randint(5, 40)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 60
                while llm.stats()["requests"] < target and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.2))
            finally:
                proc.kill()  # SIGKILL: no cleanup at all
                proc.wait(timeout=30)
            kills += 1
            counts = llm.counts
            for label in ledger_labels(out):  # durable now: never to be requested again
                durable.setdefault(label, counts[label])
        assert 0 < len(durable) < N_REQUESTS
        final = run_proctor("run", *argv[4:])
        assert final.returncode == 0, final.stderr
        counts = llm.counts
    assert {label: counts[label] for label in durable} == durable  # no answered request was redone
    assert sum(counts.values()) - N_REQUESTS <= kills * concurrency  # only those in flight at a kill
    assert len(counts) == N_REQUESTS
    assert metrics(out) == pytest.approx(expected_metrics())


def test_a_request_that_keeps_failing_withholds_the_metrics_and_retry_errors_redoes_only_it(tmp_path: Path) -> None:
    failing = "proctor_arith/3/0"
    cfg = FakeLLMConfig(reply="arith", fail_samples={failing: -1})
    models = (
        "  subject:\n    base_url: http://127.0.0.1:8000/v1\n    model: fake\n"
        "    retry: {max_attempts: 2, backoff_base: 0.01, backoff_max: 0.02}"
    )
    with FakeLLMThread(cfg) as llm:
        spec = copy_example(tmp_path, models)
        out = tmp_path / "run"
        args: list[Any] = ["run", spec, "--out", out, "-m", f"subject={llm.base_url}@fake", "--progress", "none"]
        result = run_proctor(*args)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "1 request(s) failed; metrics withheld" in result.stdout
        assert failing in result.stdout and "--retry-errors" in result.stdout
        stats = json.loads((out / "eval_stats.json").read_text())
        assert stats["status"] == "incomplete" and stats["metrics"] is None
        assert [f["request"] for f in stats["failures"]] == [failing]
        assert not (out / "lm_eval").exists()  # no results computed over a placeholder answer
        assert ledger_labels(out, "error") == {failing}
        # Still failing without --retry-errors: the stored error is reported, nothing is sent.
        before = llm.stats()["requests"]
        again = run_proctor(*args)
        assert again.returncode == 1 and failing in again.stdout
        assert llm.stats()["requests"] == before
        # The server recovers: --retry-errors sends that one request only, and the run completes.
        llm.reconfigure(fail_samples={})
        counts_before = llm.counts
        fixed = run_proctor(*args, "--retry-errors")
        assert fixed.returncode == 0, fixed.stderr
        counts = llm.counts
    sent = {k: counts[k] - counts_before.get(k, 0) for k in counts if counts[k] != counts_before.get(k, 0)}
    assert sent == {failing: 1}
    assert metrics(out) == pytest.approx(expected_metrics())


def test_without_lm_eval_the_run_says_how_to_install_it(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)
    code = (
        "import sys; sys.modules['lm_eval'] = None; from proctor.cli.main import main; "
        f"sys.argv = ['proctor', 'run', {str(spec)!r}, '--out', {str(tmp_path / 'run')!r}]; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "pip install 'proctor[lm-eval]'" in result.stderr + result.stdout


def test_an_include_path_that_is_not_a_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)
    spec.write_text(spec.read_text().replace("include_path: tasks/", "include_path: no-such-dir/"))
    result = run_proctor("run", spec, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "lm_eval.include_path" in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_sigterm_lets_requests_in_flight_finish_and_the_printed_command_resumes(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.2)) as llm:
        spec = copy_example(tmp_path)
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
                "-c",
                "2",
                "-m",
                f"subject={llm.base_url}@fake",
                "--progress",
                "none",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while llm.stats()["requests"] < 6 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert f"resume with: proctor run {out / 'spec.yaml'} --out {out}" in stdout
        assert set(llm.counts) == ledger_labels(out)  # the requests in flight were let finish
        stats = json.loads((out / "eval_stats.json").read_text())
        assert stats["status"] == "interrupted" and stats["final"] is False and stats["metrics"] is None
        llm.reconfigure(latency=0.0)
        resumed = run_proctor("run", out / "spec.yaml", "--out", out, "--progress", "none")
        assert resumed.returncode == 0, resumed.stderr
        counts = llm.counts
    assert len(counts) == N_REQUESTS and set(counts.values()) == {1}
    assert metrics(out) == pytest.approx(expected_metrics())


def test_the_metrics_equal_lm_evals_own_cli_against_the_same_server(tmp_path: Path) -> None:
    tasks = "proctor_arith,proctor_arith_mc"
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        spec = copy_example(tmp_path)
        ours = run_proctor(
            "run", spec, "--out", tmp_path / "run", "-m", f"subject={llm.base_url}@fake", "--progress", "none"
        )
        assert ours.returncode == 0, ours.stderr
        # lm-eval's own API model, with the test server's vLLM-style tokenizer endpoints.
        model_args = (
            f"base_url={llm.base_url}/completions,model=fake,tokenizer_backend=remote,"
            "tokenized_requests=False,num_concurrent=8"
        )
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
        theirs = subprocess.run(
            [
                sys.executable,
                "-m",
                "lm_eval",
                "run",
                "--model",
                "local-completions",
                "--model_args",
                model_args,
                "--tasks",
                tasks,
                "--include_path",
                str(tmp_path / "tasks"),
                "--num_fewshot",
                "0",
                "--gen_kwargs",
                "temperature=0",
                "--output_path",
                str(tmp_path / "cli"),
            ],
            capture_output=True,
            text=True,
            timeout=600,  # lm-eval's start-up alone takes tens of seconds on a loaded host
            env=env,
            cwd=tmp_path,
        )
        assert theirs.returncode == 0, theirs.stderr[-2000:]
    (cli_file,) = (tmp_path / "cli" / "fake").glob("results_*.json")
    (our_file,) = (tmp_path / "run" / "lm_eval" / "fake").glob("results_*.json")
    cli, our = json.loads(cli_file.read_text())["results"], json.loads(our_file.read_text())["results"]
    for task in tasks.split(","):
        keys = [k for k in cli[task] if "," in k]
        assert keys and {k: our[task][k] for k in keys} == pytest.approx({k: cli[task][k] for k in keys})
    assert metrics(tmp_path / "run") == pytest.approx(expected_metrics())


def test_apply_chat_template_sends_generation_as_chat_messages(tmp_path: Path) -> None:
    spec = copy_example(tmp_path)
    spec.write_text(
        spec.read_text()
        .replace("tasks: [proctor_arith, proctor_arith_mc]", "tasks: [proctor_arith]")
        .replace("apply_chat_template: false", "apply_chat_template: true")
    )
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        result = run_proctor(
            "run", spec, "--out", tmp_path / "run", "-m", f"subject={llm.base_url}@fake", "--progress", "none"
        )
        assert result.returncode == 0, result.stderr
        body = llm.server.last_request
    assert body is not None and "prompt" not in body
    assert body["messages"][-1]["role"] == "user" and body["messages"][-1]["content"].startswith("Question: What is")
    assert body["stop"] == ["\n", "Question:"] and body["max_tokens"] == 16 and body["temperature"] == 0
    expected = expected_metrics()[("proctor_arith", "exact_match")]
    assert metrics(tmp_path / "run") == pytest.approx({("proctor_arith", "exact_match"): expected})
