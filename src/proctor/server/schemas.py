"""Request and response bodies of the job API (what ``/openapi.json`` documents).

API keys arrive as ``SecretStr`` so that no repr, log line or validation error ever prints them;
they are read once, into the job process's environment, and dropped from everything stored.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from proctor._validation import StrictModel
from proctor.api_models import (  # re-exported: the server's code names them from here
    ArtifactInfo,
    BatchView,
    Health,
    JobState,
    JobView,
    LogPage,
    ServerInfo,
    SubmitResponse,
)

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{7,63}$")
"""A client-chosen job id: 8-64 characters of the URL-safe base64 alphabet, not starting with ``-``
(the id is substituted into command templates, where a leading ``-`` would read as an option)."""
BATCH_ID_PATTERN = JOB_ID_RE.pattern
"""A batch id, chosen by the client: the same alphabet and length as a client-chosen job id."""
ROLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,4}$")


class ModelEndpoint(StrictModel):
    """Where one model role's requests go, and with which key (public mode)."""

    base_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s]+$")
    model: str | None = Field(default=None, min_length=1, max_length=256)
    api_key: SecretStr | None = Field(default=None)
    """Kept in the server's memory and the job process's environment only."""


class UploadedFile(StrictModel):
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"


class JobLimits(StrictModel):
    """Lower ceilings for this job's sandbox; each must be at most the server's (``sandbox.*``)."""

    memory_mb: int | None = Field(default=None, ge=64)
    job_memory_mb: int | None = Field(default=None, ge=64)
    processes: int | None = Field(default=None, ge=8)
    file_size_mb: int | None = Field(default=None, ge=1)
    open_files: int | None = Field(default=None, ge=64)
    tmp_mb: int | None = Field(default=None, ge=1)


class SubmitRequest(StrictModel):
    """A job submission: a task spec (kind ``proctor``; ``lm_eval`` for a spec with ``lm_eval:``)
    or a command template (kind ``command``)."""

    kind: Literal["proctor", "lm_eval", "command"] = "proctor"
    spec: str | None = Field(default=None, max_length=1_000_000)
    """The task spec's YAML text (kind ``proctor``)."""
    files: dict[str, UploadedFile] = Field(default_factory=dict)
    """Files placed next to the spec in the job directory (the dataset, a pool file)."""
    dataset: str | None = Field(default=None, max_length=128)
    """Name of a dataset registered on the server, used instead of an uploaded file."""
    template: str | None = Field(default=None, max_length=128)
    params: dict[str, str] = Field(default_factory=dict)
    models: dict[str, ModelEndpoint] = Field(default_factory=dict)
    private: bool = False
    private_roles: list[str] | None = None
    """Roles answered through the submitter's tunnel; default ``["subject"]`` when private."""
    job_id: str | None = None
    """Resume this job (same directory, same ledger) instead of starting a new one."""
    limit: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1, le=100_000)
    retry_errors: bool = False
    timeout: float | None = Field(default=None, gt=0, le=7 * 86400)
    limits: JobLimits | None = None
    """Lower the server's sandbox ceilings for this job (never raise them)."""
    batch_id: str | None = Field(default=None, pattern=BATCH_ID_PATTERN)
    """The batch this job belongs to (``proctor submit`` of several specs or models); the client
    chooses it, and ``GET /v1/batches/{id}`` lists the caller's jobs that carry it."""
    env_vars: dict[str, str] = Field(default_factory=dict)
    """Kind ``lm_eval``: environment variables for the job, only names the server's
    ``lm_eval.env_vars`` allows. Stored with the job: not for secrets."""

    @field_validator("models")
    @classmethod
    def _roles(cls, value: dict[str, ModelEndpoint]) -> dict[str, ModelEndpoint]:
        for role in value:
            if not ROLE_RE.match(role):
                raise ValueError(f"role name {role!r} must be a letter followed by letters, digits or _")
        return value

    @field_validator("private_roles")
    @classmethod
    def _private_roles(cls, value: list[str] | None) -> list[str] | None:
        for role in value or []:
            if not ROLE_RE.match(role):
                raise ValueError(f"role name {role!r} must be a letter followed by letters, digits or _")
        return value

    @field_validator("files")
    @classmethod
    def _file_names(cls, value: dict[str, UploadedFile]) -> dict[str, UploadedFile]:
        for name in value:
            if not FILE_NAME_RE.match(name) or ".." in name.split("/"):
                raise ValueError(f"file name {name!r} must be a plain relative path (letters, digits, . _ -)")
        return value


class ResumeRequest(StrictModel):
    """Re-supply what the server could not keep (API keys) and queue the job again."""

    models: dict[str, ModelEndpoint] = Field(default_factory=dict)
    retry_errors: bool = False


__all__ = [  # the response models are re-exported from proctor.api_models
    "ArtifactInfo",
    "BATCH_ID_PATTERN",
    "BatchView",
    "FILE_NAME_RE",
    "Health",
    "JOB_ID_RE",
    "JobLimits",
    "JobState",
    "JobView",
    "LogPage",
    "ModelEndpoint",
    "ROLE_RE",
    "ResumeRequest",
    "ServerInfo",
    "SubmitRequest",
    "SubmitResponse",
    "UploadedFile",
]
