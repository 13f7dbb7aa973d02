"""``proctor serve`` refuses to start without a working sandbox, naming the package to install;
``--no-sandbox`` starts but warns loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import start_server, stop_process


def test_serve_refuses_to_start_without_bubblewrap(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path / "empty")}  # no bwrap on PATH
    out = subprocess.run(
        [sys.executable, "-m", "proctor", "serve", "--port", "0", "--data", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert "bubblewrap" in out.stderr and "Traceback" not in out.stderr
    assert "--no-sandbox" in out.stderr


def test_no_sandbox_warns_loudly(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc, url = start_server(tmp_path / "d", log, "--no-sandbox")
    try:
        assert "WARNING: --no-sandbox" in log.read_text()
    finally:
        stop_process(proc)
