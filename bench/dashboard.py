"""Dashboard benchmark (not run in CI): how fast a job page of 10,000 samples loads.

    .venv/bin/python bench/dashboard.py [--samples 10000] [--repeat 30]

A real `proctor serve` (child process) runs a real job of N samples against the fake LLM; then a
logged-in client (the login form's session cookie) times each dashboard request, alternating
with the baseline measured in the same run: the API's `GET /v1/jobs/{id}` (bearer token), which
reads one row of the job store. Figures: median and p90 per request, and the median as a ratio of
the baseline's. Goal: the job page (its HTML, which includes the accuracy, CI, per-category and
error tables) under 1 s; the samples are paged in SQL, so their page should not grow with N.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from _proctor_run import write_arith_spec
from server import start_server, token

from proctor.client import Client
from proctor.testing import FakeLLMConfig, FakeLLMThread


def timed(call: Callable[[], httpx.Response]) -> float:
    t0 = time.perf_counter()
    answer = call()
    elapsed = time.perf_counter() - t0
    if answer.status_code != 200:
        raise SystemExit(f"{answer.request.url}: {answer.status_code} {answer.text[:200]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp,
        FakeLLMThread(FakeLLMConfig(reply="arith")) as llm,
    ):
        base = Path(tmp)
        spec = write_arith_spec(base / "spec", [llm.base_url], n=args.samples, concurrency=64)
        data = base / "data"
        data.mkdir()
        secret = token(data)
        proc, url = start_server(data)
        try:
            with Client(url, secret) as client:
                job_id = client.submit(spec)["job"]["id"]
                t0 = time.perf_counter()
                final = client.wait(job_id, timeout=1800)
                print(f"job {job_id}: {final['state']}, {args.samples} samples in {time.perf_counter() - t0:.1f} s")
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
            web = httpx.Client(base_url=url, timeout=60)
            if web.post("/login", data={"token": secret}).status_code != 303:
                raise SystemExit("login failed")
            first_analysis = timed(lambda: web.get(f"/jobs/{job_id}/analysis", params={"fragment": 1}))
            requests: dict[str, Callable[[], httpx.Response]] = {
                "API GET /v1/jobs/{id} (baseline)": lambda: api.get(f"/v1/jobs/{job_id}"),
                "job page /jobs/{id}": lambda: web.get(f"/jobs/{job_id}"),
                "job twin /jobs/{id}.json": lambda: web.get(f"/jobs/{job_id}.json"),
                "samples page 1": lambda: web.get(f"/jobs/{job_id}/samples"),
                "samples page 150": lambda: web.get(f"/jobs/{job_id}/samples", params={"page": 150}),
                "samples, filter + search": lambda: web.get(
                    f"/jobs/{job_id}/samples", params={"score": "correct", "q": "What is 77"}
                ),
                "one sample's trajectory": lambda: web.get(f"/jobs/{job_id}/samples/s5000"),
                "analysis tables (cached)": lambda: web.get(f"/jobs/{job_id}/analysis", params={"fragment": 1}),
                "jobs list /jobs": lambda: web.get("/jobs"),
            }
            times: dict[str, list[float]] = {name: [] for name in requests}
            for _ in range(args.repeat):
                for name, call in requests.items():  # interleaved: noise hits every request alike
                    times[name].append(timed(call))
            baseline = statistics.median(next(iter(times.values())))
            print(f"\n{args.samples:,} samples, {args.repeat} rounds; median and p90 per request")
            print(f"{'request':38} {'median ms':>10} {'p90 ms':>8} {'× baseline':>11}")
            for name, values in times.items():
                ordered = sorted(values)
                p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
                median = statistics.median(values)
                print(f"{name:38} {1000 * median:10.1f} {1000 * p90:8.1f} {median / baseline:11.1f}")
            print(f"{'analysis tables (first, uncached)':38} {1000 * first_analysis:10.1f}")
            page = statistics.median(times["job page /jobs/{id}"])
            print(f"\njob page of {args.samples:,} samples: {1000 * page:.0f} ms (goal <= 1000 ms)")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    sys.exit(0)


if __name__ == "__main__":
    main()
