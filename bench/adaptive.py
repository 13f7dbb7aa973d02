"""Adaptive concurrency against a rate-limited server: the share of 429s once adapted.

One test LLM server (own process) admits at most R requests/s (token bucket, burst R) and
answers the rest with 429 + Retry-After. proctor's router starts with a per-replica limit far
above what R allows and must find the right concurrency (AIMD) by itself. The run is split in
phases; the first includes the adaptation, the later ones show the settled state.

    .venv/bin/python bench/adaptive.py [--rps 200] [--latency 0.25] [--concurrency 128] [--phases 4] [--per-phase 1000]

Prints, per phase: requests the server saw, 429s among them, goodput and the replica's limit.
Goal: <= 5% of requests get 429 once the concurrency has adapted (phases after the first).
Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator

from proctor.models.config import ModelConfig
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLMConfig, FakeLLMProcess


async def run(url: str, args: argparse.Namespace, llm: FakeLLMProcess) -> list[tuple[int, int, float, int]]:
    config = ModelConfig.model_validate(
        {"model": "fake", "base_url": url, "max_connections": args.concurrency, "retry": {"max_attempts": 100}}
    )
    rows = []
    async with ModelRouter({"subject": config}) as router:
        role = router.role("subject")
        for phase in range(args.phases):
            llm.reset()
            queue = iter(range(args.per_phase))

            async def worker(queue: Iterator[int], phase: int) -> None:
                for i in queue:
                    await role.chat([{"role": "user", "content": f"{phase}-{i}"}])

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(queue, phase) for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - t0
            stats = llm.stats()
            rows.append(
                (stats["requests"], stats["errors"].get("429", 0), args.per_phase / elapsed, role.pool.replicas[0].cap)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, default=200.0, help="the server's limit R (requests/s)")
    parser.add_argument("--latency", type=float, default=0.25, help="the server's answer time (s)")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--per-phase", type=int, default=1000)
    args = parser.parse_args()

    with FakeLLMProcess(FakeLLMConfig(max_rps=args.rps, latency=args.latency)) as llm:
        rows = asyncio.run(run(llm.base_url, args, llm))

    print(
        f"server limit {args.rps:g} req/s, latency {args.latency * 1000:.0f} ms, client concurrency "
        f"{args.concurrency} (ideal limit about {args.rps * args.latency:.0f})"
    )
    for phase, (requests, limited, goodput, cap) in enumerate(rows):
        note = "  (includes adaptation)" if phase == 0 else ""
        print(
            f"  phase {phase}: {requests:5d} requests, {limited:4d} got 429 ({limited / requests:6.1%}), "
            f"goodput {goodput:6.1f}/s, limit now {cap}{note}"
        )
    settled = rows[1:]
    if settled:
        share = sum(r[1] for r in settled) / sum(r[0] for r in settled)
        print(f"share of 429s after adaptation: {share:.1%}  (goal <= 5%)")


if __name__ == "__main__":
    main()
