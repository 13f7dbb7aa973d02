"""Benchmark: what the private-mode tunnel adds to a model call, direct vs through the tunnel.

Run:  .venv/bin/python bench/tunnel.py [--requests 400] [--concurrency 64]

Four processes, as in a real deployment: the fake model (0 ms latency), the server hosting the
``TunnelHub`` under uvicorn, the submitter's agent, and this driver, which plays the job's
process. Each cell sends the same chat request ``--requests`` times (>= 200): direct to the
model, then through the facade -> WebSocket -> agent -> model. Printed: p50/p99 latency at
concurrency 1 and the added p50 (goal <= 2 ms), and throughput at ``--concurrency`` through
the tunnel vs direct (goal >= 50 %). Secrets travel to the child processes over pipes only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp

BODY = {"model": "fake", "messages": [{"role": "user", "content": "What is 2 + 3? Answer briefly."}], "max_tokens": 16}


# --------------------------------------------------------------------------- child roles


def _hub_main(port: int, router_only: bool) -> None:
    """The server: a FastAPI app with the hub's router; prints the job's secrets on stdout."""
    import uvicorn
    from fastapi import FastAPI

    from proctor._loop import tune_gc
    from proctor.server.tunnel.hub import TunnelHub

    hub = TunnelHub(authenticator=lambda token: "bench" if token == "bench-token" else None)
    app = FastAPI()
    app.include_router(hub.router)
    secret, internal = hub.register_job("bench-job", owner="bench")
    print(json.dumps({"secret": secret, "internal": internal}), flush=True)

    @app.get("/bench/stats")
    def stats() -> dict[str, Any]:
        return hub.stats("bench-job")

    served = app if router_only else hub.wrap_app(app)
    tune_gc()  # as proctor serve does
    uvicorn.run(
        served, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
    )  # as proctor serve


def _agent_main(server_url: str, model_url: str) -> None:
    """The submitter's agent; reads the tunnel secret from stdin."""
    from proctor._loop import run as run_loop
    from proctor.tunnel.agent import run_agent

    secret = sys.stdin.readline().strip()
    run_loop(run_agent(server_url, "bench-job", "bench-token", secret, model_url, log=lambda _line: None))


def _child(args: argparse.Namespace) -> int:
    """Run a child role; with ``PROCTOR_BENCH_PROFILE=DIR`` under cProfile (``DIR/<role>.prof``)."""
    profile_dir = os.environ.get("PROCTOR_BENCH_PROFILE")
    profiler = None
    if profile_dir:
        import cProfile
        import signal

        profiler = cProfile.Profile(time.process_time)  # CPU, not wall: the machine may be busy

        def dump(*_: object) -> None:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"{args.role}.prof"))
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
        profiler.enable()
    if args.role == "hub":
        _hub_main(args.port, args.router_only)
    else:
        _agent_main(args.server, args.model)
    if profiler is not None:
        dump()
    return 0


# --------------------------------------------------------------------------- driver


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), to report CPU per call next to wall time."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_http(url: str, headers: dict[str, str] | None = None, attempts: int = 500) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(attempts):  # bounded: ~10 s
            try:
                async with http.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError(f"{url} did not come up")


async def _cell(base_url: str, key: str, requests: int, concurrency: int) -> dict[str, float]:
    """Plain HTTP calls with one aiohttp session: what any OpenAI client in a command job does."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    payload = json.dumps(BODY).encode()
    url = f"{base_url}/chat/completions"
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def call() -> None:
            async with http.post(url, data=payload, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")

        return await _drive(call, requests, concurrency)


async def _engine_cell(base_url: str, key: str, transport: str, requests: int, concurrency: int) -> dict[str, float]:
    """The engine's own model client (``ModelRouter``), as a proctor job calls its roles."""
    from proctor.models.config import GenerateParams, ModelConfig
    from proctor.models.router import ModelRouter

    config = ModelConfig(
        model="fake",
        base_url=base_url,
        api_key_env="BENCH_KEY",
        transport=transport,
        params=GenerateParams(max_tokens=BODY["max_tokens"]),
    )
    router = ModelRouter({"subject": config}, environ={"BENCH_KEY": key})
    messages = BODY["messages"]
    async with router:
        role = router.role("subject")

        async def call() -> None:
            await role.chat(messages)

        return await _drive(call, requests, concurrency)


async def _drive(call: Any, requests: int, concurrency: int) -> dict[str, float]:
    """Warm up, then ``requests`` calls from ``concurrency`` workers; latency and throughput."""
    for _ in range(20):  # connections and code paths, not measured
        await call()
    latencies: list[float] = []
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": requests / wall,
    }


