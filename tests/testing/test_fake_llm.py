"""The fake LLM server's contract, checked over real HTTP on 127.0.0.1.

Every other part of proctor is tested against this server, so each documented behaviour (reply
modes, streaming, tool-call scripts, each injected fault, counters, the control endpoints and the
subprocess variant) has a test here. pytest-asyncio is not used: each test is a plain function
that runs one coroutine with ``asyncio.run`` under a bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proctor.errors import InputError
from proctor.testing import FakeLLM, FakeLLMConfig, FakeLLMProcess, FakeLLMThread

Check = Callable[[FakeLLM, aiohttp.ClientSession], Awaitable[None]]


def run(cfg: FakeLLMConfig, check: Check, timeout: float = 10.0) -> None:
    """Serve ``cfg`` on an ephemeral port and run ``check`` against it, bounded in time."""

    async def main() -> None:
        async with FakeLLM(cfg, host="127.0.0.1", port=0) as llm, aiohttp.ClientSession() as session:
            await asyncio.wait_for(check(llm, session), timeout)

    asyncio.run(main())


def chat_body(*messages: Any, **extra: Any) -> dict[str, Any]:
    msgs = [m if isinstance(m, dict) else {"role": "user", "content": m} for m in messages]
    return {"model": "fake", "messages": msgs, **extra}


async def post(
    session: aiohttp.ClientSession, llm: FakeLLM, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """POST and return (status, parsed JSON or raw text for streams, response)."""
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, (str, bytes)) else {"json": body}
    async with session.post(llm.base_url + path, headers=headers, **kwargs) as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text), resp
        return resp.status, text, resp


async def ask(session: aiohttp.ClientSession, llm: FakeLLM, *messages: Any, **extra: Any) -> dict[str, Any]:
    status, data, _ = await post(session, llm, "/chat/completions", chat_body(*messages, **extra))
    assert status == 200, data
    return data


def sse_events(text: str) -> list[Any]:
    lines = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# -- reply modes ------------------------------------------------------------------------------


def test_echo_reply_has_openai_shape_and_usage() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        data = await ask(s, llm, {"role": "system", "content": "be brief"}, "first", "hello there, model")
        assert data["object"] == "chat.completion" and data["model"] == "fake"
        assert isinstance(data["id"], str) and isinstance(data["created"], int)
        choice = data["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": "hello there, model"}
        assert choice["finish_reason"] == "stop"
        usage = data["usage"]
        prompt_chars = len("be brief") + len("first") + len("hello there, model")
        assert usage["prompt_tokens"] == prompt_chars // 4
        assert usage["completion_tokens"] == len("hello there, model") // 4
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        tiny = await ask(s, llm, "a")
        assert tiny["usage"]["completion_tokens"] == 1 and tiny["usage"]["prompt_tokens"] == 1

    run(FakeLLMConfig(), check)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 17 + 25?", "42"),
        ("compute 10 - 13", "-3"),
        ("6 * 7 =", "42"),
        ("what is 6 times 7", "42"),
        ("9 plus 1", "10"),
        ("9 minus 10", "-1"),
        ("7 / 2", "3"),
        ("Example: 1 + 1 = 2. Question: 20 / 4", "5"),
        ("no numbers here", "I don't know"),
    ],
)
def test_arith_solves_the_last_expression(question: str, answer: str) -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        data = await ask(s, llm, "ignored 100 + 100", {"role": "assistant", "content": "ok"}, question)
        assert data["choices"][0]["message"]["content"] == answer

    run(FakeLLMConfig(reply="arith"), check)


def test_answers_win_over_fixed_reply_and_legacy_completions_use_the_prompt() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        assert (await ask(s, llm, "capital of France?"))["choices"][0]["message"]["content"] == "Paris"
        assert (await ask(s, llm, "France and Spain"))["choices"][0]["message"]["content"] == "Paris"
        assert (await ask(s, llm, "anything else"))["choices"][0]["message"]["content"] == "fixed text"
        status, data, _ = await post(s, llm, "/completions", {"model": "fake", "prompt": "Spain is"})
        assert status == 200 and data["object"] == "text_completion"
        assert data["choices"][0]["text"] == "Madrid"
        assert llm.counts == {"capital of France?": 1, "France and Spain": 1, "anything else": 1, "Spain is": 1}

    run(FakeLLMConfig(reply="fixed text", answers={"France": "Paris", "Spain": "Madrid"}), check)


def test_max_tokens_truncates_with_length_and_stop_cuts() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        text = "abcdefghij" * 3
        data = await ask(s, llm, text, max_tokens=2)
        assert data["choices"][0]["message"]["content"] == text[:8]
        assert data["choices"][0]["finish_reason"] == "length"
        data = await ask(s, llm, "one. two. three", stop=["XX", ". t"])
        assert data["choices"][0]["message"]["content"] == "one"
        assert data["choices"][0]["finish_reason"] == "stop"
        data = await ask(s, llm, "short", max_tokens=100, stop="zz")
        assert data["choices"][0] == {
            "index": 0,
            "message": {"role": "assistant", "content": "short"},
            "logprobs": None,
            "finish_reason": "stop",
        }

    run(FakeLLMConfig(), check)


# -- streaming and scripts --------------------------------------------------------------------


def test_streaming_splits_content_and_sends_usage_only_when_asked() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        status, text, resp = await post(s, llm, "/chat/completions", chat_body("stream me please", stream=True))
        assert status == 200 and resp.content_type == "text/event-stream"
        events = sse_events(text)
        assert all(e["object"] == "chat.completion.chunk" for e in events)
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        pieces = [e["choices"][0]["delta"].get("content", "") for e in events]
        assert "".join(pieces) == "stream me please" and sum(1 for p in pieces if p) > 1
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
        assert all("usage" not in e for e in events)

        body = chat_body("count", stream=True, stream_options={"include_usage": True}, max_tokens=1)
        events = sse_events((await post(s, llm, "/chat/completions", body))[1])
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 1
        assert len({e["id"] for e in events}) == 1

        status, text, _ = await post(s, llm, "/completions", {"prompt": "legacy text", "stream": True})
        chunks = sse_events(text)
        assert "".join(c["choices"][0]["text"] for c in chunks) == "legacy text"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    run(FakeLLMConfig(), check)


def test_streaming_spreads_latency_and_still_delivers_every_chunk() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        start = time.monotonic()
        status, text, _ = await post(s, llm, "/chat/completions", chat_body("slow stream", stream=True))
        # A lower bound only: asyncio.sleep never returns early, so this cannot flake.
        assert status == 200 and time.monotonic() - start >= 0.2
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(text)) == "slow stream"

    run(FakeLLMConfig(latency=0.2), check)


SCRIPT = [
    {"content": "let me compute", "tool_calls": [{"name": "python", "arguments": {"code": "print(6*7)"}}]},
    {"tool_calls": [{"name": "search", "arguments": '{"q": "x"}'}, {"name": "python", "arguments": {}}]},
    {"content_from": "arith"},
]


def test_script_turns_follow_the_number_of_assistant_messages() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        history: list[Any] = ["what is 6 * 7"]
        first = await ask(s, llm, *history)
        msg = first["choices"][0]["message"]
        assert first["choices"][0]["finish_reason"] == "tool_calls"
        assert msg["content"] == "let me compute"
        (call,) = msg["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"] == {"name": "python", "arguments": '{"code": "print(6*7)"}'}

        history += [msg, {"role": "tool", "tool_call_id": call["id"], "content": "42"}]
        second = (await ask(s, llm, *history))["choices"][0]["message"]
        assert second["content"] is None
        assert [c["function"]["name"] for c in second["tool_calls"]] == ["search", "python"]
        assert second["tool_calls"][0]["function"]["arguments"] == '{"q": "x"}'
        assert second["tool_calls"][1]["function"]["arguments"] == "{}"
        assert len({c["id"] for c in second["tool_calls"] + [call]}) == 3

        history += [second, {"role": "tool", "tool_call_id": "x", "content": "ok"}, "so 6 * 7 is?"]
        third = await ask(s, llm, *history)
        assert third["choices"][0] == {
            "index": 0,
            "message": {"role": "assistant", "content": "42"},
            "logprobs": None,
            "finish_reason": "stop",
        }
        # Past the end of the script the last entry repeats.
        fourth = await ask(s, llm, *history, {"role": "assistant", "content": None}, "3 + 4")
        assert fourth["choices"][0]["message"]["content"] == "7"
        assert llm.counts == {"what is 6 * 7": 4}

    run(FakeLLMConfig(script=SCRIPT), check)


def test_streamed_tool_calls_reassemble_from_deltas() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        history = ["q", {"role": "assistant", "content": None, "tool_calls": []}]
        events = sse_events((await post(s, llm, "/chat/completions", chat_body(*history, stream=True)))[1])
        calls: dict[int, dict[str, str]] = {}
        for event in events:
            for delta in event["choices"][0]["delta"].get("tool_calls", []):
                slot = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += delta.get("id", "")
                slot["name"] += delta.get("function", {}).get("name", "")
                slot["arguments"] += delta.get("function", {}).get("arguments", "")
        assert [calls[i]["name"] for i in sorted(calls)] == ["search", "python"]
        assert json.loads(calls[0]["arguments"]) == {"q": "x"} and calls[1]["arguments"] == "{}"
        assert all(c["id"].startswith("call_") for c in calls.values())
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"

    run(FakeLLMConfig(script=SCRIPT), check)


# -- injected faults --------------------------------------------------------------------------


def test_random_429_carries_retry_after_and_500_is_counted() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        status, data, resp = await post(s, llm, "/chat/completions", chat_body("x"))
        assert status == 429 and resp.headers["Retry-After"] == "0.05"
        assert data["error"]["type"] == "rate_limit_error"
        llm.reconfigure(rate_limit_rate=0.0, fail_rate=1.0)
        status, data, _ = await post(s, llm, "/chat/completions", chat_body("x"))
        assert status == 500 and "message" in data["error"]
        stats = llm.stats()
        assert stats["errors"] == {"429": 1, "500": 1} and stats["ok"] == 0 and stats["requests"] == 2
        assert llm.counts == {"x": 2} and llm.successes == {}

    run(FakeLLMConfig(rate_limit_rate=1.0, retry_after=0.05), check)


def test_random_faults_are_reproducible_from_the_seed() -> None:
    def pattern() -> list[int]:
        statuses: list[int] = []

        async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
            for i in range(30):
                statuses.append((await post(s, llm, "/chat/completions", chat_body(f"q{i}")))[0])

        run(FakeLLMConfig(fail_rate=0.5, seed=7), check)
        return statuses

    first = pattern()
    assert first == pattern()
    assert set(first) == {200, 500}


def test_hang_replies_after_hang_seconds_and_a_client_timeout_frees_the_slot() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        start = time.monotonic()
        assert (await ask(s, llm, "hang briefly"))["choices"][0]["message"]["content"] == "hang briefly"
        assert time.monotonic() - start >= 0.2

        llm.reconfigure(hang_seconds=3600.0)
        with pytest.raises(asyncio.TimeoutError):
            await s.post(
                llm.base_url + "/chat/completions", json=chat_body("forever"), timeout=aiohttp.ClientTimeout(total=0.3)
            )
        for _ in range(100):  # the server notices the disconnect and cancels the handler
            if llm.stats()["in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert llm.stats()["in_flight"] == 0
        assert llm.successes == {"hang briefly": 1} and llm.counts["forever"] == 1

    run(FakeLLMConfig(hang_rate=1.0, hang_seconds=0.2), check)


def test_max_rps_token_bucket_refuses_excess_with_retry_after() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        results = await asyncio.gather(*(post(s, llm, "/chat/completions", chat_body(f"q{i}")) for i in range(20)))
        statuses = [r[0] for r in results]
        assert statuses.count(200) >= 2 and statuses.count(429) >= 10
        assert set(statuses) == {200, 429}
        waits = [float(r[2].headers["Retry-After"]) for r in results if r[0] == 429]
        assert all(0 < w <= 0.5 for w in waits)
        assert llm.stats()["errors"]["429"] == statuses.count(429)

    run(FakeLLMConfig(max_rps=2.0), check)


def test_max_concurrency_refuses_requests_beyond_the_limit() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        results = await asyncio.gather(*(post(s, llm, "/chat/completions", chat_body(f"q{i}")) for i in range(6)))
        statuses = [r[0] for r in results]
        assert statuses.count(429) >= 1 and statuses.count(200) >= 2
        assert all(r[2].headers["Retry-After"] == "0.1" for r in results if r[0] == 429)
        assert llm.stats()["max_in_flight"] >= 3

    # A hang (not latency) holds the admitted requests, so the test does not depend on timing.
    run(FakeLLMConfig(max_concurrency=2, hang_rate=1.0, hang_seconds=0.5, retry_after=0.1), check)


def test_fail_samples_fail_leading_requests_per_key() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        async def status(key: str) -> int:
            return (await post(s, llm, "/chat/completions", chat_body("same text"), {"X-Proctor-Sample-Id": key}))[0]

        assert [await status("a") for _ in range(3)] == [500, 500, 200]
        assert [await status("b") for _ in range(3)] == [500, 500, 500]
        assert [await status("c") for _ in range(2)] == [200, 200]
        assert llm.counts == {"a": 3, "b": 3, "c": 2}
        assert llm.successes == {"a": 1, "c": 2}

    run(FakeLLMConfig(fail_samples={"a": 2, "b": -1}), check)


def test_context_limit_auth_and_unknown_model_errors() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        auth = {"Authorization": "Bearer sk-test"}
        status, data, _ = await post(s, llm, "/chat/completions", chat_body("x" * 11), auth)
        assert status == 400 and data["error"]["code"] == "context_length_exceeded"
        assert data["error"]["message"].startswith("This model's maximum context length is 10 tokens")
        assert data["error"]["type"] == "invalid_request_error"

        status, data, _ = await post(s, llm, "/chat/completions", chat_body("hi"))
        assert status == 401 and data["error"]["code"] == "invalid_api_key"
        status, _, _ = await post(s, llm, "/chat/completions", chat_body("hi"), {"Authorization": "Bearer nope"})
        assert status == 401
        async with s.get(llm.base_url + "/models") as resp:
            assert resp.status == 401
        async with s.get(llm.base_url + "/models", headers=auth) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "object": "list",
                "data": [{"id": "m1", "object": "model", "owned_by": "proctor-testing"}],
            }

        status, data, _ = await post(s, llm, "/chat/completions", {**chat_body("hi"), "model": "gpt-x"}, auth)
        assert status == 404
        assert data["error"]["message"] == "model 'gpt-x' does not exist"
        assert data["error"]["code"] == "model_not_found"
        status, data, _ = await post(s, llm, "/chat/completions", {**chat_body("hi"), "model": "m1"}, auth)
        assert status == 200 and data["model"] == "m1"
        assert llm.stats()["errors"] == {"400": 1, "401": 2, "404": 1}

    run(FakeLLMConfig(model="m1", context_limit=10, require_key="sk-test"), check)


def test_bad_bodies_get_openai_style_400s() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        for body in ["{not json", "[1, 2]", json.dumps({"model": "fake"}), json.dumps({"messages": "hi"})]:
            status, data, _ = await post(s, llm, "/chat/completions", body)
            assert status == 400 and data["error"]["type"] == "invalid_request_error", body
        assert llm.stats()["errors"] == {"400": 4} and llm.counts == {}

    run(FakeLLMConfig(), check)


# -- counters and control endpoints -----------------------------------------------------------


def test_sample_key_is_header_else_first_user_message() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        await post(s, llm, "/chat/completions", chat_body("first", {"role": "assistant", "content": "a"}, "second"))
        await post(s, llm, "/chat/completions", chat_body("first"))
        await post(s, llm, "/chat/completions", chat_body("first"), {"X-Proctor-Sample-Id": "s-1"})
        await post(s, llm, "/chat/completions", chat_body("other"), {"X-Proctor-Sample-Id": "s-1"})
        assert llm.counts == {"first": 2, "s-1": 2}
        assert llm.successes == {"first": 2, "s-1": 2}

    run(FakeLLMConfig(), check)


def test_stats_reset_and_config_endpoints() -> None:
    async def check(llm: FakeLLM, s: aiohttp.ClientSession) -> None:
        root = llm.base_url.removesuffix("/v1")
        await ask(s, llm, "one")
        async with s.get(root + "/_stats") as resp:
            stats = await resp.json()
        last = stats.pop("last_request")
        assert last["messages"] == [{"role": "user", "content": "one"}]
        assert stats == {
            "requests": 1,
            "ok": 1,
            "errors": {},
            "counts": {"one": 1},
            "successes": {"one": 1},
            "max_in_flight": 1,
            "in_flight": 0,
        }
        async with s.post(root + "/_config", json={"reply": "changed", "answers": {"k": "v"}}) as resp:
            assert resp.status == 200 and (await resp.json())["reply"] == "changed"
        assert llm.config.reply == "changed"
        assert (await ask(s, llm, "two"))["choices"][0]["message"]["content"] == "changed"
        assert (await ask(s, llm, "k?"))["choices"][0]["message"]["content"] == "v"
        for bad in [{"no_such_field": 1}, {"fail_rate": 2}, {"script": [{"tool_calls": [{}]}]}]:
            async with s.post(root + "/_config", json=bad) as resp:
                assert resp.status == 400, bad
                assert "error" in await resp.json()
        assert llm.config.fail_rate == 0.0
        async with s.post(root + "/_reset") as resp:
            assert resp.status == 200
        assert llm.stats()["requests"] == 0 and llm.counts == {} and llm.successes == {}

    run(FakeLLMConfig(), check)


def test_config_validation_raises_input_error() -> None:
    with pytest.raises(InputError, match="fail_rate"):
        FakeLLMConfig(fail_rate=1.5)
    with pytest.raises(InputError, match="fail_rat"):
        FakeLLMConfig.from_dict({"fail_rat": 0.5})
    with pytest.raises(InputError, match="max_rps"):
        FakeLLMConfig(max_rps=0)
    assert FakeLLMConfig.from_dict(FakeLLMConfig(script=SCRIPT).to_dict()).script == SCRIPT


# -- other hosts -------------------------------------------------------------------------------


def _get_json(url: str, data: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(
        url,
        data=None if data is None else json.dumps(data).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_thread_variant_serves_sync_callers() -> None:
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        data = _get_json(llm.base_url + "/chat/completions", chat_body("2 + 2"), {"X-Proctor-Sample-Id": "k"})
        assert data["choices"][0]["message"]["content"] == "4"
        assert llm.counts == {"k": 1} and llm.successes == {"k": 1} and llm.stats()["ok"] == 1
        llm.reconfigure(reply="fixed")
        assert (
            _get_json(llm.base_url + "/chat/completions", chat_body("2 + 2"))["choices"][0]["message"]["content"]
            == "fixed"
        )
        llm.reset()
        assert llm.stats()["requests"] == 0


def test_process_variant_serves_reads_stats_and_reconfigures() -> None:
    cfg = FakeLLMConfig(answers={"ping": "pong"}, fail_samples={"bad": -1})

    async def main() -> None:
        async with FakeLLMProcess(cfg) as llm, aiohttp.ClientSession() as s:
            async with s.post(llm.base_url + "/chat/completions", json=chat_body("ping")) as resp:
                assert (await resp.json())["choices"][0]["message"]["content"] == "pong"
            async with s.post(llm.base_url + "/chat/completions", json=chat_body("bad")) as resp:
                assert resp.status == 500
            assert llm.counts == {"ping": 1, "bad": 1} and llm.successes == {"ping": 1}
            llm.reconfigure(reply="new")
            assert llm.config.reply == "new"
            with pytest.raises(InputError):
                llm.reconfigure(latency=-1)
            llm.reset()
            assert llm.stats()["requests"] == 0
            proc = llm.proc
            assert proc is not None and os.getpgid(proc.pid) == proc.pid  # its own process group
        assert proc.poll() is not None

    asyncio.run(asyncio.wait_for(main(), 30))


def test_cli_serve_writes_port_file_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"model": "cli-model", "reply": "arith", "latency": 0.5}))
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proctor.testing",
            "serve",
            "--port",
            "0",
            "--latency",
            "0",
            "--config",
            str(config),
            "--port-file",
            str(port_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for _ in range(3000):  # 60 s at most: the interpreter and aiohttp start slowly on a loaded host
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert port_file.exists(), proc.communicate(timeout=5)[0]
        base = f"http://127.0.0.1:{int(port_file.read_text())}/v1"
        assert _get_json(base + "/models")["data"][0]["id"] == "cli-model"
        body = {**chat_body("3 times 5"), "model": "cli-model"}
        assert _get_json(base + "/chat/completions", body)["choices"][0]["message"]["content"] == "15"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_cli_rejects_a_bad_config_file_with_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"fail_rate": "often"}))
    result = subprocess.run(
        [sys.executable, "-m", "proctor.testing", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "fail_rate" in result.stderr


def _serve_fake(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor.testing", "serve", "--port", "0", "--port-file", str(port_file), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(3000):  # 60 s at most: the interpreter and aiohttp start slowly on a loaded host
        if port_file.exists() or proc.poll() is not None:
            break
        time.sleep(0.02)
    if not port_file.exists():
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(proc.communicate(timeout=5)[0])
    return proc, f"http://127.0.0.1:{int(port_file.read_text())}/v1"


def _stop_fake(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=10)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.parametrize(
    ("args", "accuracy", "banner"),
    [
        ((), (0.0, 0.05), "so a scorer finds no answer and a run scores near 0%; --answers-from DATA.jsonl"),
        (("--answers-from", "examples/arith/data.jsonl"), (1.0, 1.0), "replies: the known answers of 150 question(s)"),
    ],
)
def test_the_arith_example_against_the_cli_fake_scores_what_its_banner_says(
    tmp_path: Path, args: tuple[str, ...], accuracy: tuple[float, float], banner: str
) -> None:
    root = Path(__file__).resolve().parents[2]
    proc, base = _serve_fake(tmp_path, *[str(root / a) if a.endswith(".jsonl") else a for a in args])
    try:
        out = tmp_path / "run"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "proctor",
                "run",
                str(root / "examples/arith/spec.yaml"),
                "--model",
                f"subject={base}@fake",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    finally:
        output = _stop_fake(proc)
    assert banner in output
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["counts"]["scored"] == 150 and accuracy[0] <= stats["accuracy"]["value"] <= accuracy[1]


def test_answers_from_a_dataset_missing_its_fields_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "x", "a": "1"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "proctor.testing", "serve", "--answers-from", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"--answers-from {data}, line 1: needs the fields 'question' and 'answer'" in result.stderr
