"""Private roles reach the engine as a typed run option, never written into the job's spec.

The server gives a private job the facade URL of each private role in ``PROCTOR_PRIVATE_ENDPOINTS``
(``proctor.models.private.PrivateEndpoints``); ``proctor run`` applies it to the parsed spec and
sends those roles' calls over the job channel. The spec copy keeps the upload-time placeholder.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tunnel.tunnelkit import HubServer, running_agent

from proctor.errors import InputError
from proctor.models.config import ModelConfig
from proctor.models.private import ENV, PrivateEndpoints
from proctor.server import jobs as jobmod
from proctor.server.jobs import JobSecrets
from proctor.server.settings import ServerSettings
from proctor.testing import FakeLLMConfig, FakeLLMThread

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "http://127.0.0.1:1/private-facade-placeholder/v1"
N = 6


def _spec(folder: Path) -> Path:
    rows = (ROOT / "examples" / "arith" / "data.jsonl").read_text().splitlines()[:N]
    (folder / "data.jsonl").write_text("\n".join(rows) + "\n")
    spec = (ROOT / "examples" / "arith" / "spec.yaml").read_text()
    spec = spec.replace("http://127.0.0.1:8000/v1", PLACEHOLDER).replace("concurrency: 32", "concurrency: 2")
    spec = spec.replace("model: fake}", "model: fake, api_key_env: PROCTOR_API_KEY_SUBJECT}")
    (folder / "spec.yaml").write_text(spec)
    return folder / "spec.yaml"


def _proctor_run(spec: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_server_writes_no_endpoint_into_the_spec_and_passes_it_typed(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    jobmod.set_private_waits(tmp_path, ["subject"], tunnel_deadline=60.0)
    subject = yaml.safe_load(spec_path.read_text())["models"]["subject"]
    assert "transport" not in subject
    assert subject["base_url"] == PLACEHOLDER
    assert subject["request_timeout"] > 60.0  # the waits are still the spec's

    facade = "http://127.0.0.1:5555/internal/jobs/j1/v1"
    settings = ServerSettings(data_dir=tmp_path / "data")
    env = jobmod.build_env(
        {"kind": "proctor"}, "j1", tmp_path, JobSecrets(), settings, private_urls={"subject": facade}
    )
    option = PrivateEndpoints.from_environ(env)
    assert option == PrivateEndpoints(roles={"subject": facade})
    command = jobmod.build_env(
        {"kind": "command", "template": "none"},
        "j1",
        tmp_path,
        JobSecrets(),
        settings,
        private_urls={"subject": facade},
    )
    assert ENV not in command  # command jobs get OPENAI_BASE_URL, as before


def test_the_option_sends_only_its_roles_over_the_job_channel() -> None:
    models = {
        "subject": ModelConfig(base_url=PLACEHOLDER, model="m", request_timeout=999.0),
        "judge": ModelConfig(base_url="http://127.0.0.1:7/v1", model="j"),
    }
    applied = PrivateEndpoints(roles={"subject": "http://127.0.0.1:9/internal/jobs/x/v1"}).apply(models)
    assert applied["subject"].base_url == "http://127.0.0.1:9/internal/jobs/x/v1"
    assert applied["subject"].transport == "tunnel"
    assert applied["subject"].request_timeout == 999.0  # everything else kept
    assert applied["judge"] == models["judge"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("{not json", "not a valid"),
        (json.dumps({"roles": {"subject": 3}}), "not a valid"),
        (json.dumps({"roles": {"x": "http://a/v1"}}), "role 'x'"),
    ],
)
def test_a_bad_option_is_one_clear_error(value: str, why: str) -> None:
    models = {"subject": ModelConfig(base_url=PLACEHOLDER, model="m")}
    with pytest.raises(InputError, match=why):
        option = PrivateEndpoints.from_environ({ENV: value})
        assert option is not None
        option.apply(models)


def test_proctor_run_follows_the_option_over_the_job_channel(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    server = HubServer().start()
    try:
        secret, internal = server.hub.register_job("job-p", owner="alice")
        with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:

            async def run_with_agent() -> subprocess.CompletedProcess[str]:
                async with running_agent(server, "job-p", secret, llm.base_url):
                    env = {
                        **os.environ,
                        "PROCTOR_API_KEY_SUBJECT": internal,
                        ENV: PrivateEndpoints(roles={"subject": server.facade("job-p")}).to_env(),
                    }
                    return await asyncio.to_thread(_proctor_run, spec, tmp_path / "out", env)

            done = asyncio.run(asyncio.wait_for(run_with_agent(), 150))
            assert done.returncode == 0, done.stdout + done.stderr
            assert sum(llm.successes.values()) == N
        # Every answer went over the job channel (not the HTTP facade): the option chose the transport.
        assert server.hub.channel_answers[200] == N
    finally:
        server.stop()
    assert "tunnel" not in (tmp_path / "spec.yaml").read_text()


def test_without_the_option_the_placeholder_is_never_reached_as_a_model(tmp_path: Path) -> None:
    """The defence the option replaces: without it, the spec's placeholder fails the run at once."""
    spec = _spec(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"PROCTOR_API_KEY_SUBJECT": "x"}
    done = _proctor_run(spec, tmp_path / "out", env)
    assert done.returncode != 0
    assert "no healthy replica" in done.stdout + done.stderr
