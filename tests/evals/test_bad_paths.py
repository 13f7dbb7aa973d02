"""Paths that cannot be used are bad input: one line, exit 2, no traceback (issue 15, item 5).

``proctor serve`` on a port already in use, ``--out`` or ``--data`` naming a file, a spec that
cannot be read: each as a real ``proctor`` process, as a user meets them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_proctor, write_spec

from proctor.testing import FakeLLMThread


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    return line


def test_serve_on_a_port_in_use_names_the_port_and_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "proctor", "serve", "--port", str(port), "--data", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert _one_error_line(result) == f"Error: port {port} on 127.0.0.1 is already in use"
    assert "choose another port with --port" in result.stderr


@pytest.mark.parametrize("command", ["serve", "token"])
def test_server_data_directory_that_is_a_file(tmp_path: Path, command: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["serve", "--port", "0"] if command == "serve" else ["server", "token", "create", "bob"]
    result = run_proctor(*args, "--data", afile, timeout=60)
    assert _one_error_line(result) == f"Error: data directory (--data) {afile} is a file, not a directory"


def test_run_out_that_is_a_file_or_lies_under_one(tmp_path: Path, fake_llm: FakeLLMThread) -> None:
    spec = write_spec(tmp_path, fake_llm.base_url, n=3)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    result = run_proctor("run", spec, "--out", afile)
    assert _one_error_line(result) == f"Error: run directory (--out) {afile} is a file, not a directory"
    result = run_proctor("run", spec, "--out", afile / "sub")
    assert _one_error_line(result) == f"Error: cannot create run directory (--out) {afile / 'sub'}: Not a directory"
    assert afile.read_text() == "keep me" and fake_llm.stats()["requests"] == 0


def test_unreadable_spec_and_directory_as_spec(tmp_path: Path) -> None:
    # A unix socket is a path open() refuses even for root, unlike a chmod 000 file.
    sock_path = tmp_path / "spec.yaml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        result = run_proctor("run", sock_path)
    assert _one_error_line(result) == f"Error: cannot read the spec file {sock_path}: No such device or address"
    result = run_proctor("run", tmp_path)
    assert _one_error_line(result) == f"Error: {tmp_path} is a directory, not a spec file"


def test_analyze_with_a_file_in_the_way_of_its_plots_or_events(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text('{"kind": "model", "role": "subject", "start": 1.0, "duration": 0.5}\n')
    (run_dir / "analysis").write_text("not a directory")
    result = run_proctor("analyze", run_dir, "--plots")
    assert _one_error_line(result) == f"Error: plot directory {run_dir / 'analysis'} is a file, not a directory"
    (tmp_path / "other" / "events.jsonl").mkdir(parents=True)
    result = run_proctor("analyze", tmp_path / "other")
    assert _one_error_line(result).startswith(f"Error: {tmp_path / 'other'} has no events.jsonl")
