"""Least-outstanding vs uniform random replica choice, on the same workload, in one run.

Four replicas of the test LLM server, each in its own process; one answers 5x slower than the
others. The same requests go through proctor's router three times:

- ``least_time`` (proctor's default): fewest outstanding requests, weighted by observed latency;
- ``least_outstanding``: fewest outstanding requests, by count only;
- ``random``: uniform random choice, what many evaluation tools do.

Prints the makespans and the ratio default / random (goal: <= 0.6). With latencies that do not
depend on load (as here), count-only least-outstanding cannot beat 16/25.6 = 0.625 in theory:
it keeps a quarter of the in-flight work on the slow replica.

    .venv/bin/python bench/routing.py [--requests 2000] [--concurrency 64] [--fast 0.1] [--slow 0.5]

The defaults keep the ideal rate near 600 requests/s, so that on a 2-core machine the client and
the four servers are not CPU-bound and the figure measures routing, not the CPU.
Not run in CI: it measures wall time on whatever machine runs it.

Not run in CI: it measures wall time on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

from proctor.models.config import ModelConfig
from proctor.models.pool import Strategy
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLMConfig, FakeLLMProcess


async def workload(urls: list[str], strategy: Strategy, requests: int, concurrency: int) -> tuple[float, Counter[str]]:
    """Makespan of ``requests`` calls at ``concurrency``, and how many each replica served."""
    config = ModelConfig.model_validate({"model": "fake", "replicas": urls})
    served: Counter[str] = Counter()
    async with ModelRouter({"subject": config}, strategy=strategy) as router:
        role = router.role("subject")
        queue = iter(range(requests))

        async def worker() -> None:
            for i in queue:
                result = await role.chat([{"role": "user", "content": f"{i} + 1"}])
                served[result.endpoint] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0, served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fast", type=float, default=0.1, help="latency of the three fast replicas (s)")
    parser.add_argument("--slow", type=float, default=0.5, help="latency of the slow replica (s)")
    args = parser.parse_args()

    latencies = [args.fast, args.fast, args.fast, args.slow]
    servers = [FakeLLMProcess(FakeLLMConfig(latency=lat, reply="arith")) for lat in latencies]
    try:
        for server in servers:
            server.start()
        urls = [s.base_url for s in servers]
        names = {url: f"{lat * 1000:.0f}ms" for url, lat in zip(urls, latencies, strict=True)}
        # a short warm-up so both runs meet warm servers
        asyncio.run(workload(urls, "least_time", 200, args.concurrency))
        results = {}
        strategies: tuple[Strategy, ...] = ("least_time", "least_outstanding", "random")
        for strategy in strategies:
            results[strategy] = asyncio.run(workload(urls, strategy, args.requests, args.concurrency))
    finally:
        for server in servers:
            server.stop()

    print(f"{args.requests} requests at concurrency {args.concurrency}; replicas {', '.join(names.values())}")
    for strategy, (makespan, served) in results.items():
        share = "  ".join(f"{names[u]}:{served[u]}" for u in urls)
        print(f"  {strategy:<18} makespan {makespan:6.2f} s  ({args.requests / makespan:6.0f} req/s)  served {share}")
    ratio = results["least_time"][0] / results["random"][0]
    plain = results["least_outstanding"][0] / results["random"][0]
    print(f"ratio least_time (default) / random = {ratio:.2f}  (goal <= 0.6)")
    print(f"ratio least_outstanding (count only) / random = {plain:.2f}  (theory for this setup: 0.625)")


if __name__ == "__main__":
    main()