async def _get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per cell (>= 200)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell; medians are printed")
    parser.add_argument(
        "--router-only", action="store_true", help="serve the facade through FastAPI routing only (no hub.wrap_app)"
    )
    parser.add_argument("--role", choices=["hub", "agent"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        return _child(args)
    if args.requests < 200:
        parser.error("--requests must be at least 200")

    from proctor.testing import FakeLLMConfig, FakeLLMProcess

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[str]] = []
    with FakeLLMProcess(FakeLLMConfig(reply="echo", latency=0.0)) as llm:
        try:
            port = _free_port()
            hub = subprocess.Popen(
                [sys.executable, __file__, "--role", "hub", "--port", str(port)]
                + (["--router-only"] if args.router_only else []),
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
            procs.append(hub)
            assert hub.stdout is not None
            secrets_ = json.loads(hub.stdout.readline())
            server_url = f"http://127.0.0.1:{port}"
            agent = subprocess.Popen(
                [sys.executable, __file__, "--role", "agent", "--server", server_url, "--model", llm.base_url],
                stdin=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
            procs.append(agent)
            assert agent.stdin is not None
            agent.stdin.write(secrets_["secret"] + "\n")
            agent.stdin.close()
            facade = f"{server_url}/internal/jobs/bench-job/v1"
            auth = {"Authorization": f"Bearer {secrets_['internal']}"}
            asyncio.run(_wait_http(f"{facade}/models", auth))

            internal = secrets_["internal"]
            # (name, client, base URL, key, transport): the engine's client as a proctor job uses
            # it (direct, or private over the job channel), and a plain HTTP client as a command
            # job's OpenAI client would (direct, or private through the facade).
            paths = (
                ("job direct", "engine", llm.base_url, "none", "http"),
                ("job tunnel", "engine", facade, internal, "tunnel"),
                ("http direct", "http", llm.base_url, "none", "http"),
                ("http facade", "http", facade, internal, "http"),
            )
            assert llm.proc is not None
            pids = {"model": llm.proc.pid, "server": hub.pid, "agent": agent.pid}
            rounds: dict[tuple[str, int], list[dict[str, float]]] = {}
            cpu: dict[str, dict[str, float]] = {name: {} for name, *_ in paths}
            for conc in (1, args.concurrency):
                # Alternate the paths over several rounds and keep medians: on a shared machine a
                # single cell can land on a burst of somebody else's load.
                for _ in range(args.rounds):
                    for name, client, url, key, transport in paths:
                        before = {role: _cpu_seconds(pid) for role, pid in pids.items()}
                        client_before = time.process_time()
                        if client == "engine":
                            cell = asyncio.run(_engine_cell(url, key, transport, args.requests, conc))
                        else:
                            cell = asyncio.run(_cell(url, key, args.requests, conc))
                        rounds.setdefault((name, conc), []).append(cell)
                        if conc == args.concurrency:
                            calls = args.requests + 20
                            spent = {role: _cpu_seconds(pid) - before[role] for role, pid in pids.items()}
                            spent["client"] = time.process_time() - client_before
                            for role, seconds in spent.items():
                                cpu[name][role] = cpu[name].get(role, 0.0) + seconds * 1000 / calls / args.rounds
            tunnel_stats = asyncio.run(_get_json(f"{server_url}/bench/stats"))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    results = {
        key: {field: statistics.median(r[field] for r in cells) for field in ("p50_ms", "p99_ms", "rps")}
        for key, cells in rounds.items()
    }
    print(
        f"tunnel benchmark: {args.requests} requests per cell, {args.rounds} rounds (medians), "
        f"model latency 0 ms, {os.cpu_count()} CPUs, facade {'via router only' if args.router_only else 'fast path'}"
    )
    print(f"{'path':<12} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
    for (name, conc), r in results.items():
        print(f"{name:<12} {conc:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>9.0f}")
    for name, cells in cpu.items():
        private = "direct" not in name
        used = {role: ms for role, ms in cells.items() if private or role in ("model", "client")}
        cells["total"] = sum(used.values())
        parts = ", ".join(f"{role} {ms:.2f}" for role, ms in used.items())
        print(f"CPU ms per call at concurrency {args.concurrency}, {name}: {parts}; total {cells['total']:.2f}")
    m = tunnel_stats["messages"]
    print(
        f"WebSocket messages (agent connection): server->agent {m['sent']} carrying {m['sent_envelopes']} "
        f"envelopes, agent->server {m['received']} carrying {m['received_envelopes']}"
    )
    conc = args.concurrency
    for label, direct, private, goal in (
        ("proctor job (engine over the job channel)", "job direct", "job tunnel", True),
        ("command job (HTTP client through the facade)", "http direct", "http facade", False),
    ):
        added = results[(private, 1)]["p50_ms"] - results[(direct, 1)]["p50_ms"]
        ratio = results[(private, conc)]["rps"] / results[(direct, conc)]["rps"]
        print(f"{label}:")
        verdict_latency = (": ok" if added <= 2 else ": MISSED") if goal else ""
        verdict_ratio = (": ok" if ratio >= 0.5 else ": MISSED") if goal else ""
        print(f"  added p50 latency at concurrency 1: {added:.2f} ms (goal <= 2 ms){verdict_latency}")
        print(f"  throughput at concurrency {conc}, tunnel/direct: {ratio:.1%} (goal >= 50 %){verdict_ratio}")
        # Two CPU-based views of the same ratio, independent of other load on the machine: all
        # processes sharing this machine's cores, and each on a core of its own (a deployment).
        shared = cpu[direct]["total"] / cpu[private]["total"]
        direct_peak = max(cpu[direct]["client"], cpu[direct]["model"])
        private_peak = max(ms for role, ms in cpu[private].items() if role != "total")
        print(
            f"  throughput ratio from CPU per call: {shared:.1%} with all processes sharing the cores; "
            f"{direct_peak / private_peak:.1%} with a core per process"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
