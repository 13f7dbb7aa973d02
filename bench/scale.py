"""What spreading one run over Ray actors buys: local vs 1 vs 2 Ray workers, in one run.

    .venv/bin/python bench/scale.py [--n 800] [--tool-n 120] [--cpu-ms 5] [--latency 0.01] [--repeat 3]

Three workloads, each run as ``proctor run`` processes (the real CLI, see bench/_proctor_run.py)
against a fake model server in its own process:

- ``cpu``: generate + the ``busy_numeric`` scorer (``cpu_ms`` of CPU per sample on the loop that
  scores it): the work one process cannot spread past one core;
- ``tool``: the agent with the python tool (one sandboxed ``python`` per sample), then an answer;
- ``zero``: generate + numeric at 0 ms model latency: the Ray executor's own overhead.

Each runs locally, with ``--executor ray --workers 1`` and ``--workers 2``, all Ray runs on one
private Ray (started here the way ``proctor run`` starts its own, on 127.0.0.1) so that Ray's
start-up is not in the figures. Throughput is samples / (last finish − first start) from the
run's ledger: the sample-processing phase, equal in meaning for every executor. Goal: on the
``cpu`` workload, 2 workers ≥ 1.6 × 1 worker. Figures are ratios within this run, of the median
of ``--repeat`` interleaved runs per cell; on a shared machine absolute numbers move between runs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proctor.executors.ray_cluster import RaySession
from proctor.testing import FakeLLMConfig, FakeLLMProcess


def write_spec(folder: Path, base_url: str, *, n: int, concurrency: int, solver: str, scorer: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: scale\n"
        "dataset: {path: data.jsonl, fields: {id: id, input: question, target: answer}}\n"
        f"solver: {solver}\n"
        f"scorer: {scorer}\n"
        f"models:\n  subject: {{model: fake, base_url: {base_url}}}\n"
        f"concurrency: {concurrency}\n",
        encoding="utf-8",
    )
    return spec


def run(spec: Path, out: Path, extra: list[str]) -> tuple[float, float, int]:
    """(samples per second while processing, process wall seconds, samples scored)."""
    cmd = [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none", *extra]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"proctor run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    conn = sqlite3.connect(out / "ledger.sqlite")
    try:
        first, last, scored = conn.execute(
            "SELECT MIN(started), MAX(finished), SUM(state = 'scored') FROM samples"
        ).fetchone()
    finally:
        conn.close()
    return scored / (last - first), wall, int(scored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=800, help="samples of the cpu and zero workloads")
    parser.add_argument("--tool-n", type=int, default=120, help="samples of the python-tool workload")
    parser.add_argument("--cpu-ms", type=float, default=5.0, help="CPU per sample of the busy scorer")
    parser.add_argument("--latency", type=float, default=0.01, help="model latency of cpu and tool workloads (s)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each cell, interleaved (local, x1, x2, local, ...); medians"
    )
    args = parser.parse_args()

    tool_script = [
        {"content": "", "tool_calls": [{"name": "python", "arguments": {"code": "print(sum(range(1000)))"}}]},
        {"content_from": "arith"},
    ]
    session = RaySession.open(None, workers=2)
    address = session.ray.get_runtime_context().gcs_address
    executors = {
        "local": ["--executor", "local"],
        "ray x1": ["--executor", "ray", "--workers", "1", "--ray-address", address],
        "ray x2": ["--executor", "ray", "--workers", "2", "--ray-address", address],
    }
    figures: dict[tuple[str, str], tuple[float, float, int]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="proctor-scale-") as tmp:
            root = Path(tmp)
            workloads = [
                ("cpu", args.n, args.latency, "generate", f"{{type: busy_numeric, cpu_ms: {args.cpu_ms}}}", None),
                ("tool", args.tool_n, args.latency, "{type: agent, tools: [python, answer]}", "numeric", tool_script),
                ("zero", args.n, 0.0, "generate", "numeric", None),
            ]
            for name, n, latency, solver, scorer, script in workloads:
                config = FakeLLMConfig(reply="arith", latency=latency, script=script or [])
                with FakeLLMProcess(config) as llm:
                    spec = write_spec(
                        root / name, llm.base_url, n=n, concurrency=args.concurrency, solver=solver, scorer=scorer
                    )
                    # Interleaved, so a burst of load from elsewhere on the machine hits every cell alike.
                    runs: dict[str, list[tuple[float, float, int]]] = {label: [] for label in executors}
                    for round_ in range(args.repeat):
                        for label, extra in executors.items():
                            out = root / name / f"{label.replace(' ', '')}-{round_}"
                            runs[label].append(run(spec, out, extra))
                            rate, wall, scored = runs[label][-1]
                            print(
                                f"{name:5} {label:7} {scored:5d} scored  {rate:8.1f} samples/s  process {wall:6.1f} s",
                                flush=True,
                            )
                    for label, cells in runs.items():
                        figures[name, label] = sorted(cells)[len(cells) // 2]
    finally:
        session.close()

    print()
    for name in ("cpu", "tool", "zero"):
        local, one, two = (figures[name, label][0] for label in executors)
        print(
            f"{name:5} ray x2 / ray x1 = {two / one:.2f}x   ray x1 / local = {one / local:.2f}x   ray x2 / local = {two / local:.2f}x"
        )
    cpu_ratio = figures["cpu", "ray x2"][0] / figures["cpu", "ray x1"][0]
    zero_local, zero_one = figures["zero", "local"][0], figures["zero", "ray x1"][0]
    print(
        f"\ncpu workload ({args.cpu_ms:g} ms CPU per sample): 2 workers = {cpu_ratio:.2f}x 1 worker "
        f"(goal >= 1.6x: {'met' if cpu_ratio >= 1.6 else 'NOT met'})"
    )
    print(
        f"0 ms latency: per-sample time local {1000 / zero_local:.2f} ms, ray x1 {1000 / zero_one:.2f} ms: "
        f"Ray overhead {1000 / zero_one - 1000 / zero_local:+.2f} ms per sample "
        f"(ray x1 throughput = {zero_one / zero_local:.2f}x local)"
    )


if __name__ == "__main__":
    main()
