"""Helpers of the front-door security tests: a real `proctor serve` child with a config file.

Each test attacks the server the way a stranger on the network (or a job on the same machine)
would: through its port, as a separate process, so what is measured is the real server's answer
and its real log.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import arith_rows, create_token, start_server, stop_process

ECHO_ARGV = str(Path(__file__).with_name("echo_argv.py"))
"""A stand-in program for command templates: writes its argv (one JSON list) to out/argv.json."""

BOMB_LEVELS = 7


def alias_bomb(levels: int = BOMB_LEVELS) -> str:
    """The attack from issue 17: anchors nine wide and ``levels`` deep under generate.extra_body.

    As text it is a few hundred bytes; expanded it is 9**levels values (4.8 million at 7).
    """
    lines = ["    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"    a{i}: &a{i} [{refs}]")
    return "generate:\n  extra_body:\n" + "\n".join(lines) + "\n"


def spec_text(extra: str = "", base_url: str = "http://127.0.0.1:9/v1") -> str:
    return (
        "name: arith\n"
        "dataset:\n  path: data.jsonl\n  fields: {id: id, input: question, target: answer}\n"
        "solver: generate\nscorer: numeric\n"
        f"models:\n  subject: {{base_url: '{base_url}', model: fake}}\n" + extra
    )


def data_jsonl(n: int = 3) -> str:
    import json

    return "".join(json.dumps(r) + "\n" for r in arith_rows(n))


def proctor_job(spec: str) -> dict[str, Any]:
    """A submission of kind ``proctor`` with its dataset uploaded, as the client sends it."""
    return {"kind": "proctor", "spec": spec, "files": {"data.jsonl": {"content": data_jsonl()}}}


@dataclass
class Served:
    """A `proctor serve` child process and what a test needs to talk to it."""

    url: str
    data: Path
    log: Path
    proc: subprocess.Popen[str]
    tokens: dict[str, str]

    def client(self, who: str | None = "alice", **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def served(
    tmp_path: Path, config: dict[str, Any] | None = None, *extra: str, nofile: tuple[int, int] | None = None
) -> Iterator[Served]:
    """Start `proctor serve` (tokens alice, bob and admin root) with ``config`` as its config file.

    ``nofile``: the (soft, hard) open-files limit the server process starts with.
    """
    data = tmp_path / "srv"
    data.mkdir(exist_ok=True)
    tokens = {
        "alice": create_token(data, "alice"),
        "bob": create_token(data, "bob"),
        "root": create_token(data, "root", admin=True),
    }
    cfg = tmp_path / "server.yaml"
    cfg.write_text(yaml.safe_dump(config or {}), encoding="utf-8")
    log = tmp_path / "server.err"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    proc, url = start_server(data, log, "--config", str(cfg), *extra, preexec_fn=limit)
    try:
        yield Served(url, data, log, proc, tokens)
    finally:
        stop_process(proc)


def raw_request(port: int, data: bytes, *, read_timeout: float = 30) -> bytes:
    """Send ``data`` on a fresh connection, and return the whole answer (until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and answer_complete(b"".join(chunks)):
                    break
    return b"".join(chunks)


def answer_complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def python() -> str:
    return sys.executable
