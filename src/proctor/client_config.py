"""Where the client's server URL and user token come from, read with ``pydantic-settings``.

First match wins: the caller's arguments, then ``PROCTOR_SERVER`` / ``PROCTOR_TOKEN`` (an empty
variable counts as unset), then the client config file (``~/.config/proctor/client.yaml``:
``server:`` and ``token:``), then the default server. The file is YAML from outside, so it is
read with ``proctor._yaml.safe_load``, and only when an argument is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from proctor import _yaml
from proctor.errors import InputError

__all__ = ["CONFIG_PATH", "DEFAULT_SERVER", "ClientSettings", "load_client_config"]

CONFIG_PATH = Path("~/.config/proctor/client.yaml")
DEFAULT_SERVER = "http://127.0.0.1:8080"


def load_client_config(path: Path | None = None) -> dict[str, Any]:
    """The client config file's mapping ({} when there is none); a broken file is an ``InputError``."""
    path = (path or CONFIG_PATH).expanduser()
    if not path.is_file():
        return {}
    try:
        data = _yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read client config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"client config {path} must be a mapping with 'server' and 'token'")
    return data


class ClientSettings(BaseSettings):
    """The server to talk to and the user token to talk with."""

    model_config = SettingsConfigDict(env_prefix="PROCTOR_", env_ignore_empty=True, extra="ignore")

    server: str = DEFAULT_SERVER
    token: str | None = None
    config_path: Path | None = None
    """The client config file to read instead of ``CONFIG_PATH`` (an argument, never from the environment)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        return init_settings, env_settings, _ClientFile(settings_cls, given)

    @classmethod
    def load(
        cls, server: str | None = None, token: str | None = None, *, config_path: Path | None = None
    ) -> ClientSettings:
        """Arguments that are None (or empty) fall through to the environment, then the file."""
        given: dict[str, Any] = {"server": server or None, "token": token or None, "config_path": config_path}
        settings = cls(**{k: v for k, v in given.items() if v is not None})
        return settings.model_copy(update={"server": settings.server.rstrip("/")})


class _ClientFile(PydanticBaseSettingsSource):
    """The config file, read only when an argument is missing (a broken file then still stops us)."""

    def __init__(self, settings_cls: type[BaseSettings], given: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._given = given

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        if self._given.get("server") and self._given.get("token"):
            return {}
        data = load_client_config(self._given.get("config_path"))
        return {k: data[k] for k in ("server", "token") if data.get(k)}
