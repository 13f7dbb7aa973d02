"""`proctor run` as a real child process against the fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import arith_rows, read_jsonl, run_proctor, write_spec

from proctor.testing import FakeLLMThread

FAST_RETRY = "\n".join(
    [
        "    retry: {max_attempts: 2, backoff_base: 0.01, backoff_max: 0.02}",
        "    health: {check_at_start: false}",
    ]
)


def spec_with_retry(tmp_path: Path, base_url: str, **kw: object) -> Path:
    spec = write_spec(tmp_path, base_url, **kw)  # type: ignore[arg-type]
    text = spec.read_text().replace(
        f"  subject: {{base_url: {base_url}, model: fake}}",
        f"  subject:\n    base_url: {base_url}\n    model: fake\n{FAST_RETRY}",
    )
    spec.write_text(text)
    return spec


def test_run_writes_every_output(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=30)
    out = tmp_path / "run"
    result = run_proctor("run", spec, "--out", out, "--progress", "plain")
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "progress: 30/30" in result.stdout
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["final"] is True
    assert stats["counts"]["scored"] == 30 and stats["counts"]["error"] == 0
    assert stats["accuracy"]["denominator"] == 30
    assert stats["accuracy"]["correct"] == 20  # every third target is wrong on purpose
    lo, hi = stats["accuracy"]["ci95"]
    assert lo < 20 / 30 < hi
    assert set(stats["by_category"]) == {"even", "odd"}
    assert stats["tokens"]["in"] > 0 and stats["latency"]["model_call_s"]["n"] == 30
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["id"] for s in samples] == [f"q{i}" for i in range(30)]
    assert {"id", "input", "target", "output", "score", "error"} <= set(samples[0])
    trajs = read_jsonl(out / "traj_log_all.jsonl")
    assert trajs[0]["messages"][-1]["role"] == "assistant"
    events = read_jsonl(out / "events.jsonl")
    assert len(events) == 30
    assert {"role", "model", "endpoint", "start", "duration", "tokens_in", "tokens_out", "retries", "status"} <= set(
        events[0]
    )
    assert events[0]["role"] == "subject" and events[0]["status"] == "ok"
    assert "run arith: 30 samples" in (out / "run.log").read_text()
    assert "api_key" not in (out / "spec.yaml").read_text()
    assert all(n == 1 for n in fake_llm.counts.values()) and len(fake_llm.counts) == 30


def test_bad_datasets_exit_2_before_any_request(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    rows = arith_rows(5)
    cases = {
        "duplicate": ([*rows, rows[1]], "1 duplicate sample id(s): 'q1' (line 2, line 6)"),
        "missing_field": (
            [*rows[:3], {"id": "x", "answer": "1"}],
            "line 4: field 'question' (mapped to input) is missing",
        ),
    }
    for name, (data, message) in cases.items():
        case_dir = tmp_path / name
        case_dir.mkdir()
        spec = write_spec(case_dir, fake_llm.base_url, rows=data)
        result = run_proctor("run", spec, "--out", case_dir / "run")
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    spec = write_spec(broken, fake_llm.base_url, n=3)
    (broken / "data.jsonl").write_text((broken / "data.jsonl").read_text() + "{not json\n")
    result = run_proctor("run", spec, "--out", broken / "run")
    assert result.returncode == 2 and "line 4 is not valid JSON" in result.stderr
    (broken / "data.jsonl").unlink()
    result = run_proctor("run", spec, "--out", broken / "run")
    assert result.returncode == 2 and "dataset file not found" in result.stderr
    assert fake_llm.stats()["requests"] == 0


def test_bad_spec_and_flags_exit_2(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=3, extra="concurency: 4\n")
    result = run_proctor("run", spec)
    assert result.returncode == 2 and "concurency: unknown key" in result.stderr
    assert run_proctor("run", tmp_path / "missing.yaml").returncode == 2
    result = run_proctor("run", spec, "--limit", "zero")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    spec.write_text(spec.read_text().replace("concurency: 4\n", ""))
    result = run_proctor("run", spec, "--model", "subject")
    assert result.returncode == 2 and "ROLE=URL@NAME" in result.stderr
    assert fake_llm.stats()["requests"] == 0


def test_resume_redoes_nothing(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=20)
    out = tmp_path / "run"
    assert run_proctor("run", spec, "--out", out, "--limit", "8").returncode == 0
    assert len(fake_llm.counts) == 8
    assert json.loads((out / "eval_stats.json").read_text())["resumed_samples"] == 0
    result = run_proctor("run", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(fake_llm.counts) == 20 and set(fake_llm.counts.values()) == {1}
    # The report tells this session's calls and time from the run's totals.
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["resumed_samples"] == 8 and stats["latency"]["model_call_s"]["n"] == 12
    assert "12 this session" in result.stdout and "8 samples were finished before" in result.stdout
    assert run_proctor("run", spec, "--out", out).returncode == 0
    assert fake_llm.stats()["requests"] == 20
    assert json.loads((out / "eval_stats.json").read_text())["counts"]["scored"] == 20


def test_infra_errors_are_kept_apart_and_retried_on_request(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    failing = "q1"  # the fake server counts by the X-Proctor-Sample-Id header
    fake_llm.reconfigure(fail_samples={failing: -1})
    spec = spec_with_retry(tmp_path, fake_llm.base_url, n=12)
    out = tmp_path / "run"
    result = run_proctor("run", spec, "--out", out)
    assert result.returncode == 1, result.stderr
    assert "--retry-errors" in result.stdout
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["counts"]["scored"] == 11 and stats["errors"] == {
        "total": 1,
        "infra": 1,
        "other": 0,
        "by_class": {"http_5xx": 1},
    }
    assert stats["accuracy"]["denominator"] == 11  # the infra error is not a wrong answer
    record = next(s for s in read_jsonl(out / "samples.jsonl") if s["id"] == "q1")
    assert record["error"]["class"] == "http_5xx" and record["error"]["infra"] is True and record["score"] is None
    assert fake_llm.counts[failing] == 2  # bounded: max_attempts
    # A plain resume leaves the error alone; --retry-errors runs only that sample again.
    assert run_proctor("run", spec, "--out", out).returncode == 1
    assert fake_llm.counts[failing] == 2
    fake_llm.reconfigure(fail_samples={})
    result = run_proctor("run", spec, "--out", out, "--retry-errors")
    assert result.returncode == 0, result.stderr
    assert fake_llm.counts[failing] == 3
    assert sum(fake_llm.counts.values()) == 11 + 3
    assert json.loads((out / "eval_stats.json").read_text())["counts"]["scored"] == 12


def test_incomparable_spec_is_refused_unless_force_new(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=5)
    out = tmp_path / "run"
    assert run_proctor("run", spec, "--out", out).returncode == 0
    spec.write_text(spec.read_text().replace("solver: generate", "solver: {type: generate, system_prompt: Be brief.}"))
    result = run_proctor("run", spec, "--out", out)
    assert result.returncode == 2 and "solver differ" in result.stderr and "--force-new" in result.stderr
    assert fake_llm.stats()["requests"] == 5
    result = run_proctor("run", spec, "--out", out, "--force-new")
    assert result.returncode == 0, result.stderr
    previous = list(out.glob("previous-*"))
    assert len(previous) == 1 and (previous[0] / "ledger.sqlite").exists()
    assert fake_llm.stats()["requests"] == 10


def test_rescore_calls_no_model(tmp_path: Path) -> None:
    with FakeLLMThread() as llm:  # echo: the output is the question itself
        spec = write_spec(tmp_path, llm.base_url, n=6, scorer="exact")
        out = tmp_path / "run"
        assert run_proctor("run", spec, "--out", out).returncode == 0
        before = json.loads((out / "eval_stats.json").read_text())
    assert before["accuracy"]["correct"] == 0
    # The server is gone: rescoring must not need it.
    result = run_proctor("rescore", out, "--scorer", "includes")
    assert result.returncode == 0, result.stderr
    after = json.loads((out / "eval_stats.json").read_text())
    assert after["counts"]["scored"] == 6
    assert after["accuracy"]["correct"] == 0  # "What is 1 + 3?" does not include "4"
    rows = read_jsonl(out / "samples.jsonl")
    assert all(r["output"].startswith("What is") for r in rows)


def test_progress_json_lines(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=5)
    result = run_proctor("run", spec, "--out", tmp_path / "run", env={"PROCTOR_PROGRESS": "json"})
    lines = [
        json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("PROCTOR_PROGRESS ")
    ]
    assert lines and lines[-1]["done"] == 5 and lines[-1]["total"] == 5
    assert set(lines[-1]) == {"done", "total", "errors", "accuracy", "rate", "eta"}


def test_progress_after_a_resume_shows_the_accuracy_of_the_whole_run(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    # The first 10 samples all have wrong targets, the other 20 right ones: the first session
    # scores 0%, the second session alone 100%, the run 20/30.
    rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1 + (i < 10))} for i in range(30)]
    spec = write_spec(tmp_path, fake_llm.base_url, rows=rows)
    out = tmp_path / "run"
    first = run_proctor("run", spec, "--out", out, "--limit", "10")
    assert first.returncode == 0 and json.loads((out / "eval_stats.json").read_text())["accuracy"]["value"] == 0
    result = run_proctor("run", spec, "--out", out, "--progress", "plain", env={"PROCTOR_PROGRESS": "json"})
    assert result.returncode == 0, result.stderr
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["resumed_samples"] == 10 and stats["accuracy"]["value"] == round(20 / 30, 4)
    records = [
        json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("PROCTOR_PROGRESS ")
    ]
    assert records[-1]["done"] == 30 and records[-1]["accuracy"] == stats["accuracy"]["value"]
    plain = [line for line in result.stdout.splitlines() if line.startswith("progress: ")]
    assert plain[-1].startswith("progress: 30/30 (100%), 0 errors, acc 66.7%,"), plain


def test_time_limit_and_context_overflow(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    fake_llm.reconfigure(latency=5.0)
    spec = spec_with_retry(tmp_path, fake_llm.base_url, n=3, extra="time_limit: 0.3\n")
    result = run_proctor("run", spec, "--out", tmp_path / "run")
    assert result.returncode == 1
    stats = json.loads((tmp_path / "run" / "eval_stats.json").read_text())
    assert stats["errors"]["by_class"] == {"time_limit": 3}
    fake_llm.reconfigure(latency=0.0, context_limit=5)
    other = tmp_path / "ctx"
    other.mkdir()
    spec = spec_with_retry(other, fake_llm.base_url, n=3)
    result = run_proctor("run", spec, "--out", other / "run")
    assert result.returncode == 0, result.stderr
    stats = json.loads((other / "run" / "eval_stats.json").read_text())
    assert stats["outcomes"] == {"context_overflow": 3}
    assert stats["accuracy"]["denominator"] == 3 and stats["accuracy"]["correct"] == 0


def test_rejected_key_aborts_the_run(tmp_path: Path) -> None:
    from proctor.testing import FakeLLMConfig

    with FakeLLMThread(FakeLLMConfig(require_key="right")) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=10)
        spec.write_text(spec.read_text().replace("model: fake}", "model: fake, api_key_env: EVAL_KEY}"))
        result = run_proctor("run", spec, "--out", tmp_path / "run", env={"EVAL_KEY": "wrong"})
        assert result.returncode == 2, result.stderr
        assert "EVAL_KEY" in result.stderr and "wrong" not in result.stderr
        assert llm.stats()["requests"] <= 10 + 1  # no retry storm
        result = run_proctor("run", spec, "--out", tmp_path / "run", env={"EVAL_KEY": "right"})
        assert result.returncode == 0, result.stderr


def test_prompt_and_generation_parameters_reach_the_wire(tmp_path: Path) -> None:
    with FakeLLMThread() as llm:  # echo
        spec = write_spec(
            tmp_path,
            llm.base_url,
            n=1,
            extra="""generate:
  temperature: 0.2
  max_tokens: 64
  stop: ["\\n\\n"]
  extra_body: {chat_template_kwargs: {enable_thinking: false}}
