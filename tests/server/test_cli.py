"""The remote CLI commands against a real server (typer's runner, in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from server_helpers import wait_state
from typer.testing import CliRunner

from proctor.cli import remote, server_cmd


def _app() -> typer.Typer:
    app = typer.Typer()
    server_cmd.register(app)
    remote.register(app)
    return app


def test_submit_follow_results_and_friends(make_server, tmp_path: Path, monkeypatch) -> None:
    srv = make_server()
    monkeypatch.setenv("PROCTOR_SERVER", srv.url)
    monkeypatch.setenv("PROCTOR_TOKEN", srv.tokens["alice"])
    monkeypatch.setenv("MY_KEY", "sk-cli-secret-value")
    runner, app = CliRunner(), _app()
    out = tmp_path / "res"
    r = runner.invoke(
        app,
        [
            "submit",
            "--template",
            "script",
            "-p",
            "mode=env",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model-name",
            "m",
            "--api-key-env",
            "MY_KEY",
            "--out",
            str(out),
            "--server-log",
            str(tmp_path / "server.log"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "sk-cli-secret-value" not in r.output
    assert "OPENAI_API_KEY set" in r.output and "base_url=http://127.0.0.1:9/v1" in r.output
    job_id = r.output.split()[1]
    assert (out / "job.log").is_file() and (tmp_path / "server.log").read_text() == (out / "job.log").read_text()
    r = runner.invoke(app, ["submit", "--template", "script", "-p", "mode=sleep", "-p", "arg=60", "-d"])
    assert r.exit_code == 0, r.output
    sleeper = r.output.split()[1]
    r = runner.invoke(app, ["check"])
    assert r.exit_code == 0 and "busy" in r.output and "you are alice" in r.output
    assert runner.invoke(app, ["status", job_id]).output.count("succeeded") == 1
    assert job_id in runner.invoke(app, ["list"]).output
    assert (
        "line" not in runner.invoke(app, ["logs", job_id]).output
        and "done" in runner.invoke(app, ["logs", job_id]).output
    )
    r = runner.invoke(app, ["cancel", sleeper])
    assert r.exit_code == 0 and "cancelled" in r.output
    r = runner.invoke(app, ["results", job_id, "--tar", "--out", str(tmp_path / "tar")])
    assert r.exit_code == 0 and (tmp_path / "tar" / f"{job_id}.tar.gz").stat().st_size > 0
    r = runner.invoke(app, ["resume", sleeper])
    assert r.exit_code == 0 and "queued" in r.output
    wait_state(srv.client("alice"), sleeper, {"running"})
    runner.invoke(app, ["cancel", sleeper])
    assert runner.invoke(app, ["delete", sleeper]).exit_code == 0
    r = runner.invoke(app, ["status", sleeper])
    assert r.exit_code != 0 and "no job" in str(r.exception)


@pytest.mark.store("sqlite")  # reads the SQLite file; test_postgres_store.py looks in PostgreSQL
def test_token_create_prints_once_and_stores_digest(tmp_path: Path) -> None:
    runner, app = CliRunner(), _app()
    r = runner.invoke(app, ["server", "token", "create", "carol", "--admin", "--data", str(tmp_path)])
    assert r.exit_code == 0, r.output
    token = r.stdout.splitlines()[0]
    assert token.startswith("pt_")
    assert token.encode() not in (tmp_path / "proctor.sqlite").read_bytes()
    r = runner.invoke(app, ["server", "token", "create", "carol", "--data", str(tmp_path)])
    assert r.exit_code != 0
