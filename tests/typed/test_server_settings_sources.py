"""Where ``proctor serve``'s settings come from (docs/server.md): flags > ``PROCTOR_DATABASE_URL`` >
the config file > defaults, read with pydantic-settings (issue 10). No other variable is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proctor.errors import InputError
from proctor.server.settings import ServerSettings, load_settings


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PROCTOR_DATABASE_URL", raising=False)
    path = tmp_path / "server.yaml"
    path.write_text("slots: 3\ndatabase-url: sqlite:///from-file.db\ntunnel_grace: 12\n")
    return path


def test_the_file_beats_the_defaults(config: Path) -> None:
    settings = load_settings(config)
    assert type(settings) is ServerSettings
    assert (settings.slots, settings.database_url, settings.tunnel_grace, settings.queue_max) == (
        3,
        "sqlite:///from-file.db",
        12,
        100,
    )


def test_the_environment_beats_the_file_and_a_flag_beats_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCTOR_DATABASE_URL", "sqlite:///from-env.db")
    assert load_settings(config).database_url == "sqlite:///from-env.db"
    assert load_settings(config, database_url="sqlite:///flag.db", slots=None).database_url == "sqlite:///flag.db"
    assert load_settings(config, slots=5).slots == 5


def test_an_empty_variable_is_unset_and_no_other_variable_is_read(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCTOR_DATABASE_URL", "")
    monkeypatch.setenv("PROCTOR_SLOTS", "7")
    monkeypatch.setenv("PROCTOR_OPEN", "true")
    settings = load_settings(config)
    assert (settings.database_url, settings.slots, settings.open) == ("sqlite:///from-file.db", 3, False)


def test_bad_files_and_values_are_one_input_error(config: Path) -> None:
    config.write_text("slots: 0\nno_such_setting: 1\n")
    with pytest.raises(InputError, match=r"slots: .*; no_such_setting: Extra inputs are not permitted"):
        load_settings(config)
    config.write_text("- a list\n")
    with pytest.raises(InputError, match="must be a YAML mapping"):
        load_settings(config)
    with pytest.raises(InputError, match="cannot read server config"):
        load_settings(config.with_name("absent.yaml"))


def test_the_cli_takes_the_store_url_from_the_environment(tmp_path: Path) -> None:
    """``proctor server token create`` as a user runs it: the variable names the store it writes."""
    store = tmp_path / "from-env.sqlite"
    env = {**os.environ, "PROCTOR_DATABASE_URL": f"sqlite:///{store}"}
    command = [sys.executable, "-m", "proctor", "server", "token", "create", "alice", "--data", str(tmp_path / "d")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert store.is_file() and not (tmp_path / "d" / "proctor.sqlite").exists()
