"""docs/server.md promises that PostgreSQL works as the job store: these tests hold it to that.

The rest of tests/server runs on PostgreSQL too (see ``store_backend`` in tests/conftest.py); the
tests here check what only PostgreSQL has: that the store really is there and not in SQLite.
"""

from __future__ import annotations

import pg_kit
import pytest
from server_helpers import script_job, wait_state

pytestmark = pytest.mark.store("postgres")


def test_jobs_and_token_digests_live_in_postgres_not_sqlite(make_server) -> None:
    srv = make_server()
    data = srv.settings.data_dir
    alice = srv.client("alice")
    job_id = alice.post("/v1/jobs", json=script_job("lines", "3")).json()["job"]["id"]
    assert wait_state(alice, job_id, {"succeeded", "failed"})["state"] == "succeeded"
    with pg_kit.connect(data) as conn:
        row = conn.execute("SELECT state, owner, attempts FROM jobs WHERE id = %s", (job_id,)).fetchone()
        digests = [r[0] for r in conn.execute("SELECT digest FROM tokens")]
    assert row == ("succeeded", "alice", 1)
    assert len(digests) == 3 and srv.tokens["alice"] not in digests  # digests only, never a token
    assert not (data / "proctor.sqlite").exists()
