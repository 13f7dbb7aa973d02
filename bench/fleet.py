"""Fleet benchmark (not run in CI): N small jobs on one server, then across two servers that share
one PostgreSQL store and one data directory; every job must run exactly once. Then the takeover:
one of two servers is killed (SIGKILL) while it runs a job, and the time until the other server
runs that job again is printed against the lease (``--lease-seconds``).

    .venv/bin/python bench/fleet.py [--jobs 200] [--slots 2] [--lease 5] [--takeovers 3]

The jobs are a command template (``python -c 'print(...)'``, sandboxed as usual), so the figure is
the servers' own cost per job: claim, spawn, supervise, record. Both runs are measured in the same
process on the same machine, and the two-server figure is printed as a ratio of the one-server
one. PostgreSQL is a throwaway cluster (tests/pg_kit.py), on a Unix socket, removed at the end.
On a 2-core machine two servers compete for the same cores, so expect a ratio near 1, not 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import pg_kit  # noqa: E402
from helpers import create_token, start_server, stop_process  # noqa: E402


def run_fleet(base: Path, name: str, servers: int, jobs: int, slots: int) -> float:
    """Seconds from the first submission to the last job's end; asserts each job ran once."""
    data = base / name
    data.mkdir()
    config = base / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "queue_max": jobs * 2,
                "max_queued_per_user": jobs * 2,
                "templates": {"hello": {"argv": [sys.executable, "-c", "print('ran once')"]}},
            }
        )
    )
    token = create_token(data, "bench", admin=True)  # helpers add --database-url (pg_kit.ENV is set)
    started = [
        start_server(data, base / f"{name}.log", "--slots", str(slots), "--config", str(config)) for _ in range(servers)
    ]
    clients = [httpx.Client(base_url=u, headers={"Authorization": f"Bearer {token}"}, timeout=60) for _, u in started]
    try:
        t0 = time.monotonic()

        def submit(i: int) -> str:
            r = clients[i % servers].post("/v1/jobs", json={"kind": "command", "template": "hello"})
            r.raise_for_status()
            return str(r.json()["job"]["id"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(submit, range(jobs)))
        for _ in range(12000):  # bounded: at most ~20 min
            with pg_kit.connect(data) as conn:
                left = conn.execute(
                    "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')"
                ).fetchone()[0]
            if left == 0:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        with pg_kit.connect(data) as conn:
            rows = conn.execute("SELECT id, state, attempts FROM jobs").fetchall()
        bad = [r for r in rows if r[1] != "succeeded" or r[2] != 1]
        runs = [(data / "jobs" / i / "job.log").read_text().count("ran once") for i in ids]
        assert len(rows) == jobs and not bad, f"jobs not run exactly once: {bad[:5]}"
        assert runs == [1] * jobs, f"job logs with other than one run: {[r for r in runs if r != 1][:5]}"
        return elapsed
    finally:
        for c in clients:
            c.close()
        for proc, _ in started:
            stop_process(proc)


def takeover_times(base: Path, lease: float, rounds: int) -> list[float]:
    """Seconds from a server's SIGKILL until the other server runs its job again (attempt 2)."""
    data = base / "takeover"
    data.mkdir()
    config = base / "takeover.yaml"
    config.write_text(
        yaml.safe_dump({"templates": {"sleep": {"argv": [sys.executable, "-c", "import time; time.sleep(600)"]}}})
    )
    token = create_token(data, "bench", admin=True)
    extra = ("--config", str(config), "--lease-seconds", str(lease))
    started = [start_server(data, base / "takeover.log", *extra) for _ in range(2)]
    times = []
    try:
        for _ in range(rounds):
            clients = [
                httpx.Client(base_url=u, headers={"Authorization": f"Bearer {token}"}, timeout=60) for _, u in started
            ]
            job_id = clients[0].post("/v1/jobs", json={"kind": "command", "template": "sleep"}).json()["job"]["id"]
            owner = None
            for _ in range(3000):  # bounded: ~5 min
                with pg_kit.connect(data) as conn:
                    state, instance = conn.execute(
                        "SELECT state, instance FROM jobs WHERE id = %s", (job_id,)
                    ).fetchone()
                if state == "running" and instance:
                    owner = int(instance.split("/")[1])
                    break
                time.sleep(0.1)
            assert owner is not None, "the job never started"
            dead = next(i for i, (p, _) in enumerate(started) if p.pid == owner)
            t0 = time.monotonic()
            started[dead][0].send_signal(signal.SIGKILL)
            started[dead][0].wait(timeout=30)
            for _ in range(60000):  # bounded: ~10 min
                with pg_kit.connect(data) as conn:
                    state, attempts = conn.execute(
                        "SELECT state, attempts FROM jobs WHERE id = %s", (job_id,)
                    ).fetchone()
                if state == "running" and attempts == 2:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the job was not taken over")
            times.append(time.monotonic() - t0)
            clients[1 - dead].post(f"/v1/jobs/{job_id}/cancel")
            for c in clients:
                c.close()
            started[dead] = start_server(data, base / "takeover.log", *extra)  # the fleet is two again
    finally:
        for proc, _ in started:
            stop_process(proc)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--lease", type=float, default=5.0, help="lease seconds of the takeover run")
    parser.add_argument("--takeovers", type=int, default=3, help="kills measured in the takeover run")
    args = parser.parse_args()
    reason = pg_kit.missing_reason()
    if reason:
        raise SystemExit(reason)
    cluster = pg_kit.PostgresCluster.start()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="proctor-fleet-") as tmp,
            mock.patch.dict(os.environ, {pg_kit.ENV: str(cluster.root)}),
        ):
            one = run_fleet(Path(tmp), "one", 1, args.jobs, args.slots)
            two = run_fleet(Path(tmp), "two", 2, args.jobs, args.slots)
            takeovers = takeover_times(Path(tmp), args.lease, args.takeovers) if args.takeovers else []
    finally:
        cluster.stop()
    print(f"{args.jobs} jobs, {args.slots} slots per server, PostgreSQL store; each job ran exactly once")
    print(f"1 server : {one:6.1f} s  ({args.jobs / one:5.1f} jobs/s)  baseline")
    print(f"2 servers: {two:6.1f} s  ({args.jobs / two:5.1f} jobs/s)  {one / two:.2f}x the baseline's throughput")
    if takeovers:
        mid = statistics.median(takeovers)
        print(
            f"takeover after SIGKILL, lease {args.lease:g} s: median {mid:.2f} s "
            f"({mid / args.lease:.2f}x the lease), max {max(takeovers):.2f} s over {len(takeovers)} kills"
        )


if __name__ == "__main__":
    main()
