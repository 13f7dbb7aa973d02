"""``proctor analyze``: every table and histogram on a fixture with values checkable by hand.

``tests/fixtures/events_known.jsonl`` is a small agentic run still in progress (its last line is
torn): an ``orchestrator`` role at two replicas, a ``search`` tool whose expert role ``searcher``
(model ``m-search``) has its own replica, and a ``python`` tool.

- orchestrator at :9101 took 2, 4, 4, 4, 5, 5, 7, 9 s: mean 5, std 2 (population), p50 4.5, half of
  them under 5 s. Its spans [0,2) [0,4) [2,6) [1,5) [6,11) [6,11) [4,11) [11,20) have at most 3 in
  flight: the call that starts at 2 s as another ends does not overlap it.
- orchestrator at :9102 took 100, 301, 310, 350 s (samples s1..s4): 3 over 300 s.
- search took 2, 4, 6 s end to end; its expert's own calls 1 and 3 s.
- samples s1, s2, s3 have the agent's ``sample`` record; s4 is still running and is described
  from its calls (3 model calls, 1 tool call, first start 1 s, last end 380 s).
"""

from __future__ import annotations

import csv
import io
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_proctor, write_spec

from proctor.errors import InputError
from proctor.profiling.analysis import (
    Options,
    analyze_events,
    compare,
    concurrency_timeline,
    expert_tools,
    load_events,
)
from proctor.profiling.events import read_events
from proctor.profiling.stats import histogram, latency_summary, quantile
from proctor.testing import FakeLLMConfig, FakeLLMThread

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "events_known.jsonl"
R1, R2, R3 = "http://127.0.0.1:9101/v1", "http://127.0.0.1:9102/v1", "http://127.0.0.1:9103/v1"


def _groups(result: dict) -> dict[tuple[str, str, str], dict]:
    return {(g["section"], g["name"], g["target"]): g for g in result["groups"]}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_bytes(FIXTURE.read_bytes())
    return run


def test_the_torn_last_line_of_a_run_in_progress_is_skipped() -> None:
    lines = FIXTURE.read_text().split("\n")
    assert not lines[-1].endswith("}")  # the fixture really ends mid-event
    events = read_events(FIXTURE)
    assert len(events) == len(lines) - 1
    assert sum(1 for e in events if e["kind"] in ("model", "tool")) == 19


def test_latency_table_per_role_and_replica() -> None:
    groups = _groups(analyze_events(read_events(FIXTURE), Options()))
    assert set(groups) == {
        ("tool", "search", ""),
        ("tool", "python", ""),
        ("expert", "search", "m-search"),
        ("model", "orchestrator", R1),
        ("model", "orchestrator", R2),
        ("model", "searcher", R3),
    }
    r1 = groups[("model", "orchestrator", R1)]
    assert {k: r1[k] for k in ("count", "mean", "std", "min", "max", "p10", "p25", "p50", "p90", "p95", "p99")} == {
        "count": 8,
        "mean": 5.0,
        "std": 2.0,
        "min": 2.0,
        "max": 9.0,
        "p10": 3.4,
        "p25": 4.0,
        "p50": 4.5,
        "p90": 7.6,
        "p95": 8.3,
        "p99": 8.86,
    }
    assert r1["under_share"] == 0.5 and r1["over_long"] == 0
    assert r1["errors"] == 1 and r1["retries"] == 3
    assert r1["slowest"][:2] == [{"sample_id": "s4", "duration": 9.0}, {"sample_id": "s3", "duration": 7.0}]
    r2 = groups[("model", "orchestrator", R2)]
    assert r2["mean"] == 265.25 and r2["std"] == round(math.sqrt(9442.6875), 4) and r2["under_share"] == 0.0
    assert r2["over_long"] == 3
    assert [s["sample_id"] for s in r2["slowest"]] == ["s4", "s3", "s2", "s1"]


def test_thresholds_are_options() -> None:
    r1 = _groups(analyze_events(read_events(FIXTURE), Options(under=2.5, long=6.0)))[("model", "orchestrator", R1)]
    assert r1["under_share"] == 0.125  # only the 2 s call is shorter than 2.5 s
    assert r1["over_long"] == 2  # 7 and 9 s
    # Strictly under and strictly over: a call of exactly the threshold is neither.
    edge = latency_summary([4.0, 4.0, 9.0], under=4.0, long=9.0)
    assert edge["under_share"] == 0.0 and edge["over_long"] == 0


def test_tools_end_to_end_and_each_experts_own_calls() -> None:
    groups = _groups(analyze_events(read_events(FIXTURE), Options()))
    search = groups[("tool", "search", "")]
    assert search["count"] == 3 and search["mean"] == 4.0 and search["std"] == round(math.sqrt(8 / 3), 4)
    assert search["under_share"] == round(2 / 3, 4) and search["p50"] == 4.0
    expert = groups[("expert", "search", "m-search")]
    assert expert["count"] == 2 and expert["mean"] == 2.0 and expert["std"] == 1.0 and expert["under_share"] == 1.0
    python = groups[("tool", "python", "")]
    assert python["count"] == 2 and python["std"] == 0.0 and python["errors"] == 1


