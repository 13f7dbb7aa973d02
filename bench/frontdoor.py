"""Front-door figures for issue 17 (not run in CI): the attacks, measured against a real server.

    .venv/bin/python bench/frontdoor.py [--src DIR] [--post-mib 256] [--idle 1100]

1. server RSS (idle, peak, after) around two simultaneous unauthenticated posts of
   ``--post-mib`` MiB each to ``/v1/jobs`` (a valid submission whose uploaded file is the bulk,
   so a server that reads the body also parses and validates it);
2. ``/health``, 10 tries (3 s each), while ``--idle`` connections sit idle, with the server
   started under an open-files limit of 1,024: soft 1,024 with the machine's hard limit, and
   soft = hard = 1,024.

``--src DIR`` runs the server from another source tree (``DIR/proctor``), e.g. the commit before
the front door was closed, exported with ``git archive BASE src | tar -x -C /tmp/before``: the
"before" and "after" figures then come from the same script on the same machine in one session.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

MIB = 1024 * 1024
OPEN = b'{"kind": "proctor", "spec": "name: x", "files": {"data.jsonl": {"content": "'
CLOSE = b'"}}}'
"""A submission that validates: its one uploaded file is the bulk of the body."""


def start(data: Path, src: str | None, nofile: tuple[int, int] | None) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "proctor", "serve", "--port", "0", "--data", str(data), "--ready-line", "READY {port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=limit,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        stop(proc)
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.split()[1])


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


def post_unauthenticated(port: int, mib: int) -> str:
    """POST ``mib`` MiB without a token; return the status line (or how the connection ended)."""
    size = mib * MIB
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    chunk = b"x" * MIB
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        try:
            sock.sendall(head + OPEN)
            sent = len(OPEN)
            while sent < size - len(CLOSE):
                piece = chunk[: min(len(chunk), size - len(CLOSE) - sent)]
                sock.sendall(piece)
                sent += len(piece)
            sock.sendall(CLOSE)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(200)
        except (ConnectionResetError, TimeoutError):
            return "connection closed early"
    return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "connection closed"


def memory_figure(src: str | None, mib: int) -> None:
    """Both posts at once, as two strangers would; RSS sampled every 20 ms for the peak."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(Path(tmp), src, None)
        try:
            time.sleep(1)
            before = rss_mib(proc.pid)
            peak = before
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(post_unauthenticated, port, mib) for _ in range(2)]
                while not all(f.done() for f in futures):
                    peak = max(peak, rss_mib(proc.pid))
                    time.sleep(0.02)
                answers = [f.result() for f in futures]
            time.sleep(1)
            after = rss_mib(proc.pid)
        finally:
            stop(proc)
    print(
        f"RSS with two unauthenticated {mib} MiB posts at once: idle {before:.0f} MiB, peak {peak:.0f} MiB, "
        f"after {after:.0f} MiB (peak x{peak / before:.2f} of idle); answers: {answers}"
    )


def health_figure(src: str | None, idle: int, nofile: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(Path(tmp), src, nofile)
        socks: list[socket.socket] = []
        try:
            for _ in range(idle):
                sock = socket.socket()
                sock.settimeout(5)
                try:
                    sock.connect(("127.0.0.1", port))
                except OSError:
                    sock.close()
                    break
                socks.append(sock)
            time.sleep(1)
            ok = 0
            for _ in range(10):
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=3, headers={"Connection": "close"})
                    ok += r.status_code == 200
                except httpx.HTTPError:
                    pass
            soft_hard = psutil.Process(proc.pid).rlimit(psutil.RLIMIT_NOFILE)
        finally:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()
            stop(proc)
    print(
        f"/health with {len(socks)} idle connections, server started with open files {nofile[0]}/{nofile[1]} "
        f"(in force: {soft_hard[0]}/{soft_hard[1]}): {ok} of 10 answered"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="run the server from this source tree (PYTHONPATH)")
    parser.add_argument("--post-mib", type=int, default=256)
    parser.add_argument("--idle", type=int, default=1100)
    args = parser.parse_args()
    print(f"server from {args.src or 'this checkout'}")
    memory_figure(args.src, args.post_mib)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for nofile in ((1024, hard), (1024, 1024)):
        health_figure(args.src, args.idle, nofile)


if __name__ == "__main__":
    main()
