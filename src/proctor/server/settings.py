"""The server's settings: one validated model, filled from defaults < config file < CLI flags.

Command templates, registered datasets and cleanup hooks live only in the admin's config file:
they are what decides which programs the server may run, so no request can add to them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from proctor import _yaml
from proctor._validation import StrictModel, problems
from proctor.errors import InputError
from proctor.sandbox import DEFAULT_TMP_MB
from proctor.server.lmeval_policy import LmEvalServerSettings
from proctor.server.uids import DEFAULT_LOCK_DIR

PARAM_PATTERN_DEFAULT = r"^[A-Za-z0-9_.:/@+=,-]{0,256}$"
"""What a template parameter may contain unless the template says otherwise: no spaces, no quotes."""
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}$"
"""What ``{model}`` may be: a model name, with no ``,``, ``=`` or spaces that would add keys to an
argument such as lm-eval's ``--model_args model={model},...``."""
DATABASE_URL_ENV = "PROCTOR_DATABASE_URL"
"""The job store's URL from the environment: below ``--database-url``, above the config file."""
BASE_URL_PATTERN = r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$"
"""What ``{base_url}`` may be: scheme, host, port and path only (no query, no ``,`` or ``=``)."""


def _default_cleanup_hooks() -> list[list[str] | str]:
    return ["docker"]


