"""Attack 2, last part: a job reads another user's private-mode facade token from /proc and calls
that user's *private* model through the server. Before: the victim's local model received the
attacker's prompt, with the victim's key attached by the victim's own tunnel agent."""

from __future__ import annotations

import json
import threading
import time

from sandbox_kit import probe_job, wait_for

from proctor.testing import FakeLLMConfig, FakeLLMThread
from proctor.tunnel.agent import run_agent_sync


def test_a_job_cannot_reach_another_users_private_model(secure_server) -> None:
    srv = secure_server()
    bob, mallory = srv.client("bob"), srv.client("mallory")
    with FakeLLMThread(FakeLLMConfig(reply="private answer")) as bobs_model:
        r = bob.post("/v1/jobs", json=probe_job("sleep", "120", private=True, models={"subject": {"model": "fake"}}))
        assert r.status_code == 201, r.text
        victim, secret = r.json()["job"]["id"], r.json()["tunnel_secret"]
        stop = threading.Event()
        agent = threading.Thread(
            target=run_agent_sync,
            daemon=True,
            kwargs=dict(
                server_url=srv.url,
                job_id=victim,
                token=srv.tokens["bob"],
                tunnel_secret=secret,
                model_url=bobs_model.base_url,
                stop_event=stop,
                log=lambda line: None,
            ),
        )
        agent.start()
        try:
            wait_for(bob, victim, {"running"})
            port = srv.url.rsplit(":", 1)[1]
            attack = mallory.post("/v1/jobs", json=probe_job("steal", victim, port)).json()["job"]["id"]
            wait_for(mallory, attack, {"succeeded", "failed"})
            lines = [ln for ln in srv.log(attack).splitlines() if ln.startswith("STEAL ")]
            assert lines, srv.log(attack)[-2000:]
            found = json.loads(lines[-1][len("STEAL ") :])
            time.sleep(0.5)  # a forwarded call would have reached bob's model by now
            assert found["tokens_found"] == 0  # no other job's environment is readable
            assert all(status in (401, 403) for status in found["statuses"]), found
            assert bobs_model.counts == {}  # the private model never saw the attacker's prompt
        finally:
            bob.post(f"/v1/jobs/{victim}/cancel")
            stop.set()
            agent.join(timeout=30)
    assert not agent.is_alive()
