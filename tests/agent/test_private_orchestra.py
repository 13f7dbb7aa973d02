"""The orchestra example through the server in private mode.

The orchestrator (the subject) and the coding expert live on "the submitter's machine", as two
different local models: the job reaches them only through the tunnel that `proctor submit
--private` opens, each role's calls going to its own model. The other experts, the judge and the
retrieval service are ordinary endpoints the server's job calls directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import yaml
from helpers import create_token, load_orchestra_fakes, start_server, stop_process

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "orchestra"


@pytest.mark.slow
def test_orchestra_runs_through_the_server_in_private_mode(tmp_path: Path) -> None:
    fakes = load_orchestra_fakes()
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    token = create_token(data, "alice")
    server, server_url = start_server(data, tmp_path / "server.log")

    async def go() -> tuple[int, str, str]:
        async with AsyncExitStack() as stack:
            urls = await fakes.start(stack, fixed_ports=False)
            spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
            spec["dataset"]["path"] = "data.jsonl"
            for role, cfg in spec["models"].items():
                cfg["base_url"] = urls["orchestrator" if role == "subject" else role]
            for tool in spec["solver"]["tools"]:
                if "retrieve" in tool:  # the stand-in instead of the launched real service
                    tool["retrieve"].pop("launch", None)
                    tool["retrieve"]["url"] = urls["retrieval"]
            (tmp_path / "data.jsonl").write_text((EXAMPLE / "data.jsonl").read_text())
            (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
            env = {k: v for k, v in os.environ.items() if k != "TAVILY_API_KEY"}
            env["PROCTOR_TOKEN"] = token
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proctor",
                "submit",
                str(tmp_path / "spec.yaml"),
                "--server",
                server_url,
                # No --base-url: each private role's local URL comes from the spec, and stays here.
                "--private",
                "--private-role",
                "subject",
                "--private-role",
                "coder",
                "--out",
                str(out),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), 240)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
            return proc.returncode or 0, stdout.decode(errors="replace"), [urls["orchestrator"], urls["coder"]]

    try:
        code, output, private_urls = asyncio.run(go())
    finally:
        stop_process(server)
    assert code == 0, output
    samples = {s["id"]: s for s in map(json.loads, next(out.rglob("samples.jsonl")).read_text().splitlines())}
    assert len(samples) == 9
    assert samples["hle-img-001"]["error"]["class"] == "skipped"
    assert all(s["state"] == "scored" for k, s in samples.items() if k != "hle-img-001")
    events = [json.loads(line) for line in next(out.rglob("events.jsonl")).read_text().splitlines()]
    tools = {e["tool"] for e in events if e.get("kind") == "tool"}
    assert {"search", "enhance_reasoning", "answer"} <= tools
    for role in ("subject", "coder"):
        endpoints = {e["endpoint"] for e in events if e.get("kind") == "model" and e.get("role") == role}
        assert endpoints and all("/internal/jobs/" in e for e in endpoints), role  # only via the tunnel
    for url in private_urls:
        host_port = url.removeprefix("http://").removesuffix("/v1").encode()
        leaks = [str(p) for p in data.rglob("*") if p.is_file() and host_port in p.read_bytes()]
        assert leaks == [], url
