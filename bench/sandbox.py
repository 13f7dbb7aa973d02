"""What the sandbox costs: a job's start and one python-tool call, sandboxed vs not, in one run.

Both sides run the same way in the same process, interleaved, so the difference means something
on a shared, noisy machine; each side's best time over ``--repeat`` runs is compared (the median
is printed too: on two cores shared with other work it moves by tens of milliseconds).

    .venv/bin/python bench/sandbox.py              # 30 repeats of each
    .venv/bin/python bench/sandbox.py --repeat 10

- job start: the server's own ``spawn`` of a job (``python -I -c pass`` as the job's program, so
  the figure is the start-up and exit of a process) with the job's sandbox, its rlimits and (as
  root) its ``out/`` handed to the job's uid, against the same ``spawn`` without them.
  Goal: at most 100 ms added.
- python-tool call: ``run_python("print(1)")`` in its bubblewrap sandbox against the path used
  where bubblewrap is missing (resource limits and ``unshare --net``). Goal: at most 15 ms added.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from proctor import sandbox
from proctor.evals.agent.tools import python as pytool
from proctor.server import jobs
from proctor.server.settings import ServerSettings

JOB_GOAL_MS = 100.0
TOOL_GOAL_MS = 15.0


async def job_start(job_dir: Path, settings: ServerSettings, *, sandboxed: bool) -> float:
    argv = [sys.executable, "-I", "-c", "pass"]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    t0 = time.perf_counter()
    box, limits = None, None
    if sandboxed:
        if sandbox.running_as_root():
            jobs.give_out_dir(job_dir, settings.sandbox.uid)
        request = {"kind": "proctor"}
        box = jobs.job_sandbox(request, job_dir, settings, uid=settings.sandbox.uid)
        limits = jobs.job_limits(request, settings)
    proc = await jobs.spawn(argv, cwd=job_dir, env=env, log_path=job_dir / "job.log", sandbox=box, limits=limits)
    code = await proc.wait()
    assert code == 0, (job_dir / "job.log").read_text()[-500:]
    return time.perf_counter() - t0


async def tool_call(*, sandboxed: bool) -> float:
    opts = pytool.PythonOptions(timeout=20)
    if not sandboxed:
        pytool._sandbox_problem.cache_clear()
        original = pytool._sandbox_problem
        pytool._sandbox_problem = lambda network: "baseline: no bubblewrap"  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        res = await pytool.run_python("print(1)", opts)
        elapsed = time.perf_counter() - t0
    finally:
        if not sandboxed:
            pytool._sandbox_problem = original  # type: ignore[assignment]
    assert res.stdout.strip() == "1", res
    return elapsed


async def measure(fn: Callable[[bool], Awaitable[float]], repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of each run (sandboxed, plain); the two sides alternate, after one warm-up each."""
    await fn(True)
    await fn(False)
    boxed, plain = [], []
    for _ in range(repeat):
        boxed.append(await fn(True))
        plain.append(await fn(False))
    return boxed, plain


def report(name: str, boxed: list[float], plain: list[float], goal_ms: float) -> bool:
    best_b, best_p = min(boxed), min(plain)
    added = (best_b - best_p) * 1000
    median_added = (statistics.median(boxed) - statistics.median(plain)) * 1000
    ok = added <= goal_ms
    print(
        f"{name:<18} best: sandboxed {best_b * 1000:6.1f} ms, unsandboxed {best_p * 1000:6.1f} ms, "
        f"added {added:5.1f} ms (x{best_b / best_p:.2f}; medians: added {median_added:5.1f} ms)   "
        f"goal <= {goal_ms:g} ms: {'PASS' if ok else 'FAIL'}"
    )
    return ok


async def main(repeat: int) -> int:
    problem = sandbox.probe()
    if problem is not None:
        print(f"no sandbox here: {problem}")
        return 2
    with tempfile.TemporaryDirectory(prefix="proctor-bench-sandbox-") as tmp:
        settings = ServerSettings(data_dir=Path(tmp) / "data")
        job_dir = (settings.jobs_dir / "benchjob").resolve()
        (job_dir / "out").mkdir(parents=True)
        job = await measure(lambda boxed: job_start(job_dir, settings, sandboxed=boxed), repeat)
    pytool.PythonTool()  # probe the tool's sandbox before timing it
    tool = await measure(lambda boxed: tool_call(sandboxed=boxed), repeat)
    print(f"sandbox cost, {repeat} runs each ({'root' if sandbox.running_as_root() else 'user'}):")
    ok = report("job start", *job, JOB_GOAL_MS)
    ok = report("python-tool call", *tool, TOOL_GOAL_MS) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    sys.exit(asyncio.run(main(parser.parse_args().repeat)))
