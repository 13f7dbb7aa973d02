"""Where the client's server and token come from (docs/server.md): arguments, then PROCTOR_SERVER /
PROCTOR_TOKEN, then the client config file, then the default server."""

from __future__ import annotations

from pathlib import Path

import pytest

from proctor.client import Client
from proctor.errors import InputError


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PROCTOR_SERVER", raising=False)
    monkeypatch.delenv("PROCTOR_TOKEN", raising=False)
    path = tmp_path / "client.yaml"
    path.write_text("server: http://127.0.0.1:9001/\ntoken: pt_file\n")
    return path


def _where(**kwargs: object) -> tuple[str, str | None]:
    client = Client(**kwargs)  # type: ignore[arg-type]
    client.close()
    return client.server, client.token


def test_the_file_is_used_when_nothing_else_is_given(config: Path) -> None:
    assert _where(config_path=config) == ("http://127.0.0.1:9001", "pt_file")


def test_the_environment_beats_the_file_and_an_empty_variable_is_unset(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCTOR_SERVER", "http://127.0.0.1:9002")
    monkeypatch.setenv("PROCTOR_TOKEN", "")
    assert _where(config_path=config) == ("http://127.0.0.1:9002", "pt_file")


def test_arguments_beat_everything_and_then_a_broken_file_is_not_read(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCTOR_TOKEN", "pt_env")
    config.write_text("server: [unclosed\n")
    assert _where(server="http://127.0.0.1:9003", token="pt_arg", config_path=config) == (
        "http://127.0.0.1:9003",
        "pt_arg",
    )
    with pytest.raises(InputError, match="cannot read client config"):
        _where(config_path=config)


def test_without_any_source_the_default_server_and_no_token(tmp_path: Path, config: Path) -> None:
    assert _where(config_path=tmp_path / "absent.yaml") == ("http://127.0.0.1:8080", None)
