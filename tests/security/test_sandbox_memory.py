"""Attack 5: a job that eats memory. Before: a 632-byte YAML alias bomb under
``generate.extra_body`` grew the job to 3 GB and more, with no ceiling.

The defence proven here is the job's memory ceiling (RLIMIT_AS in its sandbox), with code that
allocates several GB inside the job; the alias bomb itself is also submitted, and the only
promise about it is that the server and other jobs are unharmed and it does not succeed (a
bounded YAML loader refusing it at submission is another change's work).
"""

from __future__ import annotations

from sandbox_kit import probe_job, spec_job, spec_text, wait_for

from proctor.testing import FakeLLMConfig, FakeLLMThread

BOMB = """generate:
  extra_body:
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_job_allocating_gigabytes_is_stopped_by_its_ceiling(secure_server) -> None:
    srv = secure_server(sandbox={"memory_mb": 1024})
    bob, mallory = srv.client("bob"), srv.client("mallory")
    hog = mallory.post("/v1/jobs", json=probe_job("alloc", "6144")).json()["job"]["id"]
    other = bob.post("/v1/jobs", json=probe_job("sleep", "1")).json()["job"]["id"]
    job = wait_for(mallory, hog, {"succeeded", "failed"})
    assert job["state"] == "failed", srv.log(hog)[-2000:]
    assert "ALLOCATED ALL" not in srv.log(hog) and "MemoryError" in srv.log(hog)
    assert "allocated 6144 MB" not in srv.log(hog)
    assert wait_for(bob, other, {"succeeded", "failed"})["state"] == "succeeded"
    assert bob.get("/health").status_code == 200


def test_a_job_may_lower_its_ceiling(secure_server) -> None:
    srv = secure_server()
    mallory = srv.client("mallory")
    hog = mallory.post("/v1/jobs", json=probe_job("alloc", "1024", limits={"memory_mb": 512})).json()["job"]["id"]
    assert wait_for(mallory, hog, {"succeeded", "failed"})["state"] == "failed"
    assert "MemoryError" in srv.log(hog)


def test_a_yaml_alias_bomb_harms_no_one_and_does_not_succeed(secure_server) -> None:
    srv = secure_server(sandbox={"memory_mb": 1024})
    bob, mallory = srv.client("bob"), srv.client("mallory")
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        other = bob.post("/v1/jobs", json=spec_job(spec_text(llm.base_url))).json()["job"]["id"]
        r = mallory.post("/v1/jobs", json=spec_job(spec_text(llm.base_url, extra=BOMB)))
        if r.status_code == 201:
            job = wait_for(mallory, r.json()["job"]["id"], {"succeeded", "failed"}, seconds=180)
            assert job["state"] == "failed", (job, srv.log(job["id"])[-3000:])
        else:
            assert r.status_code == 400, r.text
        assert wait_for(bob, other, {"succeeded", "failed"})["state"] == "succeeded"
    assert bob.get("/health").status_code == 200
