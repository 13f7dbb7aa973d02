"""What the admin's ``lm_eval:`` server settings open up, and only that: a registered task directory
(its ``!function`` code runs, read-only in the job's sandbox), named built-in tasks, allowed
``env_vars``; and plain uploaded task YAML always."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sandbox_kit import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
from lmeval_kit import PLAIN_TASK, plain_data  # noqa: E402

from proctor.testing import FakeLLMConfig, FakeLLMThread

pytest.importorskip("lm_eval")

EXAMPLE_TASKS = Path(__file__).resolve().parents[2] / "examples" / "lm-eval" / "tasks"


def lm_body(base_url: str, tasks: list[str], include_path: str | None, files: dict[str, str]) -> dict[str, Any]:
    section: dict[str, Any] = {"tasks": tasks, "limit": 5}
    if include_path is not None:
        section["include_path"] = include_path
    spec = {"name": "admin", "lm_eval": section, "models": {"subject": {"base_url": base_url, "model": "fake"}}}
    return {"spec": yaml.safe_dump(spec), "files": {k: {"content": v} for k, v in files.items()}}


def test_the_admins_settings_allow_registered_code_named_zoo_tasks_and_env_vars(secure_server: Any) -> None:
    srv = secure_server(
        lm_eval={
            "task_dirs": {"arith": str(EXAMPLE_TASKS)},
            "builtin_tasks": ["gsm8k"],
            "env_vars": ["FOO"],
        }
    )
    mallory = srv.client("mallory")
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        # A registered directory's !function (utils.load_docs) runs: the admin vouched for it.
        r = mallory.post("/v1/jobs", json=lm_body(llm.base_url, ["proctor_arith"], "arith", {}))
        assert r.status_code == 201, r.text
        job = r.json()["job"]
        assert job["kind"] == "lm_eval"
        done = wait_for(mallory, job["id"], {"succeeded", "failed"}, seconds=240)
        assert done["state"] == "succeeded", srv.log(job["id"])[-3000:]
        stats = json.loads((srv.job_dir(job["id"]) / "out" / "eval_stats.json").read_text())
        assert stats["status"] == "complete" and stats["requests"]["answered"] == 5
        assert done["progress"] is not None and done["progress"]["done"] == done["progress"]["total"] == 5
        stored = yaml.safe_load((srv.job_dir(job["id"]) / "spec.yaml").read_text())
        assert stored["lm_eval"]["include_path"] == str(EXAMPLE_TASKS.resolve())
        # Plain uploaded task YAML (data loaded by `datasets`, offline) runs, with an allowed env var;
        # Hugging Face's cache is the job's own, inside its out/ directory.
        files = {"tasks/plain.yaml": PLAIN_TASK, "tasks/plain.jsonl": plain_data(4)}
        body = lm_body(llm.base_url, ["plain_arith"], "tasks", files)
        r = mallory.post("/v1/jobs", json={**body, "env_vars": {"FOO": "bar"}})
        assert r.status_code == 201, r.text
        plain = wait_for(mallory, r.json()["job"]["id"], {"succeeded", "failed"}, seconds=240)
        assert plain["state"] == "succeeded", srv.log(plain["id"])[-3000:]
        out = srv.job_dir(plain["id"]) / "out"
        assert json.loads((out / "eval_stats.json").read_text())["metrics"][0]["value"] == 1.0
        assert list((out / "hf" / "datasets").iterdir())
        assert len(llm.counts) == 5 + 4
    r = mallory.post("/v1/jobs", json={**body, "env_vars": {"FOO": "bar", "BAR": "x"}})
    assert r.status_code == 400 and "BAR" in r.json()["error"] and "FOO" not in r.json()["error"].split("(")[0]
    # A built-in task the admin named is accepted; another is not.
    r = mallory.post("/v1/jobs", json=lm_body("http://127.0.0.1:9/v1", ["gsm8k"], None, {}))
    assert r.status_code == 201, r.text
    r = mallory.post("/v1/jobs", json=lm_body("http://127.0.0.1:9/v1", ["mmlu"], None, {}))
    assert r.status_code == 400 and "mmlu" in r.json()["error"] and "gsm8k" in r.json()["error"]
    for job in mallory.get("/v1/jobs").json()["jobs"]:
        if job["state"] in ("queued", "running"):
            mallory.post(f"/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "PROCTOR_OUT_DIR", "HF_HUB_OFFLINE", "PATH"])
def test_the_admin_cannot_allow_variables_that_change_what_a_job_runs(name: str) -> None:
    from proctor.errors import InputError
    from proctor.server.settings import load_settings

    with pytest.raises(InputError, match=name):
        load_settings(None, lm_eval={"env_vars": [name]})
