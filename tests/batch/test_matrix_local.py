"""`proctor run SPEC... --model ... --parallel K`: a matrix of local runs, each resumable on its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import run_proctor, wait_for, write_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread


def free_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.mark.parametrize("to", ["parent", "group"])
def test_an_interrupted_matrix_resumes_with_the_same_command_and_redoes_nothing(tmp_path: Path, to: str) -> None:
    """SIGINT to the parent alone, or to its whole process group as Ctrl-C at a terminal sends it.

    Each run must get exactly one SIGINT either way: a second one would stop it at once, without
    letting its samples in flight finish, and the resume would request them again.
    """
    n = 24
    with (
        FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.2, model="m-one")) as one,
        FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.02, model="m-two")) as two,
    ):
        spec = write_spec(tmp_path, one.base_url, n=n, concurrency=2)
        runs = tmp_path / "runs"
        args = [str(spec), "--model", f"subject={one.base_url}@m-one", "--model", f"subject={two.base_url}@m-two"]
        command = [sys.executable, "-m", "proctor", "run", *args, "--parallel", "1", "--out", str(runs)]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            wait_for(lambda: sum(one.counts.values()) >= 4 or proc.poll() is not None)
            if to == "parent":
                proc.send_signal(signal.SIGINT)  # it passes it on to the run it started
            else:
                # The runs are in process groups of their own, so the terminal's Ctrl-C (a SIGINT
                # to every process of the foreground group) reaches the parent alone.
                runs_now = psutil.Process(proc.pid).children()
                assert runs_now and all(os.getpgid(child.pid) != proc.pid for child in runs_now)
                os.killpg(proc.pid, signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130, stdout + stderr
        assert "Traceback" not in stdout + stderr
        first = runs / "arith--m-one"
        assert "interrupted" in stdout and "not started" in stdout and "started  arith--m-one" in stdout
        assert f"arith--m-one: proctor run {first / 'spec.yaml'} --out {first}" in stdout  # its own resume
        assert "run the same command again" in stdout
        done_before = dict(one.counts)
        assert 0 < len(done_before) < n and two.counts == {}  # the second run never started
        assert json.loads((first / "eval_stats.json").read_text())["final"] is False

        again = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        # Every sample was requested exactly once from each model: the interrupted run let its
        # samples in flight finish, and its resume redid none of them.
        assert one.counts == {f"q{i}": 1 for i in range(n)}
        assert two.counts == {f"q{i}": 1 for i in range(n)}
    for name in ("arith--m-one", "arith--m-two"):
        stats = json.loads((runs / name / "eval_stats.json").read_text())
        assert stats["counts"]["scored"] == n and stats["final"] is True
        assert (runs / name / "console.log").is_file()
    assert "summary" in again.stdout and again.stdout.count("done") >= 2


def test_one_failing_run_leaves_the_others_and_the_exit_code_is_the_worst(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=6)
        other = tmp_path / "other"
        other.mkdir()
        second = write_spec(other, llm.base_url, n=4)
        second.write_text(second.read_text().replace("name: arith", "name: second"))
        dead = free_url()
        result = run_proctor(
            "run",
            spec,
            second,
            "--model",
            f"subject={dead}@gone",
            "--model",
            f"subject={llm.base_url}@fake",
            "--parallel",
            "3",
            "--limit",
            "3",
            "--out",
            tmp_path / "runs",
            timeout=180,
        )
    # the run whose model is unreachable fails at start (bad input, 2); the other three finish
    assert result.returncode == 2, result.stdout + result.stderr
    for name, total in (("arith--fake", 3), ("second--fake", 3)):  # --limit 3 reached every run
        assert json.loads((tmp_path / "runs" / name / "eval_stats.json").read_text())["counts"]["scored"] == total
    assert "bad input" in result.stdout


def test_bad_input_in_any_cell_starts_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", n=3)
    result = run_proctor(
        "run",
        spec,
        spec,
        "--model",
        "subject=http://127.0.0.1:9/v1@a",
        "--model",
        "judg=http://127.0.0.1:9/v1@j",
        "--out",
        tmp_path / "runs",
    )
    assert result.returncode == 2 and "judg" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
    dry = run_proctor("run", spec, spec, "--dry-run", "--out", tmp_path / "runs")
    assert dry.returncode == 2 and "--dry-run takes one spec" in dry.stderr and "Traceback" not in dry.stderr
    assert not (tmp_path / "runs").exists()


def test_one_spec_and_one_model_is_todays_run_even_with_parallel(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=3)
        result = run_proctor(
            "run", spec, "--model", f"subject={llm.base_url}@fake", "--parallel", "4", "--out", tmp_path / "run"
        )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "ledger.sqlite").is_file()  # --out is the run directory itself
    assert "summary" not in result.stdout