def test_a_role_shared_by_two_tools_is_named_after_both() -> None:
    events = [
        {"kind": "tool", "tool": "search", "expert_role": "helper"},
        {"kind": "tool", "tool": "code", "expert_role": "helper"},
        {"kind": "tool", "tool": "python"},
    ]
    assert expert_tools(events) == {"helper": "code+search"}


def test_samples_table_with_limits_and_the_slowest() -> None:
    s = analyze_events(read_events(FIXTURE), Options())["samples"]
    assert s["count"] == 4 and s["finished"] == 3
    assert s["limits_hit"] == {"turn_limit": 1, "time_limit": 1}
    assert [(r["sample_id"], r["wall_s"], r["turns"], r["tool_calls"]) for r in s["slowest"]] == [
        ("s2", 400.0, 5, 4),
        ("s4", 379.0, 3, 1),
        ("s3", 320.0, 2, 1),
        ("s1", 30.0, 3, 2),
    ]
    assert s["turns"]["mean"] == 3.25 and s["tool_calls"]["mean"] == 2.0
    assert s["wall_s"]["p50"] == 349.5 and s["wall_s"]["over_long"] == 3


def test_time_split_retries_and_errors_by_class() -> None:
    result = analyze_events(read_events(FIXTURE), Options())
    t = result["time"]
    # orchestrator: 40 + 1061 s of calls, 2 s of which waiting for a replica; tools 12 + 1 s, of
    # which the expert's 4 s (0.25 s of it queued).
    assert (t["model_s"], t["queue_s"], t["tool_s"]) == (1099.0, 2.0, 13.0)
    assert (t["expert_model_s"], t["expert_queue_s"]) == (3.75, 0.25)
    assert t["share"] == {"model": round(1099 / 1114, 4), "queue": round(2 / 1114, 4), "tool": round(13 / 1114, 4)}
    re = result["retries_errors"]
    assert re["model"] == {"calls": 14, "retries": 3, "retried_calls": 2, "errors_by_class": {"rate_limited": 1}}
    assert re["tool"] == {"calls": 5, "retries": 0, "retried_calls": 0, "errors_by_class": {"timeout": 1}}


def test_histograms_linear_and_log_scale() -> None:
    groups = _groups(analyze_events(read_events(FIXTURE), Options()))
    r1 = groups[("model", "orchestrator", R1)]["histogram"]
    # 10 bins of 0.7 s from 2 to 9: 2 | 4 4 4 | 5 5 | 7 | 9 (the maximum is in the last bin).
    assert r1["counts"] == [1, 0, 3, 0, 2, 0, 0, 1, 0, 1]
    assert r1["edges"] == pytest.approx([2 + 0.7 * i for i in range(11)])
    log = histogram([2.0, 4.0, 6.0], 2, log=True)
    assert log.edges == pytest.approx([2.0, math.sqrt(12), 6.0]) and log.counts == [1, 2]  # split at the geometric mean
    assert histogram([0.5, 0.5], 10).counts == [2]  # one value: one bin
    for g in groups.values():
        assert sum(g["histogram"]["counts"]) == g["count"] == sum(g["histogram_log"]["counts"])
    assert len(analyze_events(read_events(FIXTURE), Options(bins=3))["groups"][0]["histogram"]["counts"]) == 3


def test_percentiles_interpolate_between_ranks() -> None:
    assert quantile([1.0, 2.0], 0.5) == 1.5 and quantile([7.0], 0.99) == 7.0
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.1) == pytest.approx(1.4)


def test_calls_in_flight_from_exact_overlaps() -> None:
    timelines = concurrency_timeline(read_events(FIXTURE))
    assert set(timelines) == {R1, R2, R3, "search", "python"}  # sample records are not calls
    assert timelines[R1].times == [0.0, 1.0, 5.0, 6.0, 11.0, 20.0] and timelines[R1].counts == [2, 3, 2, 3, 1, 0]
    assert timelines[R1].peak == 3


def test_two_runs_side_by_side_with_deltas(tmp_path: Path) -> None:
    events_b = [dict(e, duration=e["duration"] * 2) if e.get("endpoint") == R1 else e for e in read_events(FIXTURE)]
    events_b = [e for e in events_b if e.get("tool") != "python"]
    a = {"run": "a", **analyze_events(read_events(FIXTURE), Options())}
    b = {"run": "b", **analyze_events(events_b, Options())}
    cmp = compare(a, b)
    rows = {(r["section"], r["name"], r["target"]): r for r in cmp["groups"]}
    d = rows[("model", "orchestrator", R1)]["delta"]
    assert d["mean"] == 5.0 and d["std"] == 2.0 and d["p50"] == 4.5 and d["count"] == 0
    assert d["under_share"] == -0.375  # only the 2 s call, doubled to 4 s, stays under 5 s
    assert rows[("model", "orchestrator", R2)]["delta"]["mean"] == 0.0
    gone = rows[("tool", "python", "")]
    assert gone["b"] is None and gone["delta"] is None
    assert cmp["time_delta"]["model_s"] == 40.0 and cmp["time_delta"]["queue_s"] == 0.0  # queueing unchanged
    assert cmp["time_delta"]["tool_s"] == -1.0


