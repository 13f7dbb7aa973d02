"""The Python client of a proctor server; the CLI's remote commands are thin wrappers around it.

Where the server and token come from, first match wins: arguments, then ``PROCTOR_SERVER`` /
``PROCTOR_TOKEN``, then ``~/.config/proctor/client.yaml`` (``server:`` and ``token:``). Server
errors come back as the same ``ProctorError`` classes the server raised, so callers (and the CLI's
one error printer) handle local and remote failures alike. API keys are only ever sent in request
bodies, never in URLs, and never printed.
"""

from __future__ import annotations

import base64
import builtins
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import yaml
from pydantic import BaseModel, ValidationError

from proctor import _yaml
from proctor._files import ensure_directory
from proctor.api_models import ArtifactInfo, BatchView, Health, JobView, LogPage, ServerInfo, SubmitResponse
from proctor.client_config import ClientSettings
from proctor.errors import (
    AuthenticationError,
    ConflictError,
    InputError,
    NotFoundError,
    PermissionDeniedError,
    ProctorError,
    QueueFullError,
    QuotaExceededError,
    ServerUnavailableError,
)


@dataclass(slots=True)
class LogEvent:
    """One SSE event of a followed log: ``log`` (a chunk of whole lines) or ``end`` (final state)."""

    event: str
    data: str
    id: int | None


_Answer = TypeVar("_Answer", bound=BaseModel)


