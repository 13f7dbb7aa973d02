"""`proctor lm-eval` (lm-eval's own flags) as a process against the fake LLM server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness.test_lm_eval_run import EXAMPLE, N_GEN, N_MC, N_REQUESTS, expected_metrics, metrics
from helpers import run_proctor

from proctor.testing import FakeLLMConfig, FakeLLMThread

pytest.importorskip("lm_eval")


def lm_eval_flags(base_url: str, tasks: Path, out: Path, model: str = "local-completions") -> list[str]:
    """An lm-eval command line as its users write it (endpoint URL, tokenizer settings and all)."""
    return [
        "--model",
        model,
        "--model_args",
        f"model=fake,base_url={base_url}/completions,num_concurrent=8,max_retries=3,"
        "tokenized_requests=False,tokenizer_backend=none",
        "--tasks",
        "proctor_arith,proctor_arith_mc",
        "--include_path",
        str(tasks),
        "--num_fewshot",
        "0",
        "--gen_kwargs",
        "temperature=0",
        "--output_path",
        str(out),
        "--log_samples",
        "--seed",
        "0",
    ]


def test_lm_evals_flags_run_as_the_spec_and_give_the_same_metrics(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "tasks", tmp_path / "tasks")
    out = tmp_path / "out"
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        # `lm_eval run ...` with one word changed: `proctor lm-eval run ...`.
        result = run_proctor(
            "lm-eval", "run", *lm_eval_flags(llm.base_url, tmp_path / "tasks", out), "--progress", "plain", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        counts = llm.counts
        assert len(counts) == N_REQUESTS and set(counts.values()) == {1}
        # The output path is a run directory: the same command again resumes, sending nothing.
        again = run_proctor(
            "lm-eval", *lm_eval_flags(llm.base_url, tmp_path / "tasks", out), "--progress", "none", cwd=tmp_path
        )
        assert again.returncode == 0, again.stderr
        assert llm.counts == counts
    assert metrics(out) == pytest.approx(expected_metrics())  # the spec path's metrics
    assert "proctor_arith_mc  acc (none):" in result.stdout
    spec = (out / "spec.yaml").read_text()
    assert "concurrency: 8" in spec and "max_attempts: 3" in spec and f"base_url: {llm.base_url}\n" in spec
    results_file = sorted((out / "lm_eval" / "fake").glob("results_*.json"))[-1]  # one per complete run
    assert json.loads(results_file.read_text())["results"]["proctor_arith"]["exact_match,strip"] == pytest.approx(
        expected_metrics()[("proctor_arith", "exact_match")]
    )
    assert f"progress (generate_until requests): {N_GEN}/{N_GEN}" in result.stdout
    assert f"progress (loglikelihood requests): {N_MC * 4}/{N_MC * 4}" in result.stdout


def test_chat_completions_model_sends_generation_as_chat(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "tasks", tmp_path / "tasks")
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        flags = lm_eval_flags(
            llm.base_url.replace("/v1", "/v1/chat"),
            tmp_path / "tasks",
            tmp_path / "out",
            model="local-chat-completions",
        )
        flags[flags.index("--tasks") + 1] = "proctor_arith"
        result = run_proctor("lm-eval", *flags, "--apply_chat_template", "--progress", "none", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        body = llm.server.last_request
    assert body is not None and "messages" in body and "prompt" not in body
    assert metrics(tmp_path / "out") == pytest.approx(
        {("proctor_arith", "exact_match"): expected_metrics()[("proctor_arith", "exact_match")]}
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--model", "hf"], "--model hf is not supported"),
        (["--model_args", "model=fake,base_url=http://127.0.0.1:9/v1,trust_remote_code=True"], "trust_remote_code"),
        (["--batch_size", "8"], "--batch_size"),
        (["--limit", "0.5"], "--limit"),
        (["--model_args", "model=fake,base_url=http://127.0.0.1:9/v1,tokenized_requests=True"], "tokenized_requests"),
    ],
)
def test_unsupported_flags_and_model_types_are_refused_in_one_line(
    tmp_path: Path, change: list[str], named: str
) -> None:
    flags = lm_eval_flags("http://127.0.0.1:9/v1", tmp_path, tmp_path / "out")
    if change[0] in flags:
        flags[flags.index(change[0]) + 1] = change[1]
    else:
        flags += change
    result = run_proctor("lm-eval", *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and named in error_lines[0]
    assert "hint:" in result.stderr  # says what to do
    assert not (tmp_path / "out").exists()


def test_openai_model_types_default_to_openai_with_the_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proctor.cli.lm_eval import build_spec

    monkeypatch.chdir(tmp_path)
    data, options = build_spec(
        [
            "--model",
            "openai-chat-completions",
            "--model_args",
            "model=gpt-4o-mini",
            "--tasks",
            "gsm8k",
            "--include_path",
            "tasks",
            "--limit",
            "5",
            "--seed",
            "1,1,1",
        ]
    )
    assert data["models"]["subject"] == {
        "base_url": "https://api.openai.com/v1",
        "model": "gpt-4o-mini",
        "api_key_env": "OPENAI_API_KEY",
    }
    assert data["lm_eval"]["apply_chat_template"] is True and data["lm_eval"]["limit"] == 5
    assert data["lm_eval"]["seed"] == 1 and data["lm_eval"]["include_path"] == str(tmp_path / "tasks")
    assert options["out"] is None
