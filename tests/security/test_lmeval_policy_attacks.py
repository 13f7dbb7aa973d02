"""Attacks through an ``lm_eval:`` spec on a sandboxed server: each is refused at submission with
a 400 naming the key, and nothing is queued or written.

lm-eval task YAML can make lm-eval import Python (``!function utils.pwn`` imports ``utils.py``
from the YAML's directory); a dataset's loading script runs with ``trust_remote_code``; a task
name or ``include_path`` can point at files outside the job. The policy (server/lmeval_policy.py)
refuses every one of these for a submission; the admin's registered task directories are the only
place task code comes from (test_lmeval_policy_admin.py).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from sandbox_kit import spec_job

pytest.importorskip("lm_eval")

PWN = "import os\ndef pwn(docs):\n    os.system('touch /tmp/pwned')\n    return docs\n"


def lm_spec(**lm_eval: Any) -> str:
    section = {"tasks": ["pwn"], "include_path": "tasks", **lm_eval}
    return yaml.safe_dump(
        {
            "name": "attack",
            "lm_eval": section,
            "models": {"subject": {"base_url": "http://127.0.0.1:9/v1", "model": "fake"}},
        }
    )


def lm_job(spec: str, files: dict[str, str]) -> dict[str, Any]:
    body = spec_job(spec, files)
    body["files"].pop("data.jsonl")  # the arithmetic dataset of the proctor-spec attacks
    return body


TASK = "task: pwn\ndataset_path: json\noutput_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\n"

ATTACKS = {
    # the uploaded-task-code attack of the first lm-eval policy, kept refused
    "function-tag": ({"tasks/pwn.yaml": TASK + "process_docs: !function utils.pwn\n"}, "!function"),
    "verbatim-tag": ({"tasks/pwn.yaml": TASK + "process_docs: !<!function> utils.pwn\n"}, "!function"),
    "tag-directive": (
        {"tasks/pwn.yaml": "%TAG !f! !func\n---\n" + TASK + "process_docs: !f!tion utils.pwn\n"},
        "!function",
    ),
    "function-in-an-included-file": (
        {"tasks/pwn.yaml": TASK + "include: _template\n", "tasks/_template": "process_docs: !function utils.pwn\n"},
        "tasks/_template",
    ),
    "function-outside-include-path": (
        {"tasks/pwn.yaml": TASK, "other/evil.yaml": "x: !function utils.pwn\n"},
        "other/evil.yaml",
    ),
    "include-absolute": ({"tasks/pwn.yaml": TASK + "include: /etc/passwd\n"}, "include"),
    "include-parent": ({"tasks/pwn.yaml": TASK + "include: ../../out/x.yaml\n"}, "include"),
    "python-upload": ({"tasks/pwn.yaml": TASK, "tasks/utils.py": PWN}, "tasks/utils.py"),
    "dataset-loading-script": (
        {"tasks/pwn.yaml": TASK + "dataset_kwargs:\n  trust_remote_code: true\n"},
        "trust_remote_code",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_task_code_in_an_upload_is_refused(shared_secure_server: Any, attack: str) -> None:
    srv = shared_secure_server
    files, named = ATTACKS[attack]
    r = srv.client("mallory").post("/v1/jobs", json=lm_job(lm_spec(), files))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["ok"] is False and body["status"] == 400 and named in body["error"], body
    assert not list(srv.data.joinpath("jobs").iterdir())  # nothing was queued or written


def test_task_code_uploaded_base64_is_refused_too(shared_secure_server: Any) -> None:
    srv = shared_secure_server
    body = lm_job(lm_spec(), {})
    raw = (TASK + "process_docs: !function utils.pwn\n").encode()
    body["files"]["tasks/pwn.yaml"] = {"content": base64.b64encode(raw).decode(), "encoding": "base64"}
    r = srv.client("mallory").post("/v1/jobs", json=body)
    assert r.status_code == 400 and "!function" in r.json()["error"], r.text


@pytest.mark.parametrize(
    ("lm_eval", "named"),
    [
        ({"trust_remote_code": True}, "lm_eval.trust_remote_code"),
        ({"lm_eval_path": "/bin/sh"}, "lm_eval.lm_eval_path"),
        ({"output_path": "/tmp/steal"}, "lm_eval.output_path"),
        ({"include_path": "/usr"}, "lm_eval.include_path"),
        ({"include_path": "../../jobs"}, "lm_eval.include_path"),
        ({"include_path": "not-uploaded"}, "lm_eval.include_path"),
        ({"tasks": ["/tmp/pwn.yaml"]}, "is not a task name"),
        ({"tasks": ["../tasks/pwn"]}, "is not a task name"),
        ({"tasks": ["pwn", "gsm8k"]}, "gsm8k"),  # lm-eval's own zoo: not allowed by default
    ],
)
def test_unsafe_lm_eval_settings_are_refused_naming_the_key(
    shared_secure_server: Any, lm_eval: dict[str, Any], named: str
) -> None:
    srv = shared_secure_server
    r = srv.client("mallory").post("/v1/jobs", json=lm_job(lm_spec(**lm_eval), {"tasks/pwn.yaml": TASK}))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["ok"] is False and named in body["error"], body
    assert "hint" in body or "error" in body
    assert not list(srv.data.joinpath("jobs").iterdir())


def test_env_vars_outside_the_allow_list_are_refused(shared_secure_server: Any) -> None:
    srv = shared_secure_server
    body = lm_job(lm_spec(), {"tasks/pwn.yaml": TASK})
    body["env_vars"] = {"LD_PRELOAD": "/tmp/x.so", "PYTHONPATH": "/tmp"}
    r = srv.client("mallory").post("/v1/jobs", json=body)
    assert r.status_code == 400 and "LD_PRELOAD" in r.json()["error"] and "PYTHONPATH" in r.json()["error"]
    assert not list(srv.data.joinpath("jobs").iterdir())