class TemplateParam(StrictModel):
    """One placeholder a client fills in a command template."""

    pattern: str = PARAM_PATTERN_DEFAULT
    """Regular expression the whole value must match (the value becomes one argv element)."""
    default: str | None = None
    """Used when the client gives no value; without a default the parameter is required."""
    allow_dash: bool = False
    """May a value start with ``-``? Off by default: a value such as ``--output_path=/x`` would
    otherwise become an option of the program when it is a whole argv element."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value


class CommandTemplate(StrictModel):
    """An admin-registered program a ``command`` job runs, with ``{placeholders}`` in its argv.

    Built-in placeholders: ``{job_id}``, ``{job_dir}``, ``{out_dir}``, ``{python}``, ``{model}``
    (``MODEL_PATTERN``), ``{base_url}`` (``BASE_URL_PATTERN``). Values are substituted per argv
    element, never through a shell.
    """

    argv: list[str] = Field(min_length=1)
    params: dict[str, TemplateParam] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    description: str | None = None


class SandboxSettings(StrictModel):
    """The server's ceilings for every job and every python-tool call, and what plugins it trusts.

    A submission may lower a ceiling (its ``limits``, a python tool's options), never raise it.
    """

    enabled: bool = True
    """``False`` only with ``proctor serve --no-sandbox`` (a trusted single-user machine)."""
    uid: int = Field(default=62000, ge=1, le=2**31 - 2)
    """First uid of the range jobs run as when the server runs as root. Each running job gets a
    uid of its own, which no other job on this host (of this server or another) holds and which
    owns no process, so no job's processes count against another's RLIMIT_NPROC (see
    ``server/uids.py``). Otherwise jobs keep the server's uid, inside a user namespace."""
    uids: int = Field(default=1000, ge=1, le=1_000_000)
    """How many uids the range has (``uid`` … ``uid + uids - 1``); servers on one host may share it."""
    uid_lock_dir: Path = DEFAULT_LOCK_DIR
    """Host-wide directory of the uids' lock files (root only): every server on the host must use
    the same one for the same range."""
    memory_mb: int = Field(default=8192, ge=64)
    """Address-space rlimit of every process of a job (RLIMIT_AS)."""
    processes: int = Field(default=512, ge=8)
    """RLIMIT_NPROC: processes and threads of the job's uid; also the job's pids cgroup ceiling."""
    job_memory_mb: int | None = Field(default=None, ge=64)
    """Memory of the whole job (every process, memfd and shm pages included), held by a memory
    cgroup (see ``cgroups``); ``None``: the same as ``memory_mb``."""
    cgroups: Literal["auto", "required", "off"] = "auto"
    """Per-job cgroups: ``auto`` uses them when the host allows (otherwise one warning at start and
    rlimits only), ``required`` refuses to start without them, ``off`` never uses them."""
    file_size_mb: int = Field(default=8192, ge=1)
    """RLIMIT_FSIZE: the largest file a job may write."""
    open_files: int = Field(default=4096, ge=64)
    """RLIMIT_NOFILE per process."""
    tmp_mb: int = Field(default=DEFAULT_TMP_MB, ge=1)
    """Size of a job's private ``/tmp`` (also its ``HOME``) in MiB. It is a tmpfs: memory that no
    rlimit counts, so it needs a bound of its own; past it a write fails with ENOSPC."""
    readable: list[Path] = Field(default_factory=list)
    """Extra paths every job may read (read-only), e.g. a models or tools directory."""
    plugins: list[str] = Field(default_factory=list)
    """Plugin code a spec may name: dotted solver/scorer types and custom tool ``path`` values,
    exactly as written in a spec. The code must be installed where jobs can read it."""
    base_dirs: list[str] = Field(default_factory=list)
    """``solver.base_dir`` values a spec may give (otherwise the key is refused)."""
    tool_interpreters: list[str] = Field(default_factory=list)
    """Interpreters a python tool may name with ``interpreter`` (otherwise refused)."""
    tool_network: bool = False
    """Let a spec give the python tool ``network: true``."""
    tool_timeout: float = Field(default=300.0, gt=0)
    """Ceiling of a python tool's ``timeout`` (seconds)."""
    tool_memory_mb: int = Field(default=4096, ge=16)
    """Ceiling of a python tool's ``memory_mb`` (a spec's ``null``, unlimited, is refused)."""

    def ceiling(self, key: str) -> int:
        """The server's ceiling for a submission's ``limits.KEY``."""
        if key == "job_memory_mb":
            return self.job_memory_mb or self.memory_mb
        return int(getattr(self, key))


class ServerSettings(StrictModel):
    """Everything ``create_app`` needs; ``proctor serve`` builds it from flags and the config file."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path("proctor-data")
    database_url: str | None = None
    """SQLAlchemy URL of the job store; default ``sqlite:///DATA/proctor.sqlite``. PostgreSQL works."""
    slots: int = Field(default=1, ge=1, le=1024)
    queue_max: int = Field(default=100, ge=0)
    job_timeout: float = Field(default=240 * 60, gt=0)
    """Seconds a job may run before its whole process group is killed (state ``timed_out``)."""
    open: bool = False
    """Public demo mode: no token needed, clients are identified by IP address."""
    rate_limit: str | None = None
    """Submissions per user (or IP) and window, e.g. ``3/24h``; admins are exempt."""
    token_cache_seconds: float = Field(default=10.0, ge=0)
    """How long a checked token is trusted without asking the store again: a revoked token stops
    working within this many seconds on a running server."""
    kill_grace: float = Field(default=5.0, ge=0)
    """Seconds between SIGTERM and SIGKILL of a job's process group."""
    log_poll_interval: float = Field(default=0.1, gt=0)
    """How often one tail task per running job looks for new log bytes (shared by all followers)."""
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """Largest request body: 413 from ``Content-Length``, or as soon as a streamed body passes it."""
    max_upload_files: int = Field(default=1000, ge=0)
    """Files one submission may upload (each is a file created in the job directory)."""
    max_job_disk_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    """Bytes of files a submission may leave in its job directory: the decoded uploads, plus what
    the directory already holds when a submission resumes a job."""
    max_connections: int = Field(default=1000, ge=8, le=1_000_000)
    """Open client connections. Past it the longest-idle connection (no request in progress) is
    closed, or the new one when every connection is busy. Lowered at start to fit the open-files
    limit (less 128 for the store, logs and jobs)."""
    header_timeout: float = Field(default=10.0, gt=0, le=3600)
    """Seconds a connection has to send a request's headers (from connecting, or from the end of
    its previous answer) before it is closed."""
    max_head_bytes: int = Field(default=65536, ge=4096, le=16 * 1024 * 1024)
    """Largest request head (request line and headers): past it the answer is 431 and the
    connection is closed."""
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    """Seconds a request body may pause between two pieces before the answer is 408."""
    body_deadline: float = Field(default=60.0, gt=0, le=86400)
    """Seconds a request body may take, plus one second per ``body_min_rate`` bytes received; a
    body later than that (a slowloris upload trickling bytes) is 408 and its connection closed."""
    body_min_rate: int = Field(default=65536, ge=1)
    """Bytes per second that earn a body one more second past ``body_deadline`` (64 KiB/s: a
    512 MiB upload may take 2 h 17 min; a byte a second is cut off after about a minute)."""
    send_timeout: float = Field(default=60.0, gt=0, le=3600)
    """Seconds an answer may wait for a client that does not read it (the server's send buffer
    full, and less than 48 KiB of it taken since); then the connection is cut."""
    keep_alive_timeout: int = Field(default=5, ge=1, le=3600)
    """Seconds an idle keep-alive connection stays open after an answer."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses (IPs or CIDR networks) of reverse proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed. Default none: the client is the socket's peer."""
    max_queued_per_user: int | None = Field(default=None, ge=1)
    """Queued jobs one user (or IP) may have at once; default half of ``queue_max`` (at least 1).
    Admins are exempt."""
    metrics_require_token: bool = False
    """When true, ``/metrics`` needs a valid token (``proctor server token create prometheus``)."""
    templates: dict[str, CommandTemplate] = Field(default_factory=dict)
    datasets: dict[str, Path] = Field(default_factory=dict)
    """Named dataset files on the server that a spec may use instead of uploading one."""
    cleanup_hooks: list[list[str] | str] = Field(default_factory=_default_cleanup_hooks)
    """Run after a cancel/timeout: argv templates (``{job_id}``, ``{job_dir}``) or ``"docker"``,
    which removes containers labelled ``proctor.job=<id>`` when a working docker is present."""
    hook_timeout: float = Field(default=30.0, gt=0)
    ray_address: str | None = None
    """Ray cluster (``HOST:PORT`` of its GCS) that jobs with ``executor: {kind: ray}`` run on; without
    one such specs are refused (400 naming ``executor``). See docs/ray.md."""
    internal_host: str = "127.0.0.1"
    """Host the job processes use to reach this server (private-mode model facade)."""
    retry_after_default: float = Field(default=60.0, gt=0)
    tunnel_grace: float = Field(default=30.0, gt=0, le=86400)
    """Private mode: seconds without any tunnel client before a job is shown ``waiting_for_tunnel``."""
    tunnel_request_deadline: float = Field(default=900.0, gt=0, le=7 * 86400)
    """Private mode: seconds one model call may wait for the tunnel and the submitter's model
    before the job gets a 503/504 for it. Private roles' ``request_timeout`` is raised to match."""
    tunnel_max_inflight: int = Field(default=256, ge=1, le=100_000)
    """Private mode: model calls forwarded at once per job; more wait (backpressure, not failure)."""
    lease_seconds: float = Field(default=30.0, ge=1, le=86400)
    """Fleet: a running job's lease. Its server renews it every quarter of this; when it has not for
    this long, another server of a shared store takes the job over (see ``server/leases.py``)."""
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    lm_eval: LmEvalServerSettings = Field(default_factory=LmEvalServerSettings)
    """``lm_eval`` jobs: registered task directories, allowed built-in tasks, ``env_vars`` allow-list."""
    """Where every job runs (bubblewrap) and its ceilings: see docs/server.md, Security model."""

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted proxy {entry!r} is not an IP address or network") from None
        return value

    @property
    def queued_per_user(self) -> int:
        """The per-user queue cap in force: the setting, or half the queue (at least 1)."""
        return self.max_queued_per_user if self.max_queued_per_user is not None else max(1, self.queue_max // 2)

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'proctor.sqlite').resolve()}"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate_limit(text: str) -> tuple[int, float]:
    """``N/<number><s|m|h|d>`` (``3/24h``, ``10/1d``, ``5/30m``) → (count, window seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd])\s*", text)
    if not match or int(match.group(1)) < 1:
        raise InputError(f"rate limit {text!r}: expected N/WINDOW such as 3/24h, 10/1d or 5/30m")
    amount = float(match.group(2) or 1)
    if amount <= 0:
        raise InputError(f"rate limit {text!r}: the window must be longer than zero")
    return int(match.group(1)), amount * _UNITS[match.group(3)]


def load_settings(config_file: Path | None, **overrides: Any) -> ServerSettings:
    """Flags (``overrides`` that are not None) > ``PROCTOR_DATABASE_URL`` > config file (YAML) > defaults.

    The environment names only the store's URL (docs/server.md): every other setting comes from
    flags or the file, so a stray ``PROCTOR_*`` variable cannot, say, open the server.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        loaded = _LoadedServerSettings(_config_file=config_file, **given)
    except ValidationError as exc:
        raise InputError(f"invalid server settings: {problems(exc.errors())}") from None
    return ServerSettings.model_validate(dict(loaded))


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("proctor_server_config_file", default=None)


