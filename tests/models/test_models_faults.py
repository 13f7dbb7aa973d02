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

DEFAULT_BREAKER = {"failure_threshold": 3, "failure_ratio": 0.5, "failure_window": 10.0}
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
    # It opened once its failures outnumbered its calls in flight (at most the 32 concurrent
    # ones); after that only trials went there, one per probe answered (50 ms, doubling).
    assert 3 <= bad_requests <= 32 + 10


def test_a_pool_whose_every_replica_is_open_serves_as_soon_as_one_answers() -> None:
    async def main() -> None:
        async with StubLLM() as a, StubLLM() as b:
            a.model_status = b.model_status = 503  # both down: calls fail, probes fail
            for stub in (a, b):
                for _ in range(4):
                    stub.push(503, {"error": {"message": "down"}})
            cfg = fast_config(
                replicas=[a.base_url, b.base_url],
                # A minute of cooldown: a call served within its 5 s deadline was not waiting for it.
                health={"failure_threshold": 1, "cooldown": 60, "check_at_start": False},
                retry={"max_attempts": 3, "total_deadline": 5.0},
            )
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                pool = role.pool
                waiting = asyncio.create_task(role.chat(user("w"), sample_id="w"))
                for _ in range(500):  # bounded: both fail their first calls at once
                    if not any(r.healthy for r in pool.replicas):
                        break
                    await asyncio.sleep(0.01)
                assert not any(r.healthy for r in pool.replicas)  # every replica open
                b.model_status = 200  # b comes back: its next probe answers
                b.script.clear()
                result = await waiting
                # The waiting call was served by b's trial: b is closed, a (still down) stays open.
                assert result.endpoint == b.base_url
                assert pool.replicas[1].healthy and not pool.replicas[0].healthy
                assert (await role.chat(user("next"), sample_id="next")).attempts == 1

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
