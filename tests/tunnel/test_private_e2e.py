"""End to end: ``proctor submit --private`` against ``proctor serve``, the fake LLM behind the tunnel.

The server runs as a real child process with its own data dir; the engine job it spawns reaches
the model only through the facade and the submitter's in-process agent. Afterwards the local
model's URL and key must appear nowhere under the data dir nor in the server's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import create_token, start_server, stop_process

from proctor.testing import FakeLLMConfig, FakeLLMThread

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-local-model-" + "q7" * 12
N = 12


@pytest.mark.slow
def test_private_job_end_to_end_leaves_no_trace_of_the_local_model(tmp_path: Path) -> None:
    data, server_log, out = tmp_path / "data", tmp_path / "server.log", tmp_path / "out"
    data.mkdir()
    token = create_token(data, "alice")
    with FakeLLMThread(FakeLLMConfig(reply="arith", require_key=KEY)) as llm:
        local_url = llm.base_url
        spec_dir = tmp_path / "spec"
        spec_dir.mkdir()
        rows = (ROOT / "examples" / "arith" / "data.jsonl").read_text().splitlines()[:N]
        (spec_dir / "data.jsonl").write_text("\n".join(rows) + "\n")
        # The spec names the local model and its key variable, as a spec that also runs locally
        # would: `submit --private` serves that model with that key, and uploads neither.
        spec = (ROOT / "examples" / "arith" / "spec.yaml").read_text()
        spec = spec.replace("http://127.0.0.1:8000/v1", local_url).replace("concurrency: 32", "concurrency: 4")
        spec = spec.replace("model: fake}", "model: fake, api_key_env: LOCAL_KEY}")
        (spec_dir / "spec.yaml").write_text(spec)
        server, url = start_server(data, server_log)
        try:
            env = {**os.environ, "PROCTOR_TOKEN": token, "LOCAL_KEY": KEY}
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "proctor",
                    "submit",
                    str(spec_dir / "spec.yaml"),
                    "--server",
                    url,
                    "--private",
                    "--out",
                    str(out),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=180,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            stop_process(server)
        assert done.returncode == 0, done.stdout + done.stderr
        # Every sample was answered by the local model, through the tunnel, once.
        assert sum(llm.successes.values()) == N, llm.stats()
    stats = json.loads(next(out.rglob("eval_stats.json")).read_text())
    assert "accuracy" in json.dumps(stats)
    assert "tunnel" in done.stderr and "connected" in done.stderr
    host_port = local_url.removeprefix("http://").removesuffix("/v1").encode()
    for needle in (KEY.encode(), host_port):
        leaks = [str(p) for p in data.rglob("*") if p.is_file() and needle in p.read_bytes()]
        assert leaks == [], (needle, leaks)
        assert needle not in server_log.read_bytes()
    assert KEY not in done.stdout + done.stderr