def _typed(model: type[_Answer], data: Any, what: str) -> _Answer:
    """``data`` as ``model``; an answer of another shape is the server's fault, said in one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProctorError(
            f"the server's answer to {what} is not a {model.__name__}: {exc.errors()[0]['msg']}",
            hint="is this a proctor server of a compatible version?",
        ) from None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message = str(body.get("error") or body)
        hint = body.get("hint")
    except (ValueError, AttributeError):
        message, hint = response.text[:500] or response.reason_phrase, None
    status = response.status_code
    retry_after = float(response.headers.get("retry-after", "0") or 0)
    if status == 429:
        raise QuotaExceededError(message, retry_after=retry_after, hint=hint)
    if status == 503:
        raise QueueFullError(message, retry_after=retry_after, hint=hint)
    classes: dict[int, type[ProctorError]] = {
        400: InputError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        409: ConflictError,
        422: InputError,
    }
    if status >= 500:  # a proxy in front of a restarting server, or the server's own failure
        raise ServerUnavailableError(f"server: {message}", hint=hint)
    raise classes.get(status, ProctorError)(message, hint=hint)


class Client:
    """Talks to one proctor server as one user."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        config_path: Path | None = None,
    ) -> None:
        settings = ClientSettings.load(server, token, config_path=config_path)
        self.server, self.token = settings.server, settings.token
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"cannot reach the proctor server at {self.server}: {exc}",
                hint="check --server / PROCTOR_SERVER and that `proctor serve` is running",
            ) from None
        _raise_for(response)
        return response

    def _answer(self, model: type[_Answer], method: str, path: str, **kwargs: Any) -> _Answer:
        """The server's JSON answer as ``model``."""
        return _typed(model, self._request(method, path, **kwargs).json(), f"{method} {path}")

    # server ---------------------------------------------------------------------------------------

    def health(self) -> Health:
        return self._answer(Health, "GET", "/health")

    def server_info(self) -> ServerInfo:
        return self._answer(ServerInfo, "GET", "/v1/server")

    # jobs -----------------------------------------------------------------------------------------

    def submit(
        self,
        spec: Path | None = None,
        *,
        template: str | None = None,
        params: dict[str, str] | None = None,
        models: dict[str, dict[str, Any]] | None = None,
        private: bool = False,
        private_roles: list[str] | None = None,
        job_id: str | None = None,
        limit: int | None = None,
        concurrency: int | None = None,
        retry_errors: bool = False,
        timeout: float | None = None,
        dataset: str | None = None,
        batch_id: str | None = None,
    ) -> SubmitResponse:
        """Submit a spec file (its dataset is uploaded from beside it) or a command template.

        ``models`` maps roles to ``{base_url, model, api_key}``; in public mode a role whose spec
        names ``api_key_env`` gets that variable's value from this machine's environment.
        """
        body: dict[str, Any] = {
            "kind": "command" if template else "proctor",
            "models": {role: {k: v for k, v in m.items() if v is not None} for role, m in (models or {}).items()},
            "private": private,
            "retry_errors": retry_errors,
        }
        for key, value in (
            ("template", template),
            ("params", params),
            ("private_roles", private_roles),
            ("job_id", job_id),
            ("limit", limit),
            ("concurrency", concurrency),
            ("timeout", timeout),
            ("dataset", dataset),
            ("batch_id", batch_id),
        ):
            if value is not None:
                body[key] = value
        if spec is not None:
            body.update(
                _spec_upload(
                    spec,
                    body["models"],
                    private_roles=(private_roles or ["subject"]) if private else [],
                    named_dataset=dataset is not None,
                )
            )
        return self._answer(SubmitResponse, "POST", "/v1/jobs", json=body)

    def status(self, job_id: str) -> JobView:
        return self._answer(JobView, "GET", f"/v1/jobs/{job_id}")

    def list(self, *, all_users: bool = False, batch: str | None = None) -> builtins.list[JobView]:
        params: dict[str, Any] = {"all": all_users} if batch is None else {"all": all_users, "batch": batch}
        jobs = self._request("GET", "/v1/jobs", params=params).json()["jobs"]
        return [_typed(JobView, job, "GET /v1/jobs") for job in jobs]

    def batch(self, batch_id: str, *, all_users: bool = False) -> BatchView:
        """The caller's jobs of one batch (``jobs``), a count per state and whether all finished."""
        return self._answer(BatchView, "GET", f"/v1/batches/{quote(batch_id, safe='')}", params={"all": all_users})

    def cancel(self, job_id: str) -> JobView:
        return self._answer(JobView, "POST", f"/v1/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def resume(
        self, job_id: str, *, models: dict[str, dict[str, Any]] | None = None, retry_errors: bool = False
    ) -> SubmitResponse:
        body = {"models": models or {}, "retry_errors": retry_errors}
        return self._answer(SubmitResponse, "POST", f"/v1/jobs/{job_id}/resume", json=body)

    def wait(self, job_id: str, *, poll: float = 0.5, timeout: float | None = None) -> JobView:
        """Block until the job reaches a final state (follows the log stream, so no busy polling)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.follow(job_id, deadline=deadline):
            pass
        return self.status(job_id)

    # logs -----------------------------------------------------------------------------------------

    def logs(self, job_id: str, *, offset: int = 0, limit: int = 1024 * 1024) -> LogPage:
        return self._answer(LogPage, "GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset, "limit": limit})

    def follow(
        self,
        job_id: str,
        *,
        last_event_id: int | None = None,
        reconnects: int = 20,
        deadline: float | None = None,
    ) -> Iterator[LogEvent]:
        """Yield log events until the job ends; reconnects (``Last-Event-ID``) if the stream drops."""
        last = last_event_id
        attempts = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/logs",
                    params={"follow": 1},
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    for event in _parse_sse(response.iter_lines()):
                        attempts = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                        if event.event == "end":
                            return
                        if deadline is not None and time.monotonic() > deadline:
                            raise ProctorError(f"gave up following job {job_id}: deadline passed")
            except httpx.TransportError:
                attempts += 1
                if attempts > reconnects:
                    raise ProctorError(f"lost the log stream of job {job_id} {reconnects} times; giving up") from None
                time.sleep(min(5.0, 0.2 * 2**attempts))

    # results --------------------------------------------------------------------------------------

    def artifacts(self, job_id: str) -> builtins.list[ArtifactInfo]:  # `list` is a method here
        return [_typed(ArtifactInfo, item, "GET artifacts") for item in self._artifact_listing(job_id)]

    def _artifact_listing(self, job_id: str) -> builtins.list[Any]:
        """The listing as the server sent it: ``download_results`` judges each path itself, so a
        hostile entry is refused by name rather than failing validation."""
        return builtins.list(self._request("GET", f"/v1/jobs/{job_id}/artifacts").json())

    def download(self, job_id: str, path: str, dest: Path) -> Path:
        """Stream one artifact to ``dest``, a file path the caller chose."""
        return self._stream_to(_artifact_url(job_id, path), dest)

    def download_tar(self, job_id: str, dest: Path) -> Path:
        return self._stream_to(f"/v1/jobs/{job_id}/results.tar.gz", dest)

    def _stream_to(self, url: str, dest: Path, *, inside: Path | None = None) -> Path:
        """Stream ``url`` to ``dest``; with ``inside``, never to a place outside that directory."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            if inside is None:
                ensure_directory(dest.parent, what="download directory")
            else:
                _make_folders_inside(inside, dest)
                flags |= os.O_NOFOLLOW  # a symlink in place of the file itself is refused too
        except OSError as exc:
            raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
        with self._http.stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            try:
                fd = os.open(dest, flags, 0o644)
            except OSError as exc:
                raise InputError(f"cannot write {dest}: {exc.strerror or exc}") from None
            with open(fd, "wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        return dest

    def download_artifact(self, job_id: str, path: str, out: Path) -> Path:
        """One artifact into ``out`` at its own relative path (``out/eval_stats.json`` stays so)."""
        return self._stream_to(_artifact_url(job_id, path), artifact_target(out, path), inside=out)

    def download_results(self, job_id: str, out: Path) -> builtins.list[Path]:
        """Every artifact of the job into ``out``, each at its own relative path.

        The server's listing is checked as a whole first: one path that would land outside
        ``out`` (``..``, absolute, a drive letter, a backslash) means the server is broken or
        hostile, so nothing is written and the error names the path.
        """
        listed = [item.get("path") if isinstance(item, dict) else item for item in self._artifact_listing(job_id)]
        try:
            targets = {str(rel): artifact_target(out, rel) for rel in listed}  # strings once checked
        except PermissionDeniedError as exc:
            message = f"the server's artifact list: {exc.message}; nothing was downloaded"
            raise PermissionDeniedError(message, hint=exc.hint) from None
        return [self._stream_to(_artifact_url(job_id, rel), target, inside=out) for rel, target in targets.items()]


def _artifact_url(job_id: str, path: str) -> str:
    """The download URL of one artifact; ``?`` or ``#`` in its name must not end the path."""
    return f"/v1/jobs/{job_id}/artifacts/{quote(path, safe='/')}"


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def artifact_target(out: Path, relative: object) -> Path:
    """Where artifact ``relative`` goes under ``out``; ``PermissionDeniedError`` if it would leave it.

    Why so strict: the path comes from the server, and a client must not let any server write
    outside the directory it was given. Only plain relative POSIX paths pass: no absolute paths,
    drive letters, backslashes, control characters, or empty, ``.`` or ``..`` segments.
    """
    if not isinstance(relative, str):
        raise PermissionDeniedError(f"refusing artifact path {relative!r}: not a string")
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or _WINDOWS_DRIVE.match(relative)
        or "\\" in relative
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in relative)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise PermissionDeniedError(
            f"refusing artifact path {relative!r}: it would land outside {out}",
            hint="only plain relative paths are downloaded; is this the proctor server you meant?",
        )
    return out.joinpath(*parts)


