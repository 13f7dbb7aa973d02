"""Benchmark: the server's memory while a hostile agent sends answers that never finish.

Run:  .venv/bin/python bench/tunnel_caps.py [--gib 1] [--held 16] [--held-mib 60]

The server is ``bench/tunnel.py``'s hub process (a ``TunnelHub`` with its default caps under
uvicorn); this driver plays both the job (facade calls) and the attacker, an agent that holds the
job's token and tunnel secret, as a submitter does. Two attacks, each in a fresh server:

1. one call answered by a head without ``FIN`` and then ``--gib`` GiB of body pieces, never the
   last one;
2. ``--held`` calls at once, each answered with ``--held-mib`` MiB and never finished (the
   per-job budget across calls).

Printed: the server's resident memory (RSS) before, its peak (VmHWM) and at the end, as MiB and
as a ratio to the before figure, and what the job's calls were answered while the attack went on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from proctor.tunnel import protocol
from proctor.tunnel.protocol import CHUNK, Kind

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
PIECES_PER_MESSAGE = 2
"""Body pieces per WebSocket message: about 1 MiB, as the real agent sends."""


def _memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB (Linux)."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) / 1024
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _call(facade: str, internal: str, results: list[Any]) -> None:
    """One job call through the facade; records its status and error code."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http,
        http.post(
            f"{facade}/chat/completions",
            json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {internal}", "X-Proctor-Deadline": "100"},
        ) as resp,
    ):
        body = await resp.read()
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        results.append((resp.status, code))


async def _attack(server_url: str, secret: str, internal: str, pid: int, calls: int, per_call: int) -> dict[str, Any]:
    """Answer ``calls`` job calls with ``per_call`` bytes each and no last piece."""
    facade = f"{server_url}/internal/jobs/bench-job/v1"
    headers = {"Authorization": "Bearer bench-token", protocol.SECRET_HEADER: secret}
    results: list[Any] = []
    before = _memory(pid)["VmRSS"]
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"ws{server_url[4:]}/v1/jobs/bench-job/tunnel", headers=headers, max_msg_size=64 * MIB
        )
        callers = [asyncio.create_task(_call(facade, internal, results)) for _ in range(calls)]
        rids: list[int] = []
        async with asyncio.timeout(60):
            while len(rids) < calls:
                msg = await ws.receive()
                for env in protocol.decode(msg.data):
                    if env.kind == Kind.REQUEST:
                        rids.append(env.rid)
        piece = b"x" * CHUNK
        for rid in rids:
            await ws.send_bytes(protocol.encode(Kind.RESPONSE, rid, {"s": 200, "h": {}}, b"", fin=False))
        sent = 0
        while sent < per_call:
            for rid in rids:
                await ws.send_bytes(
                    b"".join([protocol.encode(Kind.DATA, rid, None, piece, fin=False)] * PIECES_PER_MESSAGE)
                )
            sent += CHUNK * PIECES_PER_MESSAGE
        # Let the server take in what is in flight, then read its memory with the attack still open.
        await ws.send_bytes(protocol.encode(Kind.PONG, 0, {}))
        await asyncio.sleep(2.0)
        after = _memory(pid)
        answered_during = list(results)
        await ws.close()
        for task in callers:
            task.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
    return {"before": before, "peak": after["VmHWM"], "end": after["VmRSS"], "answers": answered_during}


async def _wait_up(server_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(500):  # bounded: ~10 s
            try:
                async with http.get(f"{server_url}/bench/stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError("the hub did not come up")


def _run(calls: int, per_call: int) -> dict[str, Any]:
    """One attack against a fresh server process."""
    port = _free_port()
    hub = subprocess.Popen(
        [sys.executable, str(HERE / "tunnel.py"), "--role", "hub", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        assert hub.stdout is not None
        secrets_ = json.loads(hub.stdout.readline())
        server_url = f"http://127.0.0.1:{port}"

        async def main() -> dict[str, Any]:
            await _wait_up(server_url)
            return await _attack(server_url, secrets_["secret"], secrets_["internal"], hub.pid, calls, per_call)

        return asyncio.run(main())
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()


def _report(title: str, sent_mib: float, r: dict[str, Any]) -> None:
    before = r["before"]
    print(f"{title}: {sent_mib:.0f} MiB sent, never finished")
    print(f"  server RSS before  {before:8.0f} MiB")
    print(f"  server RSS peak    {r['peak']:8.0f} MiB  ({r['peak'] / before:.1f}x before)")
    print(f"  server RSS at end  {r['end']:8.0f} MiB  ({r['end'] / before:.1f}x before)")
    answers = ", ".join(f"{status} {code}" for status, code in r["answers"]) or "none (still waiting)"
    print(f"  job calls answered during the attack: {answers}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB sent on one unfinished answer")
    parser.add_argument("--held", type=int, default=16, help="unfinished answers at once")
    parser.add_argument("--held-mib", type=int, default=60, help="MiB sent on each of them")
    args = parser.parse_args()
    one = int(args.gib * 1024) * MIB
    _report("one answer", one / MIB, _run(1, one))
    _report(
        f"{args.held} answers x {args.held_mib} MiB", args.held * args.held_mib, _run(args.held, args.held_mib * MIB)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
