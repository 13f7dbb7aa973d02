"""examples/orchestra as shipped uses the real retrieval service, which `proctor run` launches."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import yaml
from helpers import load_orchestra_fakes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orchestra"


def test_orchestra_runs_against_the_launched_real_service(tmp_path: Path) -> None:
    fakes = load_orchestra_fakes()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> tuple[int, str]:
        async with AsyncExitStack() as stack:
            urls = await fakes.start(stack, fixed_ports=False, retrieval=False)
            spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
            spec["dataset"]["path"] = str(EXAMPLE / "data.jsonl")
            for role, cfg in spec["models"].items():
                cfg["base_url"] = urls["orchestrator" if role == "subject" else role]
            (search,) = [t for t in spec["solver"]["tools"] if "retrieve" in t]
            launch = search["retrieve"]["launch"]
            assert launch["kind"] == "retrieval" and "url" not in search["retrieve"]  # as shipped
            launch.update(port=port, index=str(tmp_path / "index"), corpus=str(EXAMPLE / "corpus.jsonl"))
            (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
            env = {k: v for k, v in os.environ.items() if k != "TAVILY_API_KEY"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proctor",
                "run",
                str(tmp_path / "spec.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--progress",
                "none",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 300)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
            return proc.returncode or 0, out.decode(errors="replace")

    code, output = asyncio.run(go())
    assert code == 0, output
    samples = {s["id"]: s for s in map(json.loads, (tmp_path / "run" / "samples.jsonl").read_text().splitlines())}
    assert samples["frames-001"]["output"] == "1889"
    trajectories = [json.loads(line) for line in (tmp_path / "run" / "traj_log_all.jsonl").read_text().splitlines()]
    eiffel = next(t for t in trajectories if t["id"] == "frames-001")
    assert "(id=eiffel)" in json.dumps(eiffel["messages"])  # the search expert's hits came from the real index
    run_log = (tmp_path / "run" / "run.log").read_text()
    assert "starting the retrieval service" in run_log and "stopped the server of role 'retrieval-" in run_log
