"""End to end: ``proctor run examples/orchestra/spec.yaml`` as a process, then ``proctor rescore --judge``.

The example's stand-ins (fake LLM servers, retrieval service) run in this test's event loop on
free ports; the spec is copied with those URLs, everything else as shipped.
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
from helpers import load_orchestra_fakes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "orchestra"


async def _proctor(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "TAVILY_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proctor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.slow
def test_orchestra_example_runs_and_rescores(tmp_path: Path) -> None:
    fakes = load_orchestra_fakes()
    out_dir = tmp_path / "run"

    async def go() -> tuple[tuple[int, str], tuple[int, str]]:
        async with AsyncExitStack() as stack:
            urls = await fakes.start(stack, fixed_ports=False)
            spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
            spec["dataset"]["path"] = str(EXAMPLE / "data.jsonl")
            for role, cfg in spec["models"].items():
                cfg["base_url"] = urls["orchestrator" if role == "subject" else role]
            for tool in spec["solver"]["tools"]:
                if "retrieve" in tool:  # the stand-in instead of the launched real service
                    tool["retrieve"].pop("launch", None)
                    tool["retrieve"]["url"] = urls["retrieval"]
            spec_path = tmp_path / "spec.yaml"
            spec_path.write_text(yaml.safe_dump(spec))
            run = await _proctor("run", str(spec_path), "--out", str(out_dir), "--progress", "none")
            judge = urls["judge-lenient"] + "@judge-lenient"
            rescore = await _proctor("rescore", str(out_dir), "--judge", judge)
            return run, rescore

    (run_rc, run_out), (re_rc, re_out) = asyncio.run(go())
    assert run_rc == 0, run_out
    assert re_rc == 0, re_out
    samples = {s["id"]: s for s in map(json.loads, (out_dir / "samples.jsonl").read_text().splitlines())}
    assert len(samples) == 9
    assert samples["hle-img-001"]["error"]["class"] == "skipped"  # counted apart, never scored
    # after rescoring with the lenient judge the two inexact answers count as correct
    assert samples["frames-007"]["output"] == "One" and samples["frames-007"]["score"] == 1.0
    assert samples["frames-001"]["output"] == "1889" and samples["frames-001"]["score"] == 1.0
    stats = json.loads((out_dir / "eval_stats.json").read_text())
    assert stats["counts"]["skipped"] == 1 and stats["accuracy"]["denominator"] == 8
    events = [json.loads(line) for line in (out_dir / "events.jsonl").read_text().splitlines()]
    tool_events = [e for e in events if e.get("kind") == "tool"]
    assert {e["tool"] for e in tool_events} == {"search", "enhance_reasoning", "answer"}
    assert len(tool_events) == 8 * 3 and all(e["status"] == "ok" for e in tool_events)
    assert {e["expert_role"] for e in tool_events} == {"searcher", "coder", "answerer"}
    assert "Unclosed client session" not in run_out
