"""Random, partial failures of a replica do not stop it; a dead one is taken out; a pool recovers at once.

Real servers over real sockets: the fake LLM's seeded fault injection, and the scripted stub where
one exact answer matters. Outcomes are asserted through counts and breaker state, never timings.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from models.modelkit import StubLLM, fast_config, user

from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig

DEFAULT_BREAKER = {"failure_threshold": 20, "failure_ratio": 0.5, "failure_window": 10.0}
"""HealthConfig's defaults (modelkit's fast_config raises the threshold out of the way)."""


async def call_all(role, n: int, concurrency: int, prefix: str = "s") -> list[object]:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> object:
        async with sem:
            return await role.chat(user(f"{prefix}{i}"), sample_id=f"{prefix}{i}")

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def test_a_replica_failing_15_percent_of_calls_stays_in_and_keeps_its_limit(caplog: pytest.LogCaptureFixture) -> None:
    calls = 400

    async def main() -> tuple[list[object], int, bool, int]:
        # 7.5% 500s, then 7.5% of all calls 429 with Retry-After 0.2 s: 15% in all, seeded
        faults = FakeLLMConfig(latency=0.01, fail_rate=0.075, rate_limit_rate=0.081, retry_after=0.2, seed=15)
        async with FakeLLM(faults) as llm:
            cfg = fast_config(base_url=llm.base_url, health=DEFAULT_BREAKER, retry={"max_attempts": 6})
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                results = await call_all(role, calls, 64)
                replica = role.pool.replicas[0]
                return results, llm.requests, replica.healthy, replica.cap

    with caplog.at_level(logging.INFO, logger="proctor.models"):
        results, requests, healthy, cap = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert healthy and "circuit open" not in caplog.text  # never taken out
    assert cap == 4096 and "after 429" not in caplog.text  # scattered 429s are not a limit
    assert calls < requests <= 1.4 * calls  # faults were met and retried, each call about once


def test_a_replica_failing_every_call_is_taken_out_and_the_other_carries_the_load() -> None:
    calls = 300

    async def main() -> tuple[list[object], int, int, bool]:
        async with FakeLLM(FakeLLMConfig(fail_rate=1.0)) as bad, FakeLLM(FakeLLMConfig(latency=0.005)) as good:
            cfg = fast_config(replicas=[bad.base_url, good.base_url], health={**DEFAULT_BREAKER, "cooldown": 60})
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                results = await call_all(role, calls, 32)
                return results, bad.requests, good.ok, role.pool.replicas[0].healthy

    results, bad_requests, good_ok, bad_healthy = asyncio.run(main())
    assert not [r for r in results if isinstance(r, BaseException)]
    assert not bad_healthy
    assert good_ok == calls
    # The breaker opened after its 20th failed call; only calls already sent to it failed there.
    assert 20 <= bad_requests <= 20 + 32


def test_a_pool_whose_every_replica_is_open_serves_as_soon_as_one_answers() -> None:
    async def main() -> None:
        async with FakeLLM(FakeLLMConfig(fail_rate=1.0)) as a, FakeLLM(FakeLLMConfig(fail_rate=1.0)) as b:
            cfg = fast_config(
                replicas=[a.base_url, b.base_url],
                # a minute between probes, and calls may not wait that long: only trials can help
                health={"failure_threshold": 1, "cooldown": 60, "check_at_start": False},
                retry={"max_attempts": 2, "total_deadline": 5.0},
            )
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                pool = role.pool
                await call_all(role, 4, 2, prefix="fail")
                assert not any(r.healthy for r in pool.replicas)  # both open
                b.reconfigure(fail_rate=0.0)
                sent_to_a = a.requests
                results = [await role.chat(user(f"ok{i}"), sample_id=f"ok{i}") for i in range(3)]
                # The first call met an open pool and went through as a trial; once b answered it
                # was closed and took the rest, while a (still failing) stayed open.
                assert pool.replicas[1].healthy and not pool.replicas[0].healthy
                assert all(r.endpoint == b.base_url for r in results)
                assert results[1].attempts == 1 and results[2].attempts == 1
                assert a.requests - sent_to_a <= 1  # at most one trial went to a

    asyncio.run(main())


def test_retry_after_on_a_429_delays_only_that_call() -> None:
    async def main() -> None:
        async with StubLLM() as stub:
            stub.push(429, {"error": {"message": "slow down"}}, {"Retry-After": "2"})
            cfg = fast_config(base_url=stub.base_url, max_connections=2)
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                limited = asyncio.create_task(role.chat(user("first"), sample_id="first"))
                for _ in range(500):  # the stub answers the first request at once
                    if stub.requests:
                        break
                    await asyncio.sleep(0.01)
                assert stub.requests
                others = [await role.chat(user(f"o{i}"), sample_id=f"o{i}") for i in range(10)]
                # Ten calls went through while the rate-limited one still waits its Retry-After:
                # the 429 neither paused the replica nor took its second slot away.
                assert not limited.done()
                assert all(r.attempts == 1 for r in others)
                assert role.pool.replicas[0].cap == 2
                first = await limited
        assert first.attempts == 2

    asyncio.run(main())