""",
        )
        spec.write_text(
            spec.read_text().replace(
                "solver: generate",
                'solver: {type: generate, system_prompt: "Be brief.", template: "Q: {input} ({category})"}',
            )
        )
        result = run_proctor("run", spec, "--out", tmp_path / "run")
        assert result.returncode == 0, result.stderr
        body = llm.stats()["last_request"]
    assert body["model"] == "fake"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64 and body["stop"] == ["\n\n"]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: What is 1 + 3? (even)"},
    ]
    (record,) = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert record["output"] == "Q: What is 1 + 3? (even)"


def test_adding_samples_extends_a_run_but_changing_or_removing_one_is_refused(
    tmp_path: Path, fake_llm: FakeLLMThread
) -> None:
    rows = arith_rows(8)
    spec = write_spec(tmp_path, fake_llm.base_url, rows=rows[:5])
    out = tmp_path / "run"
    assert run_proctor("run", spec, "--out", out).returncode == 0
    # New rows at the end of the file: the run goes on with them only.
    write_spec(tmp_path, fake_llm.base_url, rows=rows)
    result = run_proctor("run", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(fake_llm.counts) == 8 and set(fake_llm.counts.values()) == {1}
    # A changed target, or a removed sample, would mix two datasets in one result.
    changed = [dict(r) for r in rows]
    changed[2]["answer"] = "999"
    write_spec(tmp_path, fake_llm.base_url, rows=changed)
    result = run_proctor("run", spec, "--out", out)
    assert result.returncode == 2 and "1 sample(s) changed their input or target (e.g. 'q2')" in result.stderr
    write_spec(tmp_path, fake_llm.base_url, rows=rows[1:])
    result = run_proctor("run", spec, "--out", out)
    assert result.returncode == 2 and "1 of its samples are no longer in data.jsonl (e.g. 'q0')" in result.stderr
    assert fake_llm.stats()["requests"] == 8
