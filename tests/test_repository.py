"""The repository itself: no run output committed, and a README that lists every command."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from proctor.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    result = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {ROOT}")
    return [name for name in result.stdout.decode().split("\0") if name]


def test_no_run_output_is_committed() -> None:
    """Pid files, logs (a server log once held a traceback), run and server data directories."""
    unwanted = [
        name
        for name in _tracked_files()
        if name.endswith((".pid", ".log")) or re.match(r"(.*/)?(runs|proctor-data)/", name)
    ]
    assert unwanted == []


def test_gitignore_keeps_run_output_out() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip(f"not a git checkout: {ROOT}")
    probes = ["serve.pid", "serve2.log", "runs/arith/ledger.sqlite", "proctor-data/proctor.sqlite"]
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *probes], capture_output=True, text=True, timeout=60
    )
    assert sorted(result.stdout.split()) == sorted(probes)


def test_readme_command_table_lists_every_command() -> None:
    command = typer.main.get_command(app)
    names = set(command.commands) - {"server"}  # type: ignore[attr-defined]
    server = command.commands["server"].commands["token"]  # type: ignore[attr-defined]
    readme = (ROOT / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `proctor "))
    cells = " ".join(re.findall(r"^\| `proctor ([^`]*)`", table, flags=re.MULTILINE))
    missing = [name for name in sorted(names) if not re.search(rf"(^|[\s/]){name}\b", cells)]
    token_cells = [
        cell
        for cell in re.findall(r"^\| `proctor ([^`]*)`", table, flags=re.MULTILINE)
        if cell.startswith("server token")
    ]
    missing += [f"server token {sub}" for sub in sorted(server.commands) if not any(sub in c for c in token_cells)]
    assert missing == []
