"""A server with ``ray_address`` gives ``executor: {kind: ray}`` jobs ``--ray-address`` and the
cluster's token; a server without one refuses such a spec with a 400 naming ``executor``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray_kit
import yaml
from helpers import create_token, start_server, stop_process

from proctor.errors import InputError

ROWS = [{"id": f"q{i}", "question": f"What is {i} + {i + 2}?", "answer": str(2 * i + 2)} for i in range(12)]


def ray_spec(base_url: str) -> dict[str, Any]:
    spec = ray_kit.ray_spec(base_url)
    return {
        "kind": "proctor",
        "spec": yaml.safe_dump(spec),
        "files": {"data.jsonl": {"content": "".join(json.dumps(r) + "\n" for r in ROWS)}},
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(**config)``: a sandboxed `proctor serve` child and a client for it; stopped at the end."""
    started: list[Any] = []

    def make(**config: Any) -> httpx.Client:
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        cfg = tmp_path / f"server{len(started)}.yaml"
        cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
        token = create_token(data, "alice")
        proc, url = start_server(data, tmp_path / "server.log", "--config", str(cfg))
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        started.append((proc, client))
        return client

    yield make
    for proc, client in started:
        client.close()
        stop_process(proc)


def test_a_server_without_a_ray_cluster_refuses_a_ray_spec_naming_executor(serve: Any) -> None:
    client = serve()
    r = client.post("/v1/jobs", json=ray_spec("http://127.0.0.1:9/v1"))
    assert r.status_code == 400, r.text
    assert r.json()["ok"] is False and r.json()["error"].startswith("executor:")


def test_a_ray_job_gets_the_ray_address_and_token_but_not_in_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proctor.server.jobs import JobSecrets, build_argv, build_env

    # RAY_AUTH_TOKEN outranks the token file: this worker's session Ray set one (a private Ray's
    # token lives in its driver's environment), and so may the user's shell.
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    from proctor.server.settings import ServerSettings

    settings = ServerSettings(data_dir=tmp_path, ray_address="10.0.0.5:6379")
    request = {"kind": "proctor", "ray": True, "limit": None, "concurrency": None, "retry_errors": False}
    argv = build_argv(request, "j1", tmp_path, settings)
    assert argv[-2:] == ["--ray-address", "10.0.0.5:6379"]
    token = tmp_path / "token"
    token.write_text("tok-" + "x" * 20 + "\n", encoding="utf-8")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    try:
        env = build_env(request, "j1", tmp_path, JobSecrets(), settings, private_urls={})
    finally:
        del os.environ["RAY_AUTH_TOKEN_PATH"]
    assert env["RAY_AUTH_TOKEN"] == "tok-" + "x" * 20 and env["RAY_AUTH_MODE"] == "token"
    assert not any("tok-" in part for part in argv)
    # A job stored before the admin removed ray_address is refused at start, naming executor.
    with pytest.raises(InputError, match="^executor"):
        build_argv(request, "j1", tmp_path, ServerSettings(data_dir=tmp_path))
