"""Jobs run as uids of their own across the whole host, not per server: RLIMIT_NPROC counts a uid's
processes host-wide, so a fork storm in one server's job must not starve another server's job."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from sandbox_kit import probe_job, wait_for

from proctor.server.uids import NoFreeUidError, UidPool, uids_with_processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uids are only given out by a server run as root")


def _hog_holds_its_processes(srv, job_id: str) -> dict:
    for _ in range(1200):  # bounded: until the hog holds all the processes its ceiling allows
        if "LIMITS " in srv.log(job_id):
            break
        time.sleep(0.05)
    return json.loads(srv.log(job_id).split("LIMITS ", 1)[1].splitlines()[0])


def test_a_fork_storm_on_one_server_does_not_starve_a_job_on_another(secure_server) -> None:
    # Both servers use the same (default) uid range, as two servers on one host would.
    first = secure_server(sandbox={"processes": 64})
    second = secure_server(sandbox={"processes": 64})
    hog_client, bob = first.client("mallory"), second.client("bob")
    hog = hog_client.post("/v1/jobs", json=probe_job("limits", "60")).json()["job"]["id"]
    held = _hog_holds_its_processes(first, hog)
    assert held["children"] >= 30
    body = probe_job("limits", limits={"processes": 16})
    job_id = bob.post("/v1/jobs", json=body).json()["job"]["id"]
    job = wait_for(bob, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", second.log(job_id)[-2000:]
    lines = [ln for ln in second.log(job_id).splitlines() if ln.startswith("LIMITS ")]
    mine = json.loads(lines[-1][len("LIMITS ") :])
    assert mine["uid"] not in (0, held["uid"])
    assert 8 <= mine["children"] < 16  # its own budget, none of it used by the other server's job
    hog_client.post(f"/v1/jobs/{hog}/cancel")


@pytest.fixture
def pool_range(tmp_path: Path) -> tuple[int, Path]:
    """A uid range no server of this test run uses, and a lock directory of this test's own."""
    first = 64000 + (os.getpid() % 500) * 4
    return first, tmp_path / "locks"


def test_one_uid_per_lease_across_pools_and_back_after_release(pool_range) -> None:
    first, lock_dir = pool_range
    busy = uids_with_processes()
    assert not busy & set(range(first, first + 3))
    one, other = UidPool(first, 3, lock_dir), UidPool(first, 3, lock_dir)  # two servers on one host
    a, b, c = one.lease(), other.lease(), one.lease()
    assert sorted([a.uid, b.uid, c.uid]) == [first, first + 1, first + 2]
    with pytest.raises(NoFreeUidError) as err:
        other.lease()
    assert "sandbox.uids" in (err.value.hint or "")
    b.release()
    again = one.lease()
    assert again.uid == b.uid
    for lease in (a, c, again):
        lease.release()
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o700


def test_a_uid_that_still_owns_a_process_is_skipped(pool_range) -> None:
    first, lock_dir = pool_range
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    # A previous job's process still alive (e.g. left by a server that died): its uid is not free.
    leftover = subprocess.Popen([setpriv, f"--reuid={first}", f"--regid={first}", "--clear-groups", "sleep", "60"])
    try:
        for _ in range(200):  # bounded: until the child has dropped to its uid
            if first in uids_with_processes():
                break
            time.sleep(0.025)
        lease = UidPool(first, 2, lock_dir).lease()
        assert lease.uid == first + 1
        lease.release()
    finally:
        leftover.kill()
        leftover.wait()
