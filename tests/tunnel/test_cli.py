"""``proctor tunnel`` as a real child process: serves a job until it ends; secrets stay out of argv."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
from tunnel.tunnelkit import chat, run, wait_until

from proctor.testing import FakeLLMConfig, FakeLLMThread


def _spawn(
    server_url: str, job: str, model_url: str, env: dict[str, str], *extra: str, key_env: str = "LOCAL_MODEL_KEY"
) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "proctor",
        "tunnel",
        job,
        "--model",
        model_url,
        "--server",
        server_url,
        "--api-key-env",
        key_env,
        *extra,
    ]
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_tunnel_command_serves_until_the_job_ends(hub_server: Any) -> None:
    server = hub_server()
    secret, internal = server.hub.register_job("job-cli", owner="alice")
    with FakeLLMThread(FakeLLMConfig(reply="echo", require_key="k-local")) as llm:
        env = {"PROCTOR_TOKEN": "tok-alice", "PROCTOR_TUNNEL_SECRET": secret, "LOCAL_MODEL_KEY": "k-local"}
        proc = _spawn(server.url, "job-cli", llm.base_url, env)
        try:

            async def body() -> None:
                await wait_until(lambda: server.hub.is_connected("job-cli"), timeout=30, what="CLI agent")
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {internal}"}) as http:
                    url = f"{server.facade('job-cli')}/chat/completions"
                    async with http.post(url, json=chat("via cli")) as resp:
                        assert resp.status == 200
                        assert (await resp.json())["choices"][0]["message"]["content"] == "via cli"

            run(body())
            server.hub.unregister_job("job-cli")
            _, err = proc.communicate(timeout=30)  # exits by itself once the job is over
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "connected" in err and "served 1 calls" in err
    for secret_text in (secret, "tok-alice", "k-local", llm.base_url):
        assert secret_text not in err


def test_tunnel_command_serves_each_private_role_from_its_own_model(hub_server: Any) -> None:
    """``--model ROLE=URL`` per role, each with its own key: a call names its role (the job
    channel's ``r``, the facade's X-Proctor-Role header) and reaches that role's model."""
    from proctor.models.transport.channel import TunnelChannel, channel_url

    server = hub_server()
    secret, internal = server.hub.register_job("job-roles", owner="alice", roles=["subject", "judge"])
    with (
        FakeLLMThread(FakeLLMConfig(reply="echo", model="subject-model", require_key="k-subject")) as subject,
        FakeLLMThread(FakeLLMConfig(reply="echo", model="judge-model", require_key="k-judge")) as judge,
    ):
        env = {
            "PROCTOR_TOKEN": "tok-alice",
            "PROCTOR_TUNNEL_SECRET": secret,
            "K_SUBJECT": "k-subject",
            "K_JUDGE": "k-judge",
        }
        proc = _spawn(
            server.url, "job-roles", f"subject={subject.base_url}", env,
            "--model", f"judge={judge.base_url}", "--api-key-env", "judge=K_JUDGE", key_env="subject=K_SUBJECT",
        )  # fmt: skip
        try:

            async def body() -> None:
                await wait_until(lambda: server.hub.is_connected("job-roles"), timeout=30, what="CLI agent")
                async with aiohttp.ClientSession() as http:
                    channel = TunnelChannel(
                        channel_url(server.facade("job-roles")), {"Authorization": f"Bearer {internal}"}, http
                    )
                    body = json.dumps(chat("to the judge", model="judge-model")).encode()
                    answer = await channel.request("POST", "/chat/completions", body, None, timeout=10, role="judge")
                    assert answer.status == 200, answer.body
                    body = json.dumps(chat("to the subject", model="subject-model")).encode()
                    answer = await channel.request("POST", "/chat/completions", body, None, timeout=10, role="subject")
                    assert answer.status == 200, answer.body
                    await channel.aclose()
                    url = f"{server.facade('job-roles')}/models"
                    for role, name in (("judge", "judge-model"), ("subject", "subject-model"), (None, "subject-model")):
                        headers = {"Authorization": f"Bearer {internal}"} | ({"X-Proctor-Role": role} if role else {})
                        async with http.get(url, headers=headers) as resp:
                            assert (await resp.json())["data"][0]["id"] == name, role  # no role: the first

            run(body())
            server.hub.unregister_job("job-roles")
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert subject.successes == {"to the subject": 1} and judge.successes == {"to the judge": 1}


def test_tunnel_command_refuses_ambiguous_model_flags(hub_server: Any) -> None:
    server = hub_server()
    env = {"PROCTOR_TOKEN": "tok-alice", "PROCTOR_TUNNEL_SECRET": "s", "LOCAL_MODEL_KEY": "k"}
    proc = _spawn(server.url, "job-x", "http://127.0.0.1:9/v1", env, "--model", "http://127.0.0.1:10/v1")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--model is given twice without a role" in err and "Traceback" not in err


def test_tunnel_command_refused_with_a_wrong_secret(hub_server: Any) -> None:
    server = hub_server()
    server.hub.register_job("job-cli2", owner="alice")
    env = {"PROCTOR_TOKEN": "tok-alice", "PROCTOR_TUNNEL_SECRET": "not-it", "LOCAL_MODEL_KEY": "k"}
    proc = _spawn(server.url, "job-cli2", "http://127.0.0.1:9/v1", env)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "refused the tunnel of job job-cli2" in err


def test_run_agent_sync_stops_on_a_threading_event(hub_server: Any) -> None:
    """What ``proctor submit --private`` does: the agent in a thread, stopped by an event."""
    import threading

    from proctor.tunnel.agent import run_agent_sync

    server = hub_server()
    secret, _ = server.hub.register_job("job-sync", owner="alice")
    stop = threading.Event()
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_agent_sync(server.url, "job-sync", "tok-alice", secret, "http://127.0.0.1:9/v1", stop_event=stop)
        )
    )
    thread.start()
    asyncio.run(wait_until(lambda: server.hub.is_connected("job-sync"), what="sync agent"))
    stop.set()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert result[0].connects == 1
