"""Behaviour under load: per-replica caps, bounded sockets, adaptive concurrency against a rate limit."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from models.modelkit import fast_config, user

from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_per_replica_cap_queues_calls_and_bounds_sockets() -> None:
    cap, calls = 8, 200

    async def main() -> tuple[int, int, int]:
        async with FakeLLM(FakeLLMConfig(latency=0.05)) as a, FakeLLM(FakeLLMConfig(latency=0.05)) as b:
            cfg = fast_config(replicas=[a.base_url, b.base_url], max_connections=cap)
            async with ModelRouter({"subject": cfg}) as router:
                baseline = open_fds()
                peak = 0
                role = router.role("subject")

                async def one(i: int) -> None:
                    nonlocal peak
                    await role.chat(user(f"q{i}"), sample_id=str(i))
                    peak = max(peak, open_fds())

                await asyncio.gather(*(one(i) for i in range(calls)))  # 200 at once, 16 slots
            return (
                a.max_in_flight + b.max_in_flight,
                peak - baseline,
                sum(a.successes.values()) + sum(b.successes.values()),
            )

    max_in_flight, extra_fds, done = asyncio.run(main())
    assert done == calls  # nobody failed for lack of a slot
    assert max_in_flight <= 2 * cap
    # client and server sockets of each connection live in this process: at most 2 per slot
    assert extra_fds <= 2 * 2 * cap + 10


def test_selection_prefers_the_replica_that_finishes() -> None:
    """With one slow replica, least-outstanding sends it a small share of the calls."""

    async def main() -> tuple[int, int]:
        async with FakeLLM(FakeLLMConfig(latency=0.2)) as slow, FakeLLM(FakeLLMConfig(latency=0.0)) as fast:
            cfg = fast_config(replicas=[slow.base_url, fast.base_url])
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                sem = asyncio.Semaphore(4)

                async def one(i: int) -> None:
                    async with sem:
                        await role.chat(user(f"q{i}"))

                await asyncio.gather(*(one(i) for i in range(100)))
            return slow.ok, fast.ok

    slow_ok, fast_ok = asyncio.run(main())
    assert slow_ok + fast_ok == 100
    assert slow_ok < 25  # uniform random choice would give it about 50


def test_adaptive_concurrency_lowers_the_share_of_429s(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[float, float, int]:
        async with FakeLLM(FakeLLMConfig(max_rps=100, latency=0.1)) as llm:
            cfg = fast_config(base_url=llm.base_url, max_connections=64, retry={"max_attempts": 100})
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                sem = asyncio.Semaphore(64)

                async def one(i: int) -> None:
                    async with sem:
                        await role.chat(user(f"q{i}"))

                shares = []
                # First the burst and the adaptation (long enough for the 429s to become a share
                # that counts as a signal, even on a loaded machine), then the adapted phase.
                for n in (300, 200):
                    llm.reset()
                    await asyncio.gather(*(one(i) for i in range(n)))
                    stats = llm.stats()
                    shares.append(stats["errors"].get("429", 0) / stats["requests"])
                return shares[0], shares[1], role.pool.replicas[0].cap

    with caplog.at_level(logging.INFO, logger="proctor.models"):
        before, after, cap = asyncio.run(main())
    assert before > 0.2  # 64 in flight at 100 ms is 640 requests/s against a limit of 100
    assert after < before / 2
    assert cap < 64 and "after 429" in caplog.text


def test_fixed_concurrency_when_adaptation_is_off() -> None:
    async def main() -> int:
        async with FakeLLM(FakeLLMConfig(rate_limit_rate=1.0, retry_after=0.0)) as llm:
            cfg = fast_config(
                base_url=llm.base_url, max_connections=16, adaptive_concurrency=False, retry={"max_attempts": 3}
            )
            async with ModelRouter({"subject": cfg}) as router:
                results = await asyncio.gather(
                    *(router.role("subject").chat(user()) for _ in range(5)), return_exceptions=True
                )
                assert all(getattr(r, "error_class", None) == "rate_limited" for r in results)
                return router.role("subject").pool.replicas[0].cap

    assert asyncio.run(main()) == 16
