"""Attack 3 (and 4 for tool calls): the *model* is the attacker. A hostile fake model asks the
python tool to list every job, read other jobs' files and the job store, read the engine's and
the server's environment, reach the API on loopback, and leave setsid'd descendants running.

Before: with default settings the code listed every job directory, printed other users' files and
read ``proctor.sqlite``; its descendants outlived the call.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import psutil
from sandbox_kit import SERVER_SECRET, probe_job, spec_job, spec_text, wait_for

from proctor.testing import FakeLLMConfig, FakeLLMThread

ENGINE_KEY = "sk-mallory-" + "m4ll0ry" * 4

HOSTILE = """
import json, os, socket, pathlib
def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
def environs():
    found = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            found[e] = pathlib.Path(f"/proc/{e}/environ").read_bytes().decode(errors="replace")
    return found
def connect():
    s = socket.socket(); s.settimeout(3)
    return s.connect_ex(("127.0.0.1", PORT))
for i in range(4):
    if os.fork() == 0:
        os.setsid() if i % 2 else os.setpgid(0, 0)
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "MARKER"])
        os._exit(0)
print("TOOLPROBE " + json.dumps({
    "jobs": attempt(lambda: os.listdir("DATA/jobs")),
    "victim_log": attempt(lambda: pathlib.Path("DATA/jobs/VICTIM/job.log").read_text()),
    "store": attempt(lambda: len(pathlib.Path("DATA/proctor.sqlite").read_bytes())),
    "environs": attempt(environs),
    "env": dict(os.environ),
    "api": attempt(connect),
    "uid": os.getuid(),
}))
"""


def _tool_outputs(traj: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and "TOOLPROBE {" in node:  # the output, not the code that prints it
            found.append(json.loads(node.split("TOOLPROBE ", 1)[1].splitlines()[0]))

    for line in traj.splitlines():
        if line.strip():
            walk(json.loads(line))
    return found


def test_model_written_code_sees_nothing_of_the_server_or_other_jobs(secure_server) -> None:
    srv = secure_server()
    bob, mallory = srv.client("bob"), srv.client("mallory")
    victim = bob.post("/v1/jobs", json=probe_job("sleep", "120")).json()["job"]["id"]
    wait_for(bob, victim, {"running"})
    marker = f"{400 + random.random():.9f}"
    data = str(srv.data.resolve())
    port = int(srv.url.rsplit(":", 1)[1])
    code = HOSTILE.replace("DATA", data).replace("VICTIM", victim).replace("PORT", str(port)).replace("MARKER", marker)
    script = [{"tool_calls": [{"name": "python", "arguments": {"code": code}}]}, {"content": "2"}]
    with FakeLLMThread(FakeLLMConfig(script=script)) as llm:
        spec = spec_text(llm.base_url, solver={"type": "agent", "tools": ["python", "answer"]})
        r = mallory.post("/v1/jobs", json=spec_job(spec, models={"subject": {"api_key": ENGINE_KEY}}, limit=1))
        assert r.status_code == 201, r.text
        job_id = r.json()["job"]["id"]
        job = wait_for(mallory, job_id, {"succeeded", "failed"})
    traj = (srv.job_dir(job_id) / "out" / "traj_log_all.jsonl").read_text()
    outputs = _tool_outputs(traj)
    assert outputs, (job, srv.log(job_id)[-2000:], traj[-2000:])
    found = outputs[0]
    everything = json.dumps(found)
    assert not found["jobs"]["ok"] and not found["victim_log"]["ok"] and not found["store"]["ok"]
    assert ENGINE_KEY not in everything and SERVER_SECRET not in everything  # not the engine's, not the server's
    assert not found["environs"]["ok"] or all(SERVER_SECRET not in v for v in found["environs"]["value"].values())
    assert found["api"]["ok"] and found["api"]["value"] != 0  # no network: the API on loopback is unreachable
    assert set(found["env"]) <= {
        "PATH",
        "PWD",
        "LANG",
        "LC_ALL",
        "TZ",
        "HOME",
        "TMPDIR",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
    assert found["uid"] != 0
    # Attack 4 in a tool call: fork→setsid→fork and fork→setpgid→fork descendants are gone.
    assert [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])] == []
    assert Path(srv.job_dir(victim)).exists() and bob.get(f"/v1/jobs/{victim}").json()["state"] == "running"
    bob.post(f"/v1/jobs/{victim}/cancel")
