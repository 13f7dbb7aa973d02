"""Agentic overhead benchmark: a scripted multi-turn run vs its ideal wall time.

N samples, each 5 model turns (the first 4 call a ``sleep`` tool, the 5th calls ``answer``),
model latency 50 ms (a fake LLM server in its own process), tool latency 10 ms, C samples in
flight. The ideal is one sample's summed latencies x ceil(N / C): what a harness with zero
overhead would take. Two measurements, in one run:

- ``loop``: the agent solver driven in-process (router + solver + a semaphore), i.e. the cost of
  the agent loop and the HTTP client;
- ``proctor run``: the whole ``proctor run`` process (start-up, ledger, outputs included).

    python bench/agentic.py [--n 500] [--concurrency 128] [--latency 0.05] [--tool-latency 0.01]

Goal: wall <= 1.5x ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from proctor.evals.agent.loop import agent_solver
from proctor.evals.agent.tools.base import Tool, ToolCallContext
from proctor.evals.types import Sample, SolveContext
from proctor.models.config import ModelConfig
from proctor.models.router import ModelRouter
from proctor.profiling.analysis import analyze
from proctor.testing import FakeLLMConfig, FakeLLMProcess

TURNS = 5


class SleepTool(Tool):
    """Stands in for a tool with a fixed latency (``options.seconds``)."""

    name = "sleep"
    description = "Wait a little."
    parameters = {"type": "object", "properties": {}, "required": []}
    timeout = 30.0

    def __init__(self, seconds: float = 0.01) -> None:
        self.seconds = seconds

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        await asyncio.sleep(self.seconds)
        return "slept"


def make_sleep(options: dict[str, Any]) -> SleepTool:
    return SleepTool(float(options.get("seconds", 0.01)))


def script() -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = [
        {"content": "", "tool_calls": [{"name": "sleep", "arguments": {}}]} for _ in range(TURNS - 1)
    ]
    turns.append({"content": "", "tool_calls": [{"name": "answer", "arguments": {"answer": "42"}}]})
    return turns


def solver_options(tool_latency: float) -> dict[str, Any]:
    return {
        "max_turns": TURNS + 1,
        "tools": [
            {"type": "custom", "path": f"{Path(__file__).resolve()}:make_sleep", "options": {"seconds": tool_latency}},
            "answer",
        ],
    }


async def in_process(base_url: str, n: int, c: int, tool_latency: float) -> tuple[float, int]:
    solver = agent_solver(solver_options(tool_latency))
    sem = asyncio.Semaphore(c)
    ok = 0
    async with ModelRouter({"subject": ModelConfig(model="fake", base_url=base_url)}) as router:
        ctx = SolveContext(models=router, emit=lambda e: None)

        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                res = await solver(Sample(id=f"s{i}", input=f"question {i}"), ctx)
                ok += res.output == "42" and res.model_calls == TURNS

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        await solver.aclose()
    return wall, ok


def whole_process(base_url: str, n: int, c: int, tool_latency: float) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(prefix="proctor-bench-") as tmp:
        d = Path(tmp)
        (d / "data.jsonl").write_text(
            "".join(json.dumps({"id": f"s{i}", "input": f"question {i}", "target": "42"}) + "\n" for i in range(n))
        )
        spec = {
            "name": "bench-agentic",
            "dataset": {"path": "data.jsonl"},
            "solver": {"type": "agent", **solver_options(tool_latency)},
            "scorer": "exact",
            "models": {"subject": {"base_url": base_url, "model": "fake"}},
            "concurrency": c,
        }
        (d / "spec.yaml").write_text(yaml.safe_dump(spec))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "proctor",
                "run",
                str(d / "spec.yaml"),
                "--out",
                str(d / "run"),
                "--progress",
                "none",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        stats = json.loads((d / "run" / "eval_stats.json").read_text())
        # The run itself: first model/tool call started -> last one ended (from events.jsonl),
        # i.e. the whole process minus interpreter start-up and the final report writing.
        span = analyze(d / "run")["span_s"]
        return wall, span, int(stats["accuracy"]["correct"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--tool-latency", type=float, default=0.01)
    ap.add_argument("--skip-process", action="store_true", help="only the in-process measurement")
    args = ap.parse_args()
    per_sample = TURNS * args.latency + (TURNS - 1) * args.tool_latency
    ideal = per_sample * math.ceil(args.n / args.concurrency)
    cfg = FakeLLMConfig(latency=args.latency, model="fake", script=script())
    print(
        f"N={args.n} C={args.concurrency} turns={TURNS} model={args.latency * 1000:.0f} ms tool={args.tool_latency * 1000:.0f} ms"
    )
    print(f"ideal: {per_sample:.3f} s/sample x {math.ceil(args.n / args.concurrency)} waves = {ideal:.2f} s")
    with FakeLLMProcess(cfg) as llm:
        wall, ok = asyncio.run(in_process(llm.base_url, args.n, args.concurrency, args.tool_latency))
        print(f"loop (in-process):   {wall:6.2f} s  = {wall / ideal:.2f}x ideal  ({ok}/{args.n} answered)")
        if not args.skip_process:
            wall, span, ok = whole_process(llm.base_url, args.n, args.concurrency, args.tool_latency)
            print(
                f"proctor run, calls:  {span:6.2f} s  = {span / ideal:.2f}x ideal  (first call start -> last call end)"
            )
            print(
                f"proctor run (whole): {wall:6.2f} s  = {wall / ideal:.2f}x ideal  ({ok}/{args.n} correct; "
                "includes interpreter start-up and final reports)"
            )


if __name__ == "__main__":
    main()
