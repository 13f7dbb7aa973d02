"""Engine overhead: `proctor run` (whole process, start-up included) vs a minimal aiohttp client.

Both run as child processes against the same fake OpenAI server (itself a separate process),
with the same requests, in the same run, so the ratio means something on a shared, noisy
machine. Each cell is measured ``--repeat`` times and the best time of each side is kept.

    .venv/bin/python bench/overhead.py                # the issue's cells (N=2000)
    .venv/bin/python bench/overhead.py --n 500 --repeat 1

Prints, per cell: both wall times, their ratio, and proctor's samples/s; then proctor's time from
process start to its first request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from proctor.testing import FakeLLMConfig, FakeLLMProcess

MINIMAL_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    import aiohttp

    async def main(url, path, concurrency):
        rows = [json.loads(l) for l in open(path)]
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            async def one(row):
                async with sem:
                    body = {"model": "fake", "messages": [{"role": "user", "content": row["question"]}],
                            "temperature": 0}
                    async with s.post(url + "/chat/completions", json=body,
                                      headers={"X-Proctor-Sample-Id": row["id"]}) as r:
                        data = await r.json()
                        return data["choices"][0]["message"]["content"]
            out = await asyncio.gather(*(one(r) for r in rows))
        assert len(out) == len(rows)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def write_inputs(tmp: Path, n: int, base_url: str, concurrency: int) -> tuple[Path, Path]:
    data = tmp / "data.jsonl"
    with data.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
    spec = tmp / f"spec-{concurrency}.yaml"
    spec.write_text(
        textwrap.dedent(f"""\
        name: overhead
        dataset: {{path: data.jsonl, fields: {{id: id, input: question, target: answer}}}}
        solver: generate
        scorer: numeric
        models:
          subject: {{base_url: {base_url}, model: fake}}
        generate: {{temperature: 0}}
        concurrency: {concurrency}
        """)
    )
    return data, spec


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return elapsed


def requests_so_far(base_url: str) -> int:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats", timeout=5) as r:
        return int(json.loads(r.read())["requests"])


def time_to_first_request(spec: Path, out: Path, base_url: str) -> float:
    before = requests_so_far(base_url)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = start + 30
        while requests_so_far(base_url) == before:
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise SystemExit("proctor sent no request")
            time.sleep(0.002)
        return time.perf_counter() - start
    finally:
        proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cells = [(0.05, 128, 1.3), (0.05, 512, 1.6), (0.0, 128, None)]
    print(f"N={args.n}, best of {args.repeat}; the fake server runs in its own process")
    print(f"{'latency':>8} {'C':>5} {'minimal s':>10} {'proctor s':>10} {'ratio':>6} {'goal':>6} {'proctor/s':>10}")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        client = tmp / "minimal.py"
        client.write_text(MINIMAL_CLIENT)
        for latency, concurrency, goal in cells:
            with FakeLLMProcess(FakeLLMConfig(reply="arith", latency=latency)) as llm:
                data, spec = write_inputs(tmp, args.n, llm.base_url, concurrency)
                minimal, proctor = [], []
                for i in range(args.repeat):
                    minimal.append(timed([sys.executable, str(client), llm.base_url, str(data), str(concurrency)]))
                    out = tmp / f"run-{latency}-{concurrency}-{i}"
                    proctor.append(
                        timed(
                            [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none"]
                        )
                    )
                best_m, best_p = min(minimal), min(proctor)
                print(
                    f"{latency * 1000:>6.0f}ms {concurrency:>5} {best_m:>10.2f} {best_p:>10.2f} {best_p / best_m:>6.2f} "
                    f"{'<=' + str(goal) if goal else '-':>6} {args.n / best_p:>10.0f}"
                )
        with FakeLLMProcess(FakeLLMConfig(reply="arith", latency=0.05)) as llm:
            _, spec = write_inputs(tmp, 50, llm.base_url, 8)
            firsts = [time_to_first_request(spec, tmp / f"ttfr-{i}", llm.base_url) for i in range(args.repeat)]
        print(
            f"process start to first request: best {min(firsts):.3f} s, "
            f"median {sorted(firsts)[len(firsts) // 2]:.3f} s (goal <= 1.0 s)"
        )


if __name__ == "__main__":
    main()
