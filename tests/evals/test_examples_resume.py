"""Every shipped example survives Ctrl-C: the printed resume command and ``proctor rescore`` work.

Each example runs as a real ``proctor run`` process against fake models on free loopback ports,
either through ``--model ROLE=URL@NAME`` on the shipped spec, or through a copy of the spec whose
URLs point at the fakes (no ``--model``). It runs at concurrency 1 so that SIGINT lands mid-run;
then the test runs exactly the command the program printed, then ``proctor rescore DIR``.

These are the paths a user takes; the run directory's ``spec.yaml`` is read back by both, so any
setting the secret redaction mangles (``max_tokens`` once was) fails them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import load_orchestra_fakes, run_proctor

from proctor._loop import run as run_loop
from proctor.testing import FakeLLMConfig, FakeLLMThread

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

PYCALC_SCRIPT = [
    {"tool_calls": [{"name": "python", "arguments": {"code": "print(6 * 7)"}}]},
    {"tool_calls": [{"name": "answer", "arguments": {"answer": "42"}}]},
]


def _stats_requests(base_url: str) -> int:
    """Chat requests a fake server has seen (its ``/_stats``, beside ``/v1``)."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats", timeout=5) as resp:  # noqa: S310
        return int(json.loads(resp.read())["requests"])


@contextmanager
def orchestra_fakes() -> Iterator[dict[str, str]]:
    """The orchestra example's own stand-ins, on free ports, in a thread with its own loop."""
    fakes = load_orchestra_fakes()
    urls: dict[str, str] = {}
    ready = threading.Event()
    stop = threading.Event()
    failed: list[BaseException] = []

    async def serve() -> None:
        import asyncio

        async with AsyncExitStack() as stack:
            urls.update(await fakes.start(stack, fixed_ports=False))
            ready.set()
            await asyncio.to_thread(stop.wait)

    def target() -> None:
        try:
            run_loop(serve())
        except BaseException as exc:  # reported to the test below
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        assert ready.wait(30) and not failed, failed
        yield urls
    finally:
        stop.set()
        thread.join(30)


def _copy_spec(example: str, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The shipped spec with its URLs edited, written beside nothing: its dataset path made absolute."""
    spec = yaml.safe_load((EXAMPLES / example / "spec.yaml").read_text())
    spec["dataset"]["path"] = str((EXAMPLES / example / spec["dataset"]["path"]).resolve())
    edit(spec)
    path = tmp_path / f"{example}-spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@contextmanager
def scenario(example: str, with_model: bool, tmp_path: Path) -> Iterator[tuple[Path, list[str], str | None]]:
    """(spec to run, extra ``proctor run`` arguments, a fake URL whose requests show progress).

    Without a fake (the real model), progress shows in the ledger instead.
    """
    if example == "orchestra":
        with orchestra_fakes() as urls:
            roles = {
                "subject": "orchestrator",
                "searcher": "searcher",
                "coder": "coder",
                "answerer": "answerer",
                "judge": "judge",
            }

            def edit(spec: dict[str, Any]) -> None:
                for tool in spec["solver"]["tools"]:
                    if "retrieve" in tool:  # the stand-in instead of the launched real service
                        tool["retrieve"].pop("launch", None)
                        tool["retrieve"]["url"] = urls["retrieval"]
                if not with_model:
                    for role, name in roles.items():
                        spec["models"][role]["base_url"] = urls[name]

            spec = _copy_spec(example, tmp_path, edit)
            extra = [f"--model={role}={urls[name]}@{name}" for role, name in roles.items()] if with_model else []
            yield spec, extra, urls["orchestrator"]
        return
    if not with_model and example in ("demo", "pycalc"):  # the spec launches the real model
        yield EXAMPLES / example / "spec.yaml", [], None
        return
    cfg = FakeLLMConfig(latency=0.05, script=PYCALC_SCRIPT) if example == "pycalc" else FakeLLMConfig(latency=0.05)
    with FakeLLMThread(cfg) as llm:
        if with_model:
            yield EXAMPLES / example / "spec.yaml", [f"--model=subject={llm.base_url}@fake"], llm.base_url
        else:

            def point(spec: dict[str, Any]) -> None:
                spec["models"]["subject"]["base_url"] = llm.base_url

            yield _copy_spec(example, tmp_path, point), [], llm.base_url


def _started(watch_url: str | None, ledger: Path) -> bool:
    if watch_url is not None:
        return _stats_requests(watch_url) >= 2
    if not ledger.exists():
        return False
    conn = sqlite3.connect(ledger, timeout=5)
    try:
        return bool(conn.execute("SELECT count(*) FROM samples WHERE state IN ('scored', 'error')").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return False
    finally:
        conn.close()


# Without --model, demo and pycalc launch the real small model: see the README on --realmodel.
REAL = pytest.mark.realmodel
CASES = [
    pytest.param("arith", True, id="arith-model"),
    pytest.param("arith", False, id="arith-spec"),
    pytest.param("mcq", True, id="mcq-model"),
    pytest.param("mcq", False, id="mcq-spec"),
    pytest.param("orchestra", True, id="orchestra-model"),
    pytest.param("orchestra", False, id="orchestra-spec"),
    pytest.param("demo", True, id="demo-model"),
    pytest.param("demo", False, id="demo-spec", marks=REAL),
    pytest.param("pycalc", True, id="pycalc-model"),
    pytest.param("pycalc", False, id="pycalc-spec", marks=REAL),
]


@pytest.mark.slow
@pytest.mark.parametrize(("example", "with_model"), CASES)
def test_example_interrupted_then_resumed_by_the_printed_command_then_rescored(
    tmp_path: Path, example: str, with_model: bool
) -> None:
    out = tmp_path / "run dir"  # a space: the printed command must quote it
    env = {k: v for k, v in os.environ.items() if k != "TAVILY_API_KEY"}
    with scenario(example, with_model, tmp_path) as (spec, extra, watch_url):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proctor",
                "run",
                str(spec),
                "--out",
                str(out),
                "--concurrency",
                "1",
                "--progress",
                "plain",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + (60 if watch_url else 600)  # a real model starts in minutes
            while not _started(watch_url, out / "ledger.sqlite") and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress in time"
                time.sleep(0.01 if watch_url else 0.2)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        assert proc.returncode == 130, stdout + stderr
        printed = re.findall(r"resume with: (.+)", stdout + stderr)
        assert printed, stdout + stderr
        argv = shlex.split(printed[-1])
        assert argv[0] == "proctor"
        stats = json.loads((out / "eval_stats.json").read_text())
        assert stats["counts"]["pending"] + stats["counts"]["running"] > 0  # it really stopped mid-run

        resumed = subprocess.run(
            [sys.executable, "-m", "proctor", *argv[1:]],
            capture_output=True,
            text=True,
            timeout=180 if watch_url else 1800,
            env=env,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        rescored = run_proctor("rescore", out, env=env, timeout=180)
        assert rescored.returncode == 0, rescored.stdout + rescored.stderr

    stats = json.loads((out / "eval_stats.json").read_text())
    counts = stats["counts"]
    assert counts["pending"] + counts["running"] == 0 and stats["errors"]["total"] == 0, stats
    assert counts["scored"] + counts["skipped"] == counts["total"] > 0, counts
    assert counts["scored"] == stats["accuracy"]["denominator"] > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["state"] == "scored" or s["error"]["class"] == "skipped" for s in samples)