class _LoadedServerSettings(BaseSettings, ServerSettings):
    """``ServerSettings`` read through ``pydantic-settings``: the sources above, in that order."""

    model_config = SettingsConfigDict(extra=StrictModel.model_config.get("extra"))  # unknown keys: refused

    def __init__(self, _config_file: Path | None = None, **given: Any) -> None:
        # The file's path is not a setting: it reaches settings_customise_sources beside the flags.
        token = _CONFIG_FILE.set(_config_file)
        try:
            super().__init__(**given)
        finally:
            _CONFIG_FILE.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _DatabaseUrlEnv(settings_cls), _ConfigFile(settings_cls, _CONFIG_FILE.get())


class _DatabaseUrlEnv(PydanticBaseSettingsSource):
    """``PROCTOR_DATABASE_URL``, the one setting the environment may give (an empty one is unset)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for the one variable

    def __call__(self) -> dict[str, Any]:
        url = os.environ.get(DATABASE_URL_ENV)
        return {"database_url": url} if url else {}


class _ConfigFile(PydanticBaseSettingsSource):
    """The admin's YAML config file: any setting, ``-`` or ``_`` in its keys."""

    def __init__(self, settings_cls: type[BaseSettings], config_file: Path | None) -> None:
        super().__init__(settings_cls)
        self._config_file = config_file

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        config_file = self._config_file
        if config_file is None:
            return {}
        try:
            loaded = _yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read server config {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"server config {config_file} must be a YAML mapping")
        return {str(k).replace("-", "_"): v for k, v in loaded.items()}
