"""Helpers shared by tests: writing datasets and specs, running the real `proctor` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pg_kit


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def arith_rows(n: int) -> list[dict[str, Any]]:
    """Questions the fake server's ``arith`` mode answers correctly; every third target is wrong."""
    rows = []
    for i in range(n):
        a, b = i + 1, 2 * i + 3
        target = a + b if i % 3 else a + b + 1
        rows.append(
            {
                "id": f"q{i}",
                "question": f"What is {a} + {b}?",
                "answer": str(target),
                "category": "even" if i % 2 == 0 else "odd",
            }
        )
    return rows


def write_spec(
    tmp_path: Path,
    base_url: str,
    *,
    n: int = 30,
    extra: str = "",
    rows: list[dict[str, Any]] | None = None,
    scorer: str = "numeric",
    concurrency: int = 8,
) -> Path:
    write_jsonl(tmp_path / "data.jsonl", rows if rows is not None else arith_rows(n))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""name: arith
dataset:
  path: data.jsonl
  fields: {{id: id, input: question, target: answer, category: category}}
solver: generate
scorer: {scorer}
models:
  subject: {{base_url: {base_url}, model: fake}}
concurrency: {concurrency}
{extra}""",
        encoding="utf-8",
    )
    return spec


def wait_for(
    condition: Callable[[], bool], what: str = "the condition", timeout: float = 240.0, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds, failing the test after ``timeout`` seconds.

    Bounded but generous: CI runs two test workers on two shared cores, and a wait returns as soon
    as its condition holds, so only a real hang pays the whole bound.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time ({timeout:g} s): {what}")
        time.sleep(interval)


def run_proctor(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real `proctor` CLI in a child process (bounded by ``timeout``).

    The bound is generous on purpose: an lm-eval run imports for tens of seconds, and CI runs two
    test workers on two shared cores. A run that really hangs still fails, just later.
    """
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "proctor", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def start_server(
    data: Path, log: Path, *extra: str, preexec_fn: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`proctor serve` as a child process in its own session, on a free loopback port.

    ``preexec_fn`` runs in the child before the server starts (e.g. to lower its open-files limit).
    """
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proctor",
                "serve",
                "--port",
                "0",
                "--data",
                str(data),
                "--slots",
                "1",
                "--ready-line",
                "READY {port}",
                *store_args(data),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            preexec_fn=preexec_fn,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the server prints it or exits (EOF)
    if not line.startswith("READY "):
        stop_process(proc)
        raise AssertionError(f"server did not start: {line!r}\n{log.read_text()[-2000:]}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def store_args(data: Path) -> list[str]:
    """``--database-url`` for the job store the running test chose (see ``pg_kit``), else nothing."""
    url = pg_kit.store_url_for(data)
    return ["--database-url", url] if url else []


def stop_process(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def create_token(data: Path, name: str, *, admin: bool = False) -> str:
    args = [sys.executable, "-m", "proctor", "server", "token", "create", name, "--data", str(data), *store_args(data)]
    if admin:
        args.append("--admin")
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def load_orchestra_fakes() -> Any:
    """examples/orchestra/fakes.py (the example's stand-in servers) as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "orchestra" / "fakes.py"
    spec = importlib.util.spec_from_file_location("orchestra_fakes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
