"""The one exception hierarchy of proctor.

Every error a user can cause or meet is a ``ProctorError``. Each carries a message written for a
person (what was wrong and how to fix it), the process exit code the CLI uses for it and the HTTP
status the server answers with. Surfaces (CLI, server) catch ``ProctorError`` at their boundary and
render it once; anything else is a bug and keeps its traceback.

```text
ProctorError                      exit 1, HTTP 500
├── InputError                    exit 2, HTTP 400  bad spec, dataset, flag or request
│   ├── SpecError                                   task spec invalid (names the key)
│   ├── DatasetError                                dataset missing/unparseable/duplicate ids
│   ├── IncomparableRunError                        --out holds a run of another spec
│   └── TooLargeError             HTTP 413          an upload over the server's size or file caps
├── ModelError                                      a model call failed
│   ├── InfraError                                  connection, timeout, 5xx, 429 after retries
│   │                                               (kept apart from model outcomes, never "wrong")
│   ├── ContextOverflowError                        prompt too long: a model outcome, not infra
│   ├── BadRequestError                             other 4xx: not retried
│   └── ModelAbortError           exit 2            401/403/unknown model: stop the whole run
├── NoHealthyReplicaError         exit 2            no replica of a role answered at start
├── LaunchError                   exit 2            a launched model server did not come up
├── ToolError                                       a tool failed (reported back to the model)
├── NotFoundError                 HTTP 404
├── PermissionDeniedError         HTTP 403
├── AuthenticationError           HTTP 401
├── QuotaExceededError            HTTP 429          carries retry_after seconds
├── QueueFullError                HTTP 503          carries retry_after seconds
└── ConflictError                 HTTP 409
```
"""

from __future__ import annotations

from typing import Any, Literal

# The process exit codes of every proctor command, owned here so the engine that sets them, the CLI
# that raises them and the server that reads a job's code back all agree.
EXIT_OK = 0
"""Finished; every sample done."""
EXIT_SAMPLE_ERRORS = 1
"""Finished, but some samples errored (a server reports such a job as succeeded); for the commands
that follow a server job (``submit``, ``resume``): the job did not succeed."""
EXIT_BAD_INPUT = 2
"""Bad input (spec, dataset, flag): nothing was run that should be kept."""
CRASH_EXIT_CODE = 3
"""Exit code of a proctor command that crashed (an uncaught exception: a bug, or the job's memory
ceiling). Kept apart from 1 ("finished, some samples errored"), which a server reports as success."""
EXIT_INTERRUPTED = 130
"""Stopped by SIGINT/SIGTERM (128 + SIGINT, the shell's convention); a run resumes where it stopped."""

InfraErrorClass = Literal["connection", "timeout", "http_5xx", "rate_limited", "tool_crash", "tunnel"]
"""Why an infrastructure failure happened; stored in the ledger as the sample's error class."""


class ProctorError(Exception):
    """Base of every error proctor raises on purpose."""

    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InputError(ProctorError):
    """The user's input (spec, dataset, flags, request body) is wrong."""

    exit_code = EXIT_BAD_INPUT
    http_status = 400


class SpecError(InputError):
    """The task spec is invalid."""


class DatasetError(InputError):
    """The dataset cannot be read or is inconsistent."""


class IncomparableRunError(InputError):
    """The run directory holds a run whose results cannot be mixed with this spec's."""


class ModelError(ProctorError):
    """A model call failed."""

    error_class: str = "model_error"
    trajectory: list[dict[str, Any]] | None = None
    """Set by the agent loop when the failure ends a sample: its messages up to the failure, which
    the engine records as the error sample's trajectory (``traj_log_all.jsonl``)."""
    turns: list[dict[str, Any]] | None = None
    """Set with ``trajectory``: the per-turn records of the turns that completed."""


class InfraError(ModelError):
    """The infrastructure failed (not the model): never scored as a wrong answer."""

    def __init__(
        self,
        message: str,
        *,
        error_class: InfraErrorClass,
        attempts: int = 1,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.error_class = error_class
        self.attempts = attempts
        self.status = status


class ContextOverflowError(ModelError):
    """The prompt did not fit the model's context: a model outcome, recorded as such."""

    error_class = "context_overflow"
    status: int | None = None
    """The HTTP status the endpoint answered with, when there was one."""


class BadRequestError(ModelError):
    """The endpoint refused the request (4xx other than 429): retrying would not help."""

    error_class = "bad_request"

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ModelAbortError(ModelError):
    """Every further call would fail too (bad key, unknown model): stop the run at once."""

    exit_code = EXIT_BAD_INPUT
    error_class = "aborted"
    status: int | None = None


class NoHealthyReplicaError(ProctorError):
    """No replica of a role answered its health check at start."""

    exit_code = EXIT_BAD_INPUT


class LaunchError(ProctorError):
    """A model server proctor was asked to launch did not become healthy."""

    exit_code = EXIT_BAD_INPUT


class ExecutorError(ProctorError):
    """The executor's cluster failed (Ray could not be started or reached, its actors kept dying):
    the run stops, its ledger intact, and running it again resumes."""

    exit_code = 3


class ToolError(ProctorError):
    """A tool failed; the message goes back to the model instead of crashing the sample."""


class NotFoundError(ProctorError):
    """The thing asked for does not exist (or is not visible to the caller)."""

    http_status = 404


class PermissionDeniedError(ProctorError):
    """The caller is known but may not do this."""

    http_status = 403


class AuthenticationError(ProctorError):
    """The caller could not be identified."""

    http_status = 401


class QuotaExceededError(ProctorError):
    """The caller's quota is used up until ``retry_after`` seconds from now."""

    http_status = 429

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class QueueFullError(ProctorError):
    """The server's queue is full; try again after ``retry_after`` seconds."""

    http_status = 503

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ServerUnavailableError(ProctorError):
    """A proctor server could not be reached, or answered 5xx: it may be restarting, so a caller
    that polls (``--watch``) retries instead of giving up (the client raises it, the server never)."""

    http_status = 502


class ConflictError(ProctorError):
    """The request conflicts with the current state (e.g. cancelling a finished job)."""

    http_status = 409


class TooLargeError(InputError):
    """The request asks the server to hold more than it allows (bytes, files)."""

    http_status = 413