def _make_folders_inside(out: Path, dest: Path) -> None:
    """Create ``dest``'s folders under ``out`` one by one, refusing any that is a symbolic link.

    Checked before each folder is used, not after ``mkdir(parents=True)``, which would already
    have created folders wherever a planted link pointed.
    """
    ensure_directory(out, what="download directory")
    folder = out
    for part in dest.relative_to(out).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise PermissionDeniedError(f"refusing to write {dest}: {folder} is a symbolic link")
        folder.mkdir(exist_ok=True)
    if not dest.parent.resolve().is_relative_to(out.resolve()):
        raise PermissionDeniedError(f"refusing to write {dest}: its folder leads outside {out}")


def _parse_sse(lines: Iterator[str]) -> Iterator[LogEvent]:
    data: list[str]
    event_id: int | None
    event, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield LogEvent(event=event, data="\n".join(data), id=event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and value.isdigit():
            event_id = int(value)


def _spec_upload(
    spec_path: Path, models: dict[str, dict[str, Any]], *, private_roles: list[str], named_dataset: bool
) -> dict[str, Any]:
    """Read the spec and the files it names (dataset, pool files), relative to the spec file."""
    try:
        text = spec_path.read_text(encoding="utf-8")
        spec = _yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read spec {spec_path}: {exc}") from None
    if not isinstance(spec, dict):
        raise InputError(f"{spec_path} must be a YAML mapping")
    base = spec_path.parent
    files: dict[str, dict[str, str]] = {}
    names: list[tuple[str, str]] = []
    dataset = spec.get("dataset")
    if not named_dataset and isinstance(dataset, dict) and isinstance(dataset.get("path"), str):
        names.append(("dataset.path", dataset["path"]))
    names += _include_path_files(spec, base)
    stripped = False
    for role, cfg in (spec.get("models") or {}).items():
        if not isinstance(cfg, dict):
            continue
        if role in private_roles:
            # The submitter's own endpoint stays on this machine: the agent calls it, the server
            # only ever sees the model name.
            for key in PRIVATE_LOCAL_KEYS:
                if key in cfg:
                    del cfg[key]
                    stripped = True
            continue
        if isinstance(cfg.get("pool_file"), str) and role not in models:
            names.append((f"models.{role}.pool_file", cfg["pool_file"]))
        env_name = cfg.get("api_key_env")
        entry = models.setdefault(role, {}) if isinstance(env_name, str) else models.get(role)
        if isinstance(env_name, str) and role not in private_roles and entry is not None and "api_key" not in entry:
            value = os.environ.get(env_name)
            if value:
                entry["api_key"] = value
        if entry == {}:
            models.pop(role, None)
    for where, rel in names:
        path = base / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise InputError(f"{where} {rel!r} must be a path relative to the spec, inside its folder")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {where} {path}: {exc}") from None
        try:
            files[Path(rel).as_posix()] = {"content": raw.decode("utf-8"), "encoding": "utf-8"}
        except UnicodeDecodeError:
            files[Path(rel).as_posix()] = {"content": base64.b64encode(raw).decode(), "encoding": "base64"}
    if stripped:
        text = yaml.safe_dump(spec, sort_keys=False)
    return {"spec": text, "files": files}


def _include_path_files(spec: dict[str, Any], base: Path) -> list[tuple[str, str]]:
    """An ``lm_eval:`` spec's local ``include_path`` directory: every file in it is uploaded (task
    YAML and its data). A name that is not a local directory is sent as it is: the server may
    have a task directory registered under it."""
    section = spec.get("lm_eval")
    include = section.get("include_path") if isinstance(section, dict) else None
    if not isinstance(include, str) or not (base / include).is_dir():
        return []
    root = base / include
    return [
        ("lm_eval.include_path", path.relative_to(base).as_posix())
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(root).parts
    ]


PRIVATE_LOCAL_KEYS = ("base_url", "replicas", "pool_file", "api_key_env")
"""Spec settings of a private role that describe the submitter's own endpoint: never uploaded."""


def spec_local_endpoints(spec_path: Path, roles: list[str]) -> dict[str, dict[str, Any]]:
    """``{role: {"base_url", "api_key_env", "model"}}`` as the spec names them, for private roles.

    What ``proctor submit --private`` (and ``resume``) fall back on when no ``--base-url`` is
    given: a spec that runs locally already says where its model is and which variable holds
    its key. Values are read here and never sent to the server.
    """
    try:
        spec = _yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read spec {spec_path}: {exc}") from None
    models = spec.get("models") if isinstance(spec, dict) else None
    found: dict[str, dict[str, Any]] = {}
    for role in roles:
        cfg = models.get(role) if isinstance(models, dict) else None
        if not isinstance(cfg, dict):
            continue
        entry = {k: cfg[k] for k in ("base_url", "api_key_env", "model") if isinstance(cfg.get(k), str) and cfg[k]}
        if not entry.get("base_url") and isinstance(cfg.get("replicas"), list) and len(cfg["replicas"]) == 1:
            replica = cfg["replicas"][0]
            if isinstance(replica, str):
                entry["base_url"] = replica
        found[role] = entry
    return found