def test_cli_json_csv_two_runs_and_plots(run_dir: Path, tmp_path: Path) -> None:
    result = run_proctor("analyze", run_dir, "--json", "--under", "2.5", "--long", "6", "--bins", "4", "--plots")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr  # stdout stays pure JSON
    data = json.loads(result.stdout)
    assert data == json.loads(
        json.dumps({"run": str(run_dir), **analyze_events(read_events(FIXTURE), Options(2.5, 6.0, 4))})
    )

    result = run_proctor("analyze", run_dir, "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    r1 = next(r for r in rows if r["target"] == R1)
    assert (r1["count"], r1["mean"], r1["std"], r1["p99"], r1["under_share"]) == ("8", "5.0", "2.0", "8.86", "0.5")
    assert rows[-1]["section"] == "samples" and rows[-1]["p50"] == "349.5"

    run_b = tmp_path / "run_b"
    run_b.mkdir()
    (run_b / "events.jsonl").write_text(
        "".join(json.dumps(dict(e, duration=e["duration"] + 1)) + "\n" for e in read_events(FIXTURE))
    )
    result = run_proctor("analyze", run_dir, run_b, "--csv")
    assert result.returncode == 0, result.stderr
    deltas = [r for r in csv.DictReader(io.StringIO(result.stdout)) if r["run"] == "delta"]
    assert {r["mean"] for r in deltas} == {"1.0"} and len(deltas) == 7  # 6 groups and the samples

    result = run_proctor("analyze", run_dir, run_b)
    assert result.returncode == 0, result.stderr
    assert "orchestrator" in result.stdout and "+1.000" in result.stdout

    result = run_proctor("analyze", run_dir)  # the plots are from the first call's --plots
    assert result.returncode == 0, result.stderr
    for table in (
        "Tools, end to end",
        "Expert models inside tools",
        "Model calls per role and replica",
        "Slowest samples",
        "Time split",
        "Retries and errors by class",
        "log scale",
    ):
        assert table in result.stdout, table
    assert "(running)" in result.stdout  # s4 has no sample record yet
    pngs = {p.name for p in (run_dir / "analysis").glob("*.png")}
    assert pngs == {
        "concurrency.png",
        "hist-samples.png",
        "hist-tool-search.png",
        "hist-tool-python.png",
        "hist-expert-search-m-search.png",
        "hist-model-orchestrator-http-127-0-0-1-9101-v1.png",
        "hist-model-orchestrator-http-127-0-0-1-9102-v1.png",
        "hist-model-searcher-http-127-0-0-1-9103-v1.png",
    }, pngs
    assert all((run_dir / "analysis" / name).stat().st_size > 5000 for name in pngs)


def test_a_run_still_in_progress_can_be_analysed(tmp_path: Path) -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.25)) as llm:
        spec = write_spec(tmp_path, llm.base_url, n=60, concurrency=2)  # 60 calls, two at a time: >= 7.5 s
        out = tmp_path / "run"
        proc = subprocess.Popen(
            [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            events = out / "events.jsonl"
            while proc.poll() is None and time.monotonic() < deadline:
                if events.exists() and events.read_bytes().count(b"\n") >= 2:
                    break
                time.sleep(0.05)
            result = run_proctor("analyze", out, "--json")
            still_running = proc.poll() is None
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert still_running and 2 <= data["events"] < 60
    (group,) = data["groups"]
    assert group["count"] == data["events"] and data["samples"]["count"] == data["events"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    def one_error(*args: str | Path) -> str:
        result = run_proctor("analyze", *args)
        assert result.returncode == 2, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        return lines[0]

    assert (
        one_error(tmp_path / "missing") == f"Error: {tmp_path / 'missing'} is not a directory: "
        "give a run directory made by `proctor run`"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.jsonl").write_bytes(b'\xff\xfe not json\n{"kind": "sample"}\n[1, 2]\n')
    assert one_error(empty) == f"Error: {empty / 'events.jsonl'} has no model or tool calls yet: nothing to analyse"
    # A socket where the log should be: not a file anyone can read.
    odd = tmp_path / "odd"
    odd.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(odd / "events.jsonl"))
        assert one_error(odd).startswith(f"Error: {odd} has no events.jsonl")
    assert "--json and --csv" in one_error(tmp_path, "--json", "--csv")
    with pytest.raises(InputError):
        load_events(empty)
