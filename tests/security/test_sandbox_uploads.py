"""Attack 1: uploaded files that shadow proctor (or yaml), and specs that name plugin code.

Before: ``python -m proctor run`` ran with the job directory as ``sys.path[0]``, so an uploaded
``proctor/__main__.py`` or ``yaml.py`` ran as the server's user, and a custom tool path, a dotted
solver/scorer type or ``solver.base_dir: /`` loaded any ``.py`` the job named.
"""

from __future__ import annotations

import pytest
from sandbox_kit import spec_job, spec_text, wait_for

from proctor.testing import FakeLLMConfig, FakeLLMThread

EVIL = "import os, pathlib\npathlib.Path('out/pwned').write_text('owned')\nprint('PWNED', flush=True)\n"


def test_uploaded_proctor_and_yaml_are_never_imported(secure_server) -> None:
    srv = secure_server()
    mallory = srv.client("mallory")
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        files = {"proctor/__init__.py": EVIL, "proctor/__main__.py": EVIL, "yaml.py": EVIL + "safe_load = None\n"}
        r = mallory.post("/v1/jobs", json=spec_job(spec_text(llm.base_url), files))
        assert r.status_code == 201, r.text
        job = wait_for(mallory, r.json()["job"]["id"], {"succeeded", "failed"})
    job_dir = srv.job_dir(job["id"])
    assert job["state"] == "succeeded", srv.log(job["id"])[-2000:]
    assert "PWNED" not in srv.log(job["id"]) and not (job_dir / "out" / "pwned").exists()
    assert (job_dir / "out" / "eval_stats.json").exists()  # the real engine ran


@pytest.mark.parametrize(
    ("solver", "scorer", "files", "key"),
    [
        (
            {"type": "agent", "tools": [{"type": "custom", "path": "evil.py:make"}, "answer"]},
            "numeric",
            {"evil.py": EVIL},
            "solver.tools[0].path",
        ),
        ("generate", {"type": "evilscore.factory"}, {"evilscore.py": EVIL}, "scorer.type"),
        ({"type": "evilsolver:make"}, "numeric", {"evilsolver.py": EVIL}, "solver.type"),
        ({"type": "agent", "base_dir": "/", "tools": ["answer"]}, "numeric", {}, "solver.base_dir"),
        (
            {"type": "agent", "tools": [{"type": "python", "interpreter": "/bin/sh"}, "answer"]},
            "numeric",
            {},
            "solver.tools[0].interpreter",
        ),
        (
            {"type": "agent", "tools": [{"type": "python", "network": True}, "answer"]},
            "numeric",
            {},
            "solver.tools[0].network",
        ),
        (
            {"type": "agent", "tools": [{"type": "python", "memory_mb": None}, "answer"]},
            "numeric",
            {},
            "solver.tools[0].memory_mb",
        ),
        (
            {"type": "agent", "tools": [{"type": "python", "timeout": 1e6}, "answer"]},
            "numeric",
            {},
            "solver.tools[0].timeout",
        ),
        (
            {
                "type": "agent",
                "tools": [
                    {"type": "ask_expert", "role": "subject", "mode": "python", "python": {"network": True}},
                    "answer",
                ],
            },
            "numeric",
            {},
            "solver.tools[0].python.network",
        ),
    ],
)
def test_plugin_code_and_raised_ceilings_are_refused_naming_the_key(
    shared_secure_server, solver, scorer, files, key
) -> None:
    srv = shared_secure_server
    mallory = srv.client("mallory")
    r = mallory.post("/v1/jobs", json=spec_job(spec_text("http://127.0.0.1:9/v1", solver=solver, scorer=scorer), files))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["ok"] is False and body["status"] == 400 and key in body["error"]
    assert not list(srv.data.joinpath("jobs").iterdir())  # nothing was queued or written


def test_job_limits_above_the_servers_ceilings_are_refused(secure_server) -> None:
    srv = secure_server(sandbox={"memory_mb": 2048})
    mallory = srv.client("mallory")
    r = mallory.post("/v1/jobs", json=spec_job(spec_text("http://127.0.0.1:9/v1"), limits={"memory_mb": 4096}))
    assert r.status_code == 400 and "limits.memory_mb" in r.json()["error"]


def test_the_admin_may_allow_a_plugin_and_tool_network(secure_server) -> None:
    srv = secure_server(sandbox={"plugins": ["proctor.evals.scorers:numeric"], "tool_network": True})
    mallory = srv.client("mallory")
    r = mallory.post(
        "/v1/jobs", json=spec_job(spec_text("http://127.0.0.1:9/v1", scorer={"type": "proctor.evals.scorers:numeric"}))
    )
    assert r.status_code == 201, r.text
    solver = {"type": "agent", "tools": [{"type": "python", "network": True}, "answer"]}
    r = mallory.post("/v1/jobs", json=spec_job(spec_text("http://127.0.0.1:9/v1", solver=solver)))
    assert r.status_code == 201, r.text
