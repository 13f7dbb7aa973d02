"""Retrieval service: micro-batching against a global lock with batch size 1, and index build cost.

In one run, on one index:

1. ``proctor retrieval index`` over ``--docs`` synthetic short documents (10,000 by default), as a
   child process: wall time and peak memory (the child's max RSS).
2. The same index served twice, one server at a time: micro-batched (``--max-batch 64``) and the
   baseline (``--max-batch 1``: one query at a time on the one worker, i.e. a global lock). Each
   is driven by 1 client and by 32 concurrent clients sending single-query requests for
   ``--seconds``; each cell reports queries/s and p50 latency.

Figures are printed as ratios against the baseline measured in the same run (goal: ≥ 1.5× queries/s
at 32 clients; p50 at 1 client no worse than 1.1×).

    nice -n 10 .venv/bin/python bench/retrieval.py
    nice -n 10 .venv/bin/python bench/retrieval.py --docs 2000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

WORDS = (
    "river mountain violin comet glacier harbour orchard volcano library desert castle bridge "
    "forest island canyon meadow lantern tower engine garden market festival"
).split()


def corpus(path: Path, n: int) -> None:
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40)))
            fh.write(json.dumps({"id": f"d{i}", "title": f"Note {i}", "content": f"Record {i}: {words}."}) + "\n")


def queries(n: int) -> list[str]:
    rng = random.Random(11)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "?" for _ in range(n)]


def build(corpus_path: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``proctor retrieval index`` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "proctor", "retrieval", "index", str(corpus_path), "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(index: Path, max_batch: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proctor",
                "retrieval",
                "serve",
                str(index),
                "--port",
                str(port),
                "--no-web",
                "--max-batch",
                str(max_batch),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):  # at most 2 minutes
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if json.load(resp).get("ok"):
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server never became healthy")


async def drive(url: str, clients: int, seconds: float, texts: list[str]) -> tuple[float, float]:
    """Queries/s and p50 latency (s) of ``clients`` closed-loop clients for ``seconds``."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                began = time.perf_counter()
                async with session.post(
                    url + "/retrieve", json={"queries": [texts[i % len(texts)]], "topk": 5}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - began)
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell")
    args = parser.parse_args()
    texts = queries(2000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus(work / "corpus.jsonl", args.docs)
        seconds, peak_mb = build(work / "corpus.jsonl", work / "idx")
        size_mb = sum(f.stat().st_size for f in (work / "idx").rglob("*") if f.is_file()) / 1e6
        print(
            f"index build: {args.docs} documents in {seconds:.1f} s ({args.docs / seconds:.0f} docs/s), "
            f"peak RSS {peak_mb:.0f} MB, index on disk {size_mb:.1f} MB"
        )
        results: dict[tuple[str, int], tuple[float, float]] = {}
        for name, max_batch in (("global lock, batch 1", 1), ("micro-batched", 64)):
            proc, url = start(work / "idx", max_batch, work / f"serve-{max_batch}.log")
            try:
                asyncio.run(drive(url, 4, 1.0, texts))  # warm-up
                for clients in (1, 32):
                    results[(name, clients)] = asyncio.run(drive(url, clients, args.seconds, texts))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        print(f"{'server':<22} {'clients':>7} {'queries/s':>10} {'p50 ms':>8}")
        for (name, clients), (qps, p50) in results.items():
            print(f"{name:<22} {clients:>7} {qps:>10.1f} {p50 * 1000:>8.1f}")
        base, batched = "global lock, batch 1", "micro-batched"
        qps_ratio = results[(batched, 32)][0] / results[(base, 32)][0]
        p50_ratio = results[(batched, 1)][1] / results[(base, 1)][1]
        print(f"32 clients: micro-batched / global lock queries/s = {qps_ratio:.2f}x (goal >= 1.5x)")
        print(f"1 client: micro-batched / global lock p50 = {p50_ratio:.2f}x (goal <= 1.1x)")
        print(f"(cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
