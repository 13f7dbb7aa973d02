"""The router end to end over real sockets: what is sent, what comes back, which errors, which events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from models.modelkit import StubLLM, dead_port, fast_config, user

from proctor.errors import BadRequestError, ContextOverflowError, InfraError, InputError, ModelAbortError, SpecError
from proctor.models.config import GenerateParams
from proctor.models.router import ModelRouter
from proctor.testing import FakeLLM, FakeLLMConfig


def test_chat_result_and_one_event() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        async with FakeLLM(FakeLLMConfig(reply="arith")) as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}, on_event=events.append) as router:
                result = await router.role("subject").chat(user("what is 6 * 7"), sample_id="s1")
        assert result.content == "42" and result.finish_reason == "stop"
        assert result.message == {"role": "assistant", "content": "42"}
        assert result.endpoint == llm.base_url and result.attempts == 1
        assert result.prompt_tokens > 0 and result.completion_tokens > 0
        assert llm.counts == {"s1": 1}
        [event] = events
        assert event["kind"] == "model" and event["role"] == "subject" and event["model"] == "fake"
        assert event["endpoint"] == llm.base_url and event["sample_id"] == "s1"
        assert event["status"] == "ok" and event["http_status"] == 200
        assert event["attempts"] == 1 and event["retries"] == 0 and event["ttft"] is None
        assert event["tokens_in"] == result.prompt_tokens and event["tokens_out"] == result.completion_tokens
        assert event["duration"] >= 0 and event["start"] > 1e9

    asyncio.run(main())


def test_request_body_headers_and_params() -> None:
    async def main() -> None:
        async with StubLLM() as stub:
            cfg = fast_config(
                base_url=stub.base_url,
                api_key_env="JUDGE_KEY",
                params={"temperature": 0.0, "max_tokens": 64, "extra_body": {"chat_template_kwargs": {"x": 1}}},
            )
            async with ModelRouter({"judge": cfg}, environ={"JUDGE_KEY": "sk-secret"}) as router:
                role = router.role("judge")
                await role.chat(user(), sample_id="abc")
                override = GenerateParams(max_tokens=8, stop=["\n"], extra_body={"top_k": 5})
                tools = [{"type": "function", "function": {"name": "python", "parameters": {}}}]
                await role.chat(user("q"), params=override, tools=tools, tool_choice="auto")
                await role.chat(user("again"), params=override)  # cached merge, same body shape
        first, second, third = stub.requests
        assert first.body == {
            "model": "fake",
            "temperature": 0.0,
            "max_tokens": 64,
            "chat_template_kwargs": {"x": 1},
            "messages": user(),
        }
        assert first.headers["Authorization"] == "Bearer sk-secret"
        assert first.headers["X-Proctor-Sample-Id"] == "abc"
        assert second.body["max_tokens"] == 8 and second.body["temperature"] == 0.0 and second.body["stop"] == ["\n"]
        assert second.body["top_k"] == 5 and second.body["chat_template_kwargs"] == {"x": 1}
        assert second.body["tools"] == tools and second.body["tool_choice"] == "auto"
        assert "X-Proctor-Sample-Id" not in second.headers
        assert third.body["max_tokens"] == 8 and "tools" not in third.body

    asyncio.run(main())


def test_environment_is_never_consulted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables that other clients obey must not move a role or add a key."""
    bogus = f"http://127.0.0.1:{dead_port()}"
    for name, value in {
        "OPENAI_BASE_URL": bogus + "/v1",
        "OPENAI_API_BASE": bogus + "/v1",
        "OPENAI_API_KEY": "sk-from-env",
        "HTTP_PROXY": bogus,
        "HTTPS_PROXY": bogus,
        "ALL_PROXY": bogus,
        "NO_PROXY": "",
    }.items():
        monkeypatch.setenv(name, value)

    async def main() -> None:
        async with StubLLM() as stub:
            async with ModelRouter({"subject": fast_config(base_url=stub.base_url)}) as router:
                result = await router.role("subject").chat(user())
            assert result.endpoint == stub.base_url
            assert "Authorization" not in stub.requests[0].headers
            # an explicit environ mapping is the only place keys come from
            cfg = fast_config(base_url=stub.base_url, api_key_env="OPENAI_API_KEY")
            async with ModelRouter({"subject": cfg}, environ={"OPENAI_API_KEY": "sk-mapping"}) as router:
                await router.role("subject").chat(user())
            assert stub.requests[1].headers["Authorization"] == "Bearer sk-mapping"

    asyncio.run(main())


def test_unset_key_variable_and_unknown_role() -> None:
    async def main() -> None:
        cfg = fast_config(base_url="http://127.0.0.1:9/v1", api_key_env="PROCTOR_TEST_UNSET_KEY")
        router = ModelRouter({"subject": cfg, "judge": cfg}, environ={})
        with pytest.raises(InputError, match="PROCTOR_TEST_UNSET_KEY"):
            await router.start()
        await router.aclose()
        with pytest.raises(SpecError, match="'expert'.*judge, subject"):
            router.role("expert")

    asyncio.run(main())


