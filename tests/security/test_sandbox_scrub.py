"""Attack 7: the key scrub corrupted the ledger. When a job's SQLite WAL still existed at scrub
time, overwriting the key's bytes in its frames broke their checksums, and SQLite dropped every
later frame: scored samples vanished and a resubmission asked the model for them again.

Here the model echoes the submitter's key in every answer, the job is stalled once some samples
are scored (all of them committed), and cancelled with no grace, so its WAL is still there when
the server scrubs the key.
"""

from __future__ import annotations

import json
import sqlite3
import time

from sandbox_kit import spec_job, spec_text, wait_for

from proctor.testing import FakeLLMConfig, FakeLLMThread

KEY = "sk-scrub-" + "5crub" * 6


def test_scrubbing_the_key_keeps_every_scored_sample(secure_server) -> None:
    srv = secure_server(kill_grace=0)
    mallory = srv.client("mallory")
    rows = "".join(
        json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(200)
    )
    with FakeLLMThread(FakeLLMConfig(reply=f"the answer is {KEY}", latency=0.01)) as llm:
        body = spec_job(spec_text(llm.base_url, scorer="includes"), models={"subject": {"api_key": KEY}})
        body["files"]["data.jsonl"] = {"content": rows}
        job_id = mallory.post("/v1/jobs", json=body).json()["job"]["id"]
        deadline = time.monotonic() + 60
        while sum(llm.successes.values()) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        llm.reconfigure(hang_rate=1.0, hang_seconds=60.0)  # nothing more finishes
        time.sleep(1.5)  # every finished sample is committed within a second
        answered = sum(llm.successes.values())
        ledger = srv.job_dir(job_id) / "out" / "ledger.sqlite"
        assert ledger.with_name("ledger.sqlite-wal").stat().st_size > 0  # the attack's precondition
        assert mallory.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    with sqlite3.connect(ledger) as conn:
        scored = conn.execute("SELECT count(*) FROM samples WHERE state = 'scored'").fetchone()[0]
        outputs = [r[0] for r in conn.execute("SELECT output FROM generations")]
    assert 60 <= answered <= 200
    assert scored == answered  # every scored sample survived the scrub
    assert all(KEY not in (o or "") for o in outputs) and any("*" * len(KEY) in (o or "") for o in outputs)
    leaks = [str(p) for p in srv.job_dir(job_id).rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == []
    wait_for(mallory, job_id, {"cancelled"})


def test_large_files_are_scrubbed_in_place_a_chunk_at_a_time(tmp_path, monkeypatch) -> None:
    """A job may leave files of many GB: they are scrubbed in chunks (never read whole), and a key
    across a chunk boundary is still found."""
    from proctor.server import scrub as jobs  # the scrub moved from jobs.py to scrub.py

    monkeypatch.setattr(jobs, "_CHUNK", 16)
    data = ("x" * 13 + KEY + "y" * 5 + KEY + "z" * 40 + KEY) * 3
    (tmp_path / "big.txt").write_text(data)
    assert jobs.scrub_secrets(tmp_path, [KEY]) == 1
    assert (tmp_path / "big.txt").read_text() == data.replace(KEY, "*" * len(KEY))


def test_the_scrub_never_follows_a_jobs_symlinks(tmp_path) -> None:
    """A job controls its out/: a symlink there (or a ledger whose WAL is one) must not make the
    server, which may be root, write to a file outside the job."""
    from proctor.server import jobs

    outside = tmp_path / "outside.txt"
    outside.write_text(f"server file mentioning {KEY}")
    out = tmp_path / "job" / "out"
    out.mkdir(parents=True)
    (out / "link.txt").symlink_to(outside)
    conn = sqlite3.connect(out / "ledger.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (KEY,))
    conn.commit()
    conn.close()  # the last connection's close removes the WAL; the job puts a symlink there
    (out / "ledger.sqlite-wal").symlink_to(outside)
    jobs.scrub_secrets(tmp_path / "job", [KEY])
    assert outside.read_text() == f"server file mentioning {KEY}"
