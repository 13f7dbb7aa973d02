"""Server benchmarks (not run in CI): the figures for the server's closing note.

    .venv/bin/python bench/server.py [--repeat 3] [--samples 150] [--followers 50]

1. submit → first model request on an idle server (goal <= 1 s): POST /v1/jobs until the fake
   LLM sees the job's first chat request (engine start-up included).
2. a job's wall time (started_at → finished_at, from the job record) with 50 clients following
   its log over SSE vs with none (goal: <= 10 % slower).

Everything runs on 127.0.0.1: the server as `python -m proctor serve`, the fake LLM in a thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from proctor.client import Client
from proctor.testing import FakeLLMConfig, FakeLLMThread

ROOT = Path(__file__).resolve().parents[1]


def spec_dir(base: Path, url: str, samples: int, concurrency: int) -> Path:
    d = base / "spec"
    d.mkdir(exist_ok=True)
    lines = (ROOT / "examples/arith/data.jsonl").read_text().splitlines()[:samples]
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    spec = (ROOT / "examples/arith/spec.yaml").read_text().replace("http://127.0.0.1:8000/v1", url)
    (d / "spec.yaml").write_text(spec.replace("concurrency: 32", f"concurrency: {concurrency}"))
    return d / "spec.yaml"


def start_server(data: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "serve", "--port", "0", "--data", str(data), "--ready-line", "READY {port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}"


def token(data: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "proctor", "server", "token", "create", "bench", "--data", str(data)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def first_request_latency(client: Client, llm: FakeLLMThread, spec: Path) -> float:
    llm.reset()
    t0 = time.perf_counter()
    job = client.submit(spec, limit=4)["job"]
    deadline = t0 + 60
    while not llm.counts and time.perf_counter() < deadline:
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    client.wait(job["id"])
    return elapsed


CPU: dict[int, list[float]] = {}
"""Server process CPU seconds per job, by number of followers."""

FOLLOWERS = """
import asyncio, sys, aiohttp
async def one(session, url):
    async with session.get(url, params={"follow": "1"}) as r:
        async for _ in r.content:
            pass
async def main(base, token, n):
    url = base + "/v1/jobs/" + sys.stdin.readline().strip() + "/logs"
    headers = {"Authorization": "Bearer " + token}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as s:
        await asyncio.gather(*(one(s, url) for _ in range(n)))
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def wall_time(client: Client, server: str, tok: str, spec: Path, followers: int, pid: int) -> float:
    """Followers run in a process of their own (one event loop, like 50 remote clients would),
    so their parsing does not steal the GIL from the fake LLM living in this process."""
    proc = None
    if followers:  # started (and its imports paid) before the job; it connects once given the id
        proc = subprocess.Popen(
            [sys.executable, "-c", FOLLOWERS, server, tok, str(followers)], stdin=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
    cpu0 = sum(psutil.Process(pid).cpu_times()[:2])
    job = client.submit(spec)["job"]
    if proc is not None:
        assert proc.stdin is not None
        proc.stdin.write(job["id"] + "\n")
        proc.stdin.close()
    final = client.wait(job["id"])
    if proc is not None:
        proc.wait(timeout=60)
    assert final["state"] == "succeeded", final
    CPU.setdefault(followers, []).append(sum(psutil.Process(pid).cpu_times()[:2]) - cpu0)
    return float(final["finished_at"] - final["started_at"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--followers", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeLLMThread(FakeLLMConfig(latency=args.latency, reply="arith")) as llm:
        base = Path(tmp)
        data = base / "data"
        tok = token(data)
        proc, server = start_server(data)
        try:
            with Client(server, tok) as client:
                small = spec_dir(base, llm.base_url, 4, 4)
                first_request_latency(client, llm, small)  # warm the page cache
                firsts = [first_request_latency(client, llm, small) for _ in range(args.repeat)]
                print(
                    f"submit -> first model request (idle server): median {statistics.median(firsts):.3f} s "
                    f"(runs: {', '.join(f'{x:.3f}' for x in firsts)}; goal <= 1 s)"
                )
                (base / "big").mkdir()
                big = spec_dir(base / "big", llm.base_url, args.samples, 8)
                alone, watched = [], []
                for _ in range(args.repeat):  # interleaved, so drift hits both alike
                    alone.append(wall_time(client, server, tok, big, 0, proc.pid))
                    watched.append(wall_time(client, server, tok, big, args.followers, proc.pid))
                a, w = statistics.median(alone), statistics.median(watched)
                print(
                    f"job wall time, {args.samples} samples: no followers median {a:.3f} s "
                    f"({', '.join(f'{x:.3f}' for x in alone)}); {args.followers} followers median {w:.3f} s "
                    f"({', '.join(f'{x:.3f}' for x in watched)}); slowdown {100 * (w / a - 1):+.1f}% (goal <= 10%)"
                )
                print(
                    f"server CPU per job: {statistics.median(CPU[0]):.3f} s alone, "
                    f"{statistics.median(CPU[args.followers]):.3f} s with {args.followers} followers"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
