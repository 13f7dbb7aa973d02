"""Issue 17, item 1: command-template injection through {model}, {base_url}, parameters and job ids.

The template is the docs' own lm-eval template, with the program swapped for a stand-in that
records the argv it was given: what matters is which argv a job would run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from security.frontdoor_kit import ECHO_ARGV, Served, python, served

LM_EVAL = {
    "argv": [
        python(),
        ECHO_ARGV,
        "--model",
        "local-chat-completions",
        "--tasks",
        "{tasks}",
        "--model_args",
        "model={model},base_url={base_url}/chat/completions",
        "--output_path",
        "{out_dir}",
        "{extra}",
    ],
    "params": {"tasks": {"pattern": "^[a-z0-9_,]+$", "default": "gsm8k"}, "extra": {"default": "x"}},
}
DASHED = {
    "argv": [python(), ECHO_ARGV, "--limit", "{limit}"],
    "params": {"limit": {"pattern": "^-?[0-9]+$", "allow_dash": True}},
}
CONFIG = {"templates": {"lm-eval": LM_EVAL, "dashed": DASHED}}


def command(
    template: str = "lm-eval", *, model: str = "fake", base_url: str = "http://127.0.0.1:9/v1", **extra: Any
) -> dict[str, Any]:
    return {
        "kind": "command",
        "template": template,
        "models": {"subject": {"model": model, "base_url": base_url}},
        **extra,
    }


def wait_done(client: httpx.Client, job_id: str) -> dict[str, Any]:
    for _ in range(600):  # bounded: 60 s
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled", "timed_out"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


ATTACKS = {
    "model adds model_args keys": command(model="fake,base_url=http://other/v1,trust_remote_code=True"),
    "model starts with a dash": command(model="--trust_remote_code"),
    "base_url adds model_args keys": command(base_url="http://127.0.0.1:9/v1,trust_remote_code=True"),
    "base_url with a query": command(base_url="http://127.0.0.1:9/v1?x=1"),
    "param becomes an option": command(params={"extra": "--output_path=/x"}),
    "param is a short option": command(params={"extra": "-o/x"}),
    "job id is an option": command(job_id="--output_path"),
    "job id starts with a dash": command(job_id="-rf12345678"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("templates"), CONFIG) as srv:
        yield srv
    assert "Traceback" not in srv.log_text()


@pytest.mark.parametrize("what", list(ATTACKS))
def test_template_injection_refused(server: Served, what: str) -> None:
    with server.client("bob") as bob:
        jobs_before = len(bob.get("/v1/jobs").json()["jobs"])
        answer = bob.post("/v1/jobs", json=ATTACKS[what])
        assert answer.status_code in (400, 422), f"{what}: {answer.status_code} {answer.text}"
        assert answer.json()["ok"] is False
        assert len(bob.get("/v1/jobs").json()["jobs"]) == jobs_before


def test_legitimate_values_reach_argv_exactly(server: Served) -> None:
    with server.client() as alice:
        ok = alice.post("/v1/jobs", json=command(model="org/Model-7B:q4", params={"tasks": "gsm8k,arc"}))
        assert ok.status_code == 201, ok.text
        job_id = ok.json()["job"]["id"]
        assert wait_done(alice, job_id)["state"] == "succeeded"
        argv = json.loads(alice.get(f"/v1/jobs/{job_id}/artifacts/out/argv.json").text)
        assert (
            argv[argv.index("--model_args") + 1]
            == "model=org/Model-7B:q4,base_url=http://127.0.0.1:9/v1/chat/completions"
        )
        assert argv[-1] == "x"


def test_dash_allowed_only_where_the_template_says(server: Served) -> None:
    with server.client() as alice:
        answer = alice.post("/v1/jobs", json=command("dashed", params={"limit": "-5"}))
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["job"]["id"]
        assert wait_done(alice, job_id)["state"] == "succeeded"
        assert json.loads(alice.get(f"/v1/jobs/{job_id}/artifacts/out/argv.json").text) == ["--limit", "-5"]
