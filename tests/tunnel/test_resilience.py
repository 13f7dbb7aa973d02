"""Lost connections, absent clients and several clients: no call is lost or failed on the way."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from tunnel.tunnelkit import chat, run, wait_until

from proctor.testing import FakeLLM, FakeLLMConfig
from proctor.tunnel.agent import TunnelAgent


def test_disconnect_mid_run_replays_unanswered_calls(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-replay", owner="alice")
    n = 8

    async def body() -> None:
        # Every call first hangs at the model, so all of them are in flight when the line drops.
        async with FakeLLM(FakeLLMConfig(reply="echo", hang_rate=1.0, hang_seconds=300)) as llm:
            lines: list[str] = []
            agent = TunnelAgent(server.url, "job-replay", "tok-alice", secret, llm.base_url, log=lines.append)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-replay')}/chat/completions"

                async def one(i: int) -> tuple[int, str]:
                    async with http.post(url, json=chat(f"sample {i}")) as resp:
                        data = await resp.json()
                        return resp.status, data["choices"][0]["message"]["content"]

                calls = [asyncio.create_task(one(i)) for i in range(n)]
                await wait_until(lambda: llm.in_flight == n, what="all calls at the model")
                llm.reconfigure(hang_rate=0.0)
                agent.drop_connections()  # the network fails; the agent reconnects by itself
                results = await asyncio.gather(*calls)
            assert results == [(200, f"sample {i}") for i in range(n)]
            # Each call reached the model twice (the lost attempt and its replay), answered once.
            assert llm.counts == {f"sample {i}": 2 for i in range(n)}
            assert llm.successes == {f"sample {i}": 1 for i in range(n)}
            assert agent.stats.reconnects == 1
            stop.set()
            await task
            assert any("reconnected" in line for line in lines)

    run(body())


def test_no_client_past_grace_pauses_then_resumes(hub_server: Any) -> None:
    server = hub_server(grace=0.2)
    secret, internal = server.hub.register_job("job-grace", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo")) as llm:
            stop1 = asyncio.Event()
            first = TunnelAgent(server.url, "job-grace", "tok-alice", secret, llm.base_url)
            task1 = asyncio.create_task(first.run(stop1))
            await wait_until(lambda: server.hub.is_connected("job-grace"), what="first agent")
            stop1.set()
            await task1
            # The client is gone for longer than the grace: the server is told the job waits.
            assert await asyncio.to_thread(server.next_state) == ("job-grace", False)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-grace')}/chat/completions"

                async def call() -> tuple[int, Any]:
                    async with http.post(url, json=chat("still here")) as resp:
                        return resp.status, await resp.json()

                # A call made meanwhile waits instead of failing ...
                pending = asyncio.create_task(call())
                await wait_until(lambda: server.hub.stats("job-grace")["waiting"] == 1, what="call queued")
                assert not pending.done()
                # (and the server hears again that the job waits, in case it was queued before)
                assert await asyncio.to_thread(server.next_state) == ("job-grace", False)
                # ... and is answered once a client attaches; the job is told it may run again.
                stop2 = asyncio.Event()
                task2 = asyncio.create_task(
                    TunnelAgent(server.url, "job-grace", "tok-alice", secret, llm.base_url).run(stop2)
                )
                status, data = await pending
                assert status == 200 and data["choices"][0]["message"]["content"] == "still here"
                assert await asyncio.to_thread(server.next_state) == ("job-grace", True)
            stop2.set()
            await task2

    run(body())


def test_deadline_without_client_is_a_503_that_says_why(hub_server: Any) -> None:
    server = hub_server(grace=0.05)
    _, internal = server.hub.register_job("job-dl", owner="alice")

    async def body() -> None:
        headers = {"Authorization": f"Bearer {internal}", "X-Proctor-Deadline": "0.3"}
        url = f"{server.facade('job-dl')}/chat/completions"
        async with aiohttp.ClientSession(headers=headers) as http, http.post(url, json=chat("q")) as resp:
            assert resp.status == 503
            error = (await resp.json())["error"]
        assert error["code"] == "waiting_for_tunnel"
        assert "no tunnel client" in error["message"] and "proctor tunnel" in error["message"]
        assert server.hub.stats("job-dl")["calls"] == 0  # nothing left behind

    run(body())
    assert server.next_state() == ("job-dl", False)


def test_second_connection_shares_the_load(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-two", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", latency=0.02)) as llm:
            stop = asyncio.Event()
            agents = [TunnelAgent(server.url, "job-two", "tok-alice", secret, llm.base_url) for _ in range(2)]
            tasks = [asyncio.create_task(a.run(stop)) for a in agents]
            await wait_until(lambda: server.hub.agent_count("job-two") == 2, what="two agents")
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-two')}/chat/completions"

                async def one(i: int) -> int:
                    async with http.post(url, json=chat(f"m{i}")) as resp:
                        await resp.read()
                        return resp.status

                statuses = await asyncio.gather(*(one(i) for i in range(40)))
            assert statuses == [200] * 40
            served = [a.stats.served for a in agents]
            assert sum(served) == 40
            assert min(served) >= 10, served  # least-pending dispatch spreads the calls
            stop.set()
            await asyncio.gather(*tasks)

    run(body())


def test_job_end_stops_the_agent_and_fails_waiting_calls(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-end", owner="alice")

    async def body() -> None:
        async with FakeLLM(FakeLLMConfig(reply="echo", hang_rate=1.0, hang_seconds=300)) as llm:
            agent = TunnelAgent(server.url, "job-end", "tok-alice", secret, llm.base_url)
            task = asyncio.create_task(agent.run())
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-end')}/chat/completions"

                async def call() -> int:
                    async with http.post(url, json=chat("late")) as resp:
                        return resp.status

                pending = asyncio.create_task(call())
                await wait_until(lambda: llm.in_flight == 1, what="call at the model")
                await asyncio.to_thread(server.hub.unregister_job, "job-end")  # from another thread
                assert await pending == 503
            stats = await task  # returns by itself: the job is over
            assert stats.connects == 1

    run(body())


def test_silent_client_is_dropped_by_heartbeat_and_its_calls_replayed(hub_server: Any) -> None:
    """A client that stops answering (a sleeping laptop) is detected; its calls go elsewhere."""
    from proctor.tunnel import protocol
    from proctor.tunnel.agent import tunnel_ws_url

    server = hub_server(heartbeat=0.1)
    secret, internal = server.hub.register_job("job-hb", owner="alice")

    async def body() -> None:
        headers = {"Authorization": "Bearer tok-alice", protocol.SECRET_HEADER: secret}
        async with FakeLLM(FakeLLMConfig(reply="echo")) as llm, aiohttp.ClientSession() as raw:
            # Authenticates, then never reads nor answers anything.
            mute = await raw.ws_connect(tunnel_ws_url(server.url, "job-hb"), headers=headers, autoping=False)
            await wait_until(lambda: server.hub.is_connected("job-hb"), what="mute client")
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                url = f"{server.facade('job-hb')}/chat/completions"

                async def call() -> tuple[int, Any]:
                    async with http.post(url, json=chat("who answers?")) as resp:
                        return resp.status, await resp.json()

                pending = asyncio.create_task(call())  # dispatched to the mute client
                await wait_until(lambda: server.hub.stats("job-hb")["calls"] == 1, what="call dispatched")
                stop = asyncio.Event()
                agent = TunnelAgent(server.url, "job-hb", "tok-alice", secret, llm.base_url)
                task = asyncio.create_task(agent.run(stop))
                status, data = await pending
                assert status == 200 and data["choices"][0]["message"]["content"] == "who answers?"
                assert agent.stats.served == 1
                await wait_until(lambda: server.hub.agent_count("job-hb") == 1, what="mute client dropped")
                stop.set()
                await task
            await mute.close()

    run(body())