def test_every_router_routes_by_latency_as_the_pool_does_by_default() -> None:
    router = ModelRouter({"subject": fast_config(replicas=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"])})
    assert router.role("subject").pool.strategy == "least_time"


# -- retry classes -----------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        async with StubLLM() as stub:
            stub.push(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"})
            async with ModelRouter({"subject": fast_config(base_url=stub.base_url)}, on_event=events.append) as router:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                result = await router.role("subject").chat(user())
                waited = loop.time() - t0
        assert result.attempts == 2 and len(stub.requests) == 2
        assert waited >= 0.3  # a lower bound set by the server; backoff alone would be <= 0.01 s
        assert events[0]["attempts"] == 2 and events[0]["retries"] == 1 and events[0]["status"] == "ok"

    asyncio.run(main())


def test_429_moves_to_another_replica() -> None:
    async def main() -> None:
        async with StubLLM() as a, StubLLM() as b:
            for _ in range(4):
                a.push(429, {"error": "limited"}, {"Retry-After": "0"})
            cfg = fast_config(replicas=[a.base_url, b.base_url])
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                results = [await role.chat(user()) for _ in range(4)]
        # calls that met a 429 on `a` were retried on `b`
        for r in results:
            assert r.endpoint == b.base_url or r.attempts == 1
        assert any(r.attempts == 2 for r in results)

    asyncio.run(main())


def test_5xx_moves_to_another_replica() -> None:
    async def main() -> None:
        async with FakeLLM(FakeLLMConfig(fail_rate=1.0)) as bad, FakeLLM() as good:
            cfg = fast_config(replicas=[bad.base_url, good.base_url])
            async with ModelRouter({"subject": cfg}) as router:
                role = router.role("subject")
                results = [await role.chat(user(f"q{i}"), sample_id=f"s{i}") for i in range(6)]
        assert all(r.endpoint == good.base_url for r in results)
        assert bad.requests >= 1 and all(r.attempts <= 2 for r in results)
        assert sum(good.successes.values()) == 6

    asyncio.run(main())


def test_5xx_exhausts_attempts_on_one_replica() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        async with FakeLLM(FakeLLMConfig(fail_rate=1.0)) as llm:
            cfg = fast_config(base_url=llm.base_url, retry={"max_attempts": 3})
            async with ModelRouter({"subject": cfg}, on_event=events.append) as router:
                with pytest.raises(InfraError) as info:
                    await router.role("subject").chat(user(), sample_id="x")
        assert info.value.error_class == "http_5xx" and info.value.attempts == 3 and info.value.status == 500
        assert llm.counts == {"x": 3}
        [event] = events
        assert event["status"] == "http_5xx" and event["attempts"] == 3 and event["http_status"] == 500

    asyncio.run(main())


def test_connection_refused() -> None:
    async def main() -> None:
        dead = f"http://127.0.0.1:{dead_port()}/v1"
        async with FakeLLM() as llm:
            cfg = fast_config(replicas=[dead, llm.base_url], health={"check_at_start": False})
            async with ModelRouter({"subject": cfg}) as router:
                results = [await router.role("subject").chat(user()) for _ in range(4)]
            assert all(r.endpoint == llm.base_url for r in results)
        cfg = fast_config(base_url=dead, health={"check_at_start": False}, retry={"max_attempts": 2})
        async with ModelRouter({"subject": cfg}) as router:
            with pytest.raises(InfraError) as info:
                await router.role("subject").chat(user())
        assert info.value.error_class == "connection" and info.value.attempts == 2

    asyncio.run(main())


def test_hang_becomes_timeout_and_moves_on() -> None:
    async def main() -> None:
        async with FakeLLM(FakeLLMConfig(hang_rate=1.0, hang_seconds=30)) as hung, FakeLLM() as ok:
            cfg = fast_config(base_url=hung.base_url, request_timeout=0.2, retry={"max_attempts": 2})
            async with ModelRouter({"subject": cfg}) as router:
                with pytest.raises(InfraError) as info:
                    await router.role("subject").chat(user())
            assert info.value.error_class == "timeout" and info.value.attempts == 2
            cfg = fast_config(replicas=[hung.base_url, ok.base_url], request_timeout=0.2)
            async with ModelRouter({"subject": cfg}) as router:
                results = [await router.role("subject").chat(user()) for _ in range(3)]
            assert all(r.endpoint == ok.base_url for r in results)

    asyncio.run(main())


def test_total_deadline_bounds_a_long_retry_after() -> None:
    async def main() -> None:
        async with StubLLM() as stub:
            stub.push(429, {"error": "limited"}, {"Retry-After": "3600"})
            cfg = fast_config(base_url=stub.base_url, retry={"total_deadline": 5.0})
            async with ModelRouter({"subject": cfg}) as router:
                with pytest.raises(InfraError) as info:
                    await router.role("subject").chat(user())
        assert info.value.error_class == "rate_limited" and info.value.attempts == 1
        assert "deadline" in str(info.value)

    asyncio.run(main())


def test_context_overflow_is_not_retried() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        async with FakeLLM(FakeLLMConfig(context_limit=10)) as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}, on_event=events.append) as router:
                with pytest.raises(ContextOverflowError):
                    await router.role("subject").chat(user("x" * 100), sample_id="long")
        assert llm.counts == {"long": 1}
        assert events[0]["status"] == "context_overflow" and events[0]["http_status"] == 400

    asyncio.run(main())


def test_refused_key_aborts_naming_the_variable() -> None:
    async def main() -> None:
        async with FakeLLM(FakeLLMConfig(require_key="right")) as llm:
            cfg = fast_config(base_url=llm.base_url, api_key_env="SUBJECT_KEY")
            async with ModelRouter({"subject": cfg}, environ={"SUBJECT_KEY": "wrong"}) as router:
                with pytest.raises(ModelAbortError, match="SUBJECT_KEY") as info:
                    await router.role("subject").chat(user(), sample_id="k")
            assert "refused" in str(info.value) and "wrong" not in str(info.value)
            assert llm.counts == {"k": 1}
            async with ModelRouter({"subject": cfg}, environ={"SUBJECT_KEY": "right"}) as router:
                assert (await router.role("subject").chat(user())).content == "hello"

    asyncio.run(main())


def test_unknown_model_aborts_naming_model_and_url() -> None:
    async def main() -> None:
        async with FakeLLM() as llm:
            cfg = fast_config(base_url=llm.base_url, model="gpt-nonexistent")
            async with ModelRouter({"subject": cfg}) as router:
                with pytest.raises(ModelAbortError) as info:
                    await router.role("subject").chat(user())
        assert "gpt-nonexistent" in str(info.value) and llm.base_url in str(info.value)
        assert llm.requests == 1

    asyncio.run(main())


def test_other_400_is_not_retried() -> None:
    async def main() -> None:
        async with FakeLLM() as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}) as router:
                with pytest.raises(BadRequestError) as info:
                    await router.role("subject").chat(["not a message"])  # type: ignore[list-item]
        assert info.value.status == 400 and llm.requests == 1

    asyncio.run(main())


