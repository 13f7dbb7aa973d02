"""A job's private ``/tmp`` (also its ``HOME``) and a python-tool call's ``/tmp`` are bounded.

Both are tmpfs mounts: memory that no rlimit counts (RLIMIT_AS sees a process's own mappings,
not a filesystem's pages). Before: a job wrote 96 MiB to ``/tmp`` under a server whose every
other ceiling was small, and a tool call did the same, with no error at all; a job could fill
the host's memory that way. Now a write past ``sandbox.tmp_mb`` (a job) or the tool's
``file_size_mb`` (a tool call) fails with ENOSPC, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from sandbox_kit import PROBE, probe_job, wait_for

from proctor import sandbox
from proctor.evals.agent.tools.python import PythonOptions, run_python

PROBE_TEMPLATE = {
    "probe": {
        "argv": [sys.executable, PROBE, "{mode}", "{a}", "{b}"],
        "params": {"mode": {"pattern": "^(filltmp|limits)$"}, "a": {"default": "0"}, "b": {"default": "0"}},
    }
}


def _fill(srv: Any, client: Any, megabytes: int, **extra: Any) -> dict[str, Any]:
    job_id = client.post("/v1/jobs", json=probe_job("filltmp", str(megabytes), **extra)).json()["job"]["id"]
    job = wait_for(client, job_id, {"succeeded", "failed"})
    lines = [ln for ln in srv.log(job_id).splitlines() if ln.startswith("FILLTMP ")]
    assert job["state"] == "succeeded" and lines, srv.log(job_id)[-2000:]
    found: dict[str, Any] = json.loads(lines[-1][len("FILLTMP ") :])
    return found


def test_a_job_filling_tmp_gets_enospc_and_the_server_survives(secure_server: Any) -> None:
    srv = secure_server(templates=PROBE_TEMPLATE, sandbox={"tmp_mb": 32})
    mallory, bob = srv.client("mallory"), srv.client("bob")
    found = _fill(srv, mallory, 96)
    assert found["home"] == "/tmp"
    assert found["error"] == "ENOSPC" and found["written_mb"] <= 32 and found["tmp_mb"] == 32
    # A submission may lower the bound for its own job...
    lowered = _fill(srv, bob, 96, limits={"tmp_mb": 8})
    assert lowered["error"] == "ENOSPC" and lowered["written_mb"] <= 8 and lowered["tmp_mb"] == 8
    # ...never raise it (a 400 naming the key), and the server still answers and runs jobs.
    refused = bob.post("/v1/jobs", json=probe_job("filltmp", "1", limits={"tmp_mb": 64}))
    assert refused.status_code == 400 and "limits.tmp_mb" in refused.json()["error"]
    assert bob.get("/health").status_code == 200
    small = _fill(srv, bob, 4)
    assert small["error"] is None and small["written_mb"] == 4


FILL_TOOL_TMP = """
import errno, json, os
written, error = 0, None
try:
    for i in range(96):
        with open(f"/tmp/fill-{i}", "wb") as fh:
            fh.write(b"\\0" * (1024 * 1024))
        written += 1
except OSError as exc:
    error = errno.errorcode.get(exc.errno, str(exc))
print("FILLTMP " + json.dumps({"written_mb": written, "error": error}))
"""


@pytest.mark.skipif(sandbox.probe(mount_proc=False) is not None, reason="bubblewrap cannot run here")
def test_a_python_tool_call_filling_its_tmp_gets_enospc() -> None:
    opts = PythonOptions(file_size_mb=16, timeout=60)
    result = asyncio.run(run_python(FILL_TOOL_TMP, opts))
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("FILLTMP "))
    found = json.loads(line[len("FILLTMP ") :])
    assert found["error"] == "ENOSPC" and found["written_mb"] <= 16, result
