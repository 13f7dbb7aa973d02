"""Random, partial replica failures must not stop a run: `proctor run` against faulty fake servers.

One run of this script measures three cells, each a whole `proctor run` process (the path users
get) over the same 1,000 samples at concurrency 64 against fake LLM servers (20 ms latency), each
in its own process:

- (a) one clean replica: the baseline;
- (b) one replica answering 15% of calls with 500 or 429 (429 with ``Retry-After: 0.2``), drawn
  at random with a fixed seed. Goals: wall <= 3 x clean + 1 s, 0 errors, requests the server
  saw <= 1.4 x samples;
- (c) two replicas, one of which fails every call. Goal: wall <= 1.5 x one healthy replica
  alone (cell a).

Walls are the run's own ``wall_time_s`` (eval_stats.json); the whole-process time, start-up
included, is printed beside it. A short unreported run warms the machine up first, and each cell
is run ``--repeat`` times (best wall kept, like bench/overhead.py). Prints each figure, the
ratios and PASS/FAIL per goal.

    .venv/bin/python bench/faults.py [--samples 1000] [--concurrency 64] [--latency 0.02] [--fault-rate 0.15] [--repeat 2]

Not run in CI: it measures wall time on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _proctor_run import RunFigures, run_proctor, write_arith_spec  # noqa: E402

from proctor.testing import FakeLLMConfig, FakeLLMProcess  # noqa: E402


def cell(
    folder: Path, configs: list[FakeLLMConfig], args: argparse.Namespace, *, samples: int | None = None, repeat: int = 1
) -> tuple[RunFigures, list[int]]:
    """Best of ``repeat`` `proctor run`s, each over fresh servers; its figures and the requests each server saw."""
    best: tuple[RunFigures, list[int]] | None = None
    for i in range(repeat):
        servers = [FakeLLMProcess(c) for c in configs]
        try:
            for server in servers:
                server.start()
            spec = write_arith_spec(
                folder / str(i), [s.base_url for s in servers], n=samples or args.samples, concurrency=args.concurrency
            )
            figures = run_proctor(spec, folder / str(i) / "run")
            requests = [int(s.stats()["requests"]) for s in servers]
        finally:
            for server in servers:
                server.stop()
        if best is None or figures.run_wall < best[0].run_wall:
            best = (figures, requests)
    assert best is not None
    return best


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.02, help="answer time of every fake server (s)")
    parser.add_argument("--fault-rate", type=float, default=0.15, help="share of calls failing in cell (b)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=2, help="runs per cell; the best wall is kept")
    args = parser.parse_args()

    clean = FakeLLMConfig(reply="arith", latency=args.latency, seed=args.seed)
    # Half the faults are 500s, half 429s: the server draws the 500 first, then the 429 from the rest.
    half = args.fault_rate / 2
    faulty = clean.replace(fail_rate=half, rate_limit_rate=half / (1 - half), retry_after=0.2)
    broken = clean.replace(fail_rate=1.0)
    n = args.samples
    with tempfile.TemporaryDirectory() as tmp:
        cell(Path(tmp) / "warm-up", [clean], args, samples=200)
        a, (a_requests,) = cell(Path(tmp) / "a", [clean], args, repeat=args.repeat)
        b, (b_requests,) = cell(Path(tmp) / "b", [faulty], args, repeat=args.repeat)
        c, c_requests = cell(Path(tmp) / "c", [clean, broken], args, repeat=args.repeat)

    print(
        f"{n} samples, concurrency {args.concurrency}, latency {args.latency * 1000:.0f} ms, best of {args.repeat}; "
        "wall = the run's wall_time_s (whole process in brackets)"
    )
    rows = [
        ("(a) one clean replica", a, f"{a_requests} requests"),
        (f"(b) one replica, {args.fault_rate:.0%} 500/429", b, f"{b_requests} requests"),
        ("(c) clean + always-failing", c, f"{c_requests[0]} + {c_requests[1]} requests (healthy + failing)"),
    ]
    for label, fig, requests in rows:
        print(
            f"  {label:<32} wall {fig.run_wall:6.2f} s ({fig.process_wall:6.2f} s)  scored {fig.scored:5d}  "
            f"errors {fig.errors:4d}  {requests}"
        )
    limit_b = 3 * a.run_wall + 1.0
    print(
        f"(b) wall {b.run_wall:.2f} s vs 3 x clean + 1 s = {limit_b:.2f} s "
        f"(ratio to clean {b.run_wall / a.run_wall:.2f}): {verdict(b.run_wall <= limit_b)}"
    )
    print(f"(b) errors {b.errors} (goal 0): {verdict(b.errors == 0 and b.scored == n)}")
    print(f"(b) requests / samples = {b_requests / n:.3f} (goal <= 1.4): {verdict(b_requests <= 1.4 * n)}")
    ratio_c = c.run_wall / a.run_wall
    print(
        f"(c) wall / one healthy replica alone = {ratio_c:.2f} (goal <= 1.5): "
        f"{verdict(ratio_c <= 1.5 and c.errors == 0 and c.scored == n)}"
    )


if __name__ == "__main__":
    main()