def test_one_event_per_call_whatever_the_outcome() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        cfg = FakeLLMConfig(fail_samples={"flaky": 1, "broken": -1}, context_limit=50)
        async with FakeLLM(cfg) as llm:
            router = ModelRouter({"subject": fast_config(base_url=llm.base_url)}, on_event=events.append)
            async with router:
                role = router.role("subject")
                outcomes = await asyncio.gather(
                    role.chat(user("fine"), sample_id="fine"),
                    role.chat(user("flaky"), sample_id="flaky"),
                    role.chat(user("broken"), sample_id="broken"),
                    role.chat(user("y" * 80), sample_id="long"),
                    return_exceptions=True,
                )
        assert [type(o).__name__ for o in outcomes] == [
            "ChatResult",
            "ChatResult",
            "InfraError",
            "ContextOverflowError",
        ]
        by_sample = {e["sample_id"]: e for e in events}
        assert len(events) == 4 and len(by_sample) == 4
        assert by_sample["fine"]["status"] == "ok" and by_sample["fine"]["attempts"] == 1
        assert by_sample["flaky"]["status"] == "ok" and by_sample["flaky"]["retries"] == 1
        assert by_sample["broken"]["status"] == "http_5xx" and by_sample["broken"]["attempts"] == 4
        assert by_sample["long"]["status"] == "context_overflow"
        assert llm.counts == {"fine": 1, "flaky": 2, "broken": 4, "long": 1}

    asyncio.run(main())


def test_cancelled_call_emits_its_event_and_frees_its_slot() -> None:
    async def main() -> None:
        events: list[dict[str, Any]] = []
        async with FakeLLM(FakeLLMConfig(latency=30)) as llm:
            async with ModelRouter({"subject": fast_config(base_url=llm.base_url)}, on_event=events.append) as router:
                task = asyncio.ensure_future(router.role("subject").chat(user()))
                for _ in range(200):  # bounded: wait until the request is in flight
                    if llm.in_flight:
                        break
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert router.describe()[0]["replicas"][0]["in_flight"] == 0
        assert [e["status"] for e in events] == ["cancelled"]

    asyncio.run(main())


def test_session_is_shared_and_public() -> None:
    async def main() -> None:
        async with FakeLLM() as llm:
            router = ModelRouter({"subject": fast_config(base_url=llm.base_url)})
            assert router.session is None
            async with router:
                session = router.session
                assert session is not None and not session.closed
                await router.role("subject").chat(user())
                assert router.session is session
            assert session.closed and router.session is None

    asyncio.run(main())
