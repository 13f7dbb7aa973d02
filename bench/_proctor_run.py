"""What the benchmarks that drive ``proctor run`` as a whole process share.

Users get ``proctor run``, not the router called from a script: these helpers write a spec over
a list of replica URLs and run the real CLI in a child process, so a figure includes everything
a user pays (start-up, dataset, ledger, reports).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunFigures", "run_proctor", "write_arith_spec"]


def write_arith_spec(folder: Path, urls: list[str], *, n: int, concurrency: int, name: str = "bench") -> Path:
    """``n`` arithmetic questions (the fake server's ``arith`` mode answers them) over ``urls``."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
    replicas = ", ".join(urls)
    spec = folder / "spec.yaml"
    spec.write_text(
        f"name: {name}\n"
        "dataset: {path: data.jsonl, fields: {id: id, input: question, target: answer}}\n"
        "solver: generate\n"
        "scorer: numeric\n"
        f"models:\n  subject: {{model: fake, replicas: [{replicas}]}}\n"
        f"concurrency: {concurrency}\n",
        encoding="utf-8",
    )
    return spec


@dataclass(frozen=True)
class RunFigures:
    """What one ``proctor run`` cost and produced."""

    process_wall: float
    """Seconds from starting the process to its exit (interpreter start-up included)."""
    run_wall: float
    """The run's own ``wall_time_s`` from ``eval_stats.json`` (dataset, router, samples, reports)."""
    scored: int
    errors: int


def run_proctor(spec: Path, out: Path, *, timeout: float = 600.0) -> RunFigures:
    """Run ``proctor run SPEC --out OUT`` to its end; exit 0 or 1 (sample errors) is a result."""
    cmd = [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"proctor run failed ({result.returncode}):\n{result.stderr[-2000:]}")
    stats = json.loads((out / "eval_stats.json").read_text(encoding="utf-8"))
    return RunFigures(
        process_wall=elapsed,
        run_wall=float(stats["wall_time_s"]),
        scored=int(stats["counts"]["scored"]),
        errors=int(stats["errors"]["total"]),
    )
