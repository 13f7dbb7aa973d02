"""Health at start, the circuit breaker, waiting for a replica to come back, describe()."""

from __future__ import annotations

import asyncio
import logging

import pytest
from models.modelkit import StubLLM, dead_port, fast_config, user

from proctor.errors import InfraError, NoHealthyReplicaError
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig


async def wait_for(predicate, *, tries: int = 1500, step: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll a condition a bounded number of times, 30 s and more (no timing assertion: only the outcome counts)."""
    for _ in range(tries):
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def test_no_healthy_replica_at_start_names_role_and_every_url() -> None:
    async def main() -> None:
        urls = [f"http://127.0.0.1:{dead_port()}/v1" for _ in range(2)]
        async with StubLLM() as broken:
            broken.model_status = 503
            urls.append(broken.base_url)
            router = ModelRouter({"judge": fast_config(replicas=urls)})
            with pytest.raises(NoHealthyReplicaError) as info:
                await router.start()
            # A failed start leaves nothing open for the caller to close: no session, no probes.
            assert router.session is None
            assert all(not role.pool._tasks for role in router.roles.values())
        message = str(info.value)
        assert "'judge'" in message and all(u in message for u in urls)
        assert "503" in message

    asyncio.run(main())


def test_start_probes_and_describe_reports_health() -> None:
    async def main() -> None:
        dead = f"http://127.0.0.1:{dead_port()}/v1"
        async with FakeLLM() as llm:
            router = ModelRouter({"subject": fast_config(replicas=[llm.base_url, dead])})
            before = router.describe()
            assert before[0]["replicas"][0]["healthy"] is None  # not probed yet
            await router.check_health()  # usable without start(), for --dry-run
            [role] = router.describe()
            assert role["role"] == "subject" and role["model"] == "fake"
            assert [r["healthy"] for r in role["replicas"]] == [True, False]
            assert role["replicas"][1]["url"] == dead and "failed" in role["replicas"][1]["last_error"]
            assert role["replicas"][0]["concurrency_limit"] == 4096 and role["replicas"][0]["in_flight"] == 0
            await router.start()  # one healthy replica is enough
            result = await router.role("subject").chat(user())
            await router.aclose()
        assert result.endpoint == llm.base_url

    asyncio.run(main())


def test_health_check_can_be_skipped_at_start() -> None:
    async def main() -> None:
        cfg = fast_config(base_url=f"http://127.0.0.1:{dead_port()}/v1", health={"check_at_start": False})
        async with ModelRouter({"subject": cfg}) as router:
            assert router.describe()[0]["replicas"][0]["healthy"] is None

    asyncio.run(main())


def test_breaker_opens_after_failures_and_closes_after_probe(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with FakeLLM(FakeLLMConfig(fail_rate=1.0)) as bad, FakeLLM() as good:
            cfg = fast_config(
                replicas=[bad.base_url, good.base_url],
                health={"failure_threshold": 2, "cooldown": 0.05},
            )
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                pool = role.pool
                bad_replica = pool.replicas[0]
                # every call meeting `bad` fails over to `good`; after 2 such calls `bad` is out
                for i in range(6):
                    if not bad_replica.healthy:
                        break
                    result = await role.chat(user(), sample_id=f"a{i}")
                    assert result.endpoint == good.base_url
                assert not bad_replica.healthy
                requests_when_open = bad.requests
                bad.reconfigure(fail_rate=0.0)
                # half-open: after the cooldown a probe (GET /models) admits one trial call
                assert await wait_for(lambda: bad_replica.half_open)
                assert not bad_replica.healthy
                results = [await role.chat(user(), sample_id=f"b{i}") for i in range(4)]
                assert bad_replica.healthy  # the trial answered: closed
        assert requests_when_open == 2  # nothing was sent to the open replica
        assert results[0].endpoint == bad.base_url  # the trial is the next call
        assert all(r.attempts == 1 for r in results)

    with caplog.at_level(logging.INFO, logger="proctor.models"):
        asyncio.run(main())
    assert "taken out (circuit open)" in caplog.text and "back in (circuit closed)" in caplog.text


def test_call_waits_for_a_replica_to_recover() -> None:
    async def main() -> None:
        cfg = FakeLLMConfig(fail_samples={"s": 1})  # the first request of sample s gets a 500
        async with FakeLLM(cfg) as llm:
            conf = fast_config(base_url=llm.base_url, health={"failure_threshold": 1, "cooldown": 0.1})
            async with ModelRouter({"subject": conf}) as router:
                result = await router.role("subject").chat(user(), sample_id="s")
        # attempt 1 opened the only replica's breaker; attempt 2 waited for the probe to close it
        assert result.attempts == 2 and llm.counts == {"s": 2}

    asyncio.run(main())


def test_all_replicas_open_until_the_deadline_raises() -> None:
    async def main() -> None:
        dead = f"http://127.0.0.1:{dead_port()}/v1"
        cfg = fast_config(
            base_url=dead,
            health={"check_at_start": False, "failure_threshold": 1, "cooldown": 0.05},
            retry={"total_deadline": 0.5, "max_attempts": 10},
        )
        async with ModelRouter({"subject": cfg}) as router:
            with pytest.raises(InfraError) as info:
                await router.role("subject").chat(user())
        # The call waited for a probe to answer instead of spending its attempts on a dead server.
        assert info.value.error_class == "connection" and "no healthy replica" in str(info.value)
        assert info.value.attempts == 1 and dead in str(info.value)

    asyncio.run(main())


def test_periodic_probe_takes_a_dead_replica_out() -> None:
    async def main() -> None:
        async with FakeLLM() as a, StubLLM() as b:
            cfg = fast_config(replicas=[a.base_url, b.base_url], health={"interval": 0.05, "cooldown": 60})
            async with ModelRouter({"subject": cfg}) as router:
                replica_b = router.role("subject").pool.replicas[1]
                assert replica_b.healthy
                b.model_status = 500
                assert await wait_for(lambda: not replica_b.healthy)
                results = [await router.role("subject").chat(user()) for _ in range(3)]
        assert all(r.endpoint == a.base_url for r in results)
        assert not b.requests

    asyncio.run(main())


def test_a_failing_probe_does_not_take_out_a_replica_whose_calls_succeed() -> None:
    async def main() -> None:
        async with StubLLM() as b:
            cfg = fast_config(base_url=b.base_url, health={"interval": 0.1, "timeout": 0.1, "cooldown": 60})
            async with ModelRouter({"subject": cfg}) as router:
                replica = router.role("subject").pool.replicas[0]
                b.model_status = 500  # the probe fails from now on, the calls do not
                for _ in range(25):
                    await router.role("subject").chat(user())
                    assert replica.healthy
                    await asyncio.sleep(0.02)
                assert replica.last_error and "health probe" in replica.last_error  # probes did fail
                # Once the calls stop, the failing probes are believed.
                assert await wait_for(lambda: not replica.healthy)

    asyncio.run(main())
