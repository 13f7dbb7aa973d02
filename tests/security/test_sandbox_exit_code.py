"""Attack 6: a crash looked like success. An uncaught exception in the engine exited 1, the code
for "finished, some samples errored", so the server reported ``succeeded``. Now a crash exits 3 and
the server marks the job ``failed`` with the error's last line in its note."""

from __future__ import annotations

from pathlib import Path

from helpers import run_proctor, write_spec
from sandbox_kit import spec_job, spec_text, wait_for

from proctor.errors import CRASH_EXIT_CODE
from proctor.testing import FakeLLMConfig, FakeLLMThread

CRASHTOOL = str(Path(__file__).with_name("crashtool.py"))
PLUGIN = f"{CRASHTOOL}:make"


def test_a_crashed_engine_fails_the_job_with_the_error_in_its_note(secure_server) -> None:
    srv = secure_server(sandbox={"plugins": [PLUGIN], "readable": [CRASHTOOL]})
    mallory = srv.client("mallory")
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        solver = {"type": "agent", "tools": [{"type": "custom", "path": PLUGIN}, "answer"]}
        r = mallory.post("/v1/jobs", json=spec_job(spec_text(llm.base_url, solver=solver)))
        assert r.status_code == 201, r.text
        job = wait_for(mallory, r.json()["job"]["id"], {"succeeded", "failed"})
    assert job["state"] == "failed" and job["exit_code"] == CRASH_EXIT_CODE, job
    assert job["note"].startswith("the engine crashed: ") and "the engine fell over on purpose" in job["note"]


def test_proctor_run_exits_with_the_crash_code(tmp_path: Path) -> None:
    (tmp_path / "crashscore.py").write_text(
        "def factory(options):\n    raise RuntimeError('scorer exploded')\n", encoding="utf-8"
    )
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", n=3, scorer="crashscore.factory")
    out = run_proctor("run", spec, "--out", tmp_path / "out", cwd=tmp_path)
    assert out.returncode == CRASH_EXIT_CODE, (out.returncode, out.stderr[-2000:])
    assert out.stderr.strip().splitlines()[-1] == "RuntimeError: scorer exploded"
