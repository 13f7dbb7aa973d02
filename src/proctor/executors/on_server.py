"""What ``proctor serve`` does with a spec that asks for ``executor: {kind: ray}``.

A server runs such a job on the Ray cluster its admin configured (``ray_address`` in the server
settings): the job's ``proctor run`` gets ``--ray-address``. A server without one refuses the spec
at submission, naming ``executor``, rather than starting a private Ray inside a job's sandbox.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proctor.errors import InputError


def wants_ray(spec: Mapping[str, Any]) -> bool:
    executor = spec.get("executor")
    return isinstance(executor, Mapping) and executor.get("kind") == "ray"


def check_executor(spec: Mapping[str, Any], ray_address: str | None) -> bool:
    """True when the job runs on Ray; ``InputError`` (a 400) when this server has no cluster."""
    if not wants_ray(spec):
        return False
    if ray_address is None:
        raise InputError(
            "executor: this server runs jobs on no Ray cluster, so executor kind 'ray' is not available",
            hint="drop the executor key (the job then runs locally), or ask the admin to set ray_address",
        )
    return True


def check_ray_address(ray_address: str | None, *, sandboxed: bool) -> None:
    """Refuse at startup a ``ray_address`` this server's jobs could not use.

    A sandboxed job's driver joins through Ray Client (``ray://HOST:PORT``): a GCS address
    (``HOST:PORT``) makes the driver look for a raylet on its own machine through the process table
    and ``/tmp/ray``, which the sandbox hides. Without the sandbox both forms work.
    """
    if ray_address is None:
        return
    if not ray_address.strip() or any(c.isspace() for c in ray_address):
        raise InputError(f"ray_address {ray_address!r} is not an address (ray://HOST:PORT or HOST:PORT)")
    if sandboxed and not ray_address.startswith("ray://"):
        raise InputError(
            f"ray_address {ray_address!r}: a sandboxed job joins a Ray cluster only through Ray Client; "
            "give its client server as ray://HOST:PORT (ray start --head opens it on port 10001)"
        )


def ray_argv(request: Mapping[str, Any], ray_address: str | None) -> list[str]:
    """The flags a stored Ray job's ``proctor run`` gets (checked again: settings may have changed)."""
    if not request.get("ray"):
        return []
    if ray_address is None:
        raise InputError("executor: this server no longer has a Ray cluster (ray_address) for this job")
    return ["--ray-address", ray_address]


def ray_env(request: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a Ray job's environment needs: the cluster's auth token (Ray 2.x clusters require one).

    Read from the server's own ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``
    at each start, and handed over in the job's environment as its API keys are (the sandboxed job
    sees neither the server's environment nor its home): never in ``proctor run``'s argv, the job's
    record or a file of the job.
    """
    if not request.get("ray"):
        return {}
    environ = os.environ if environ is None else environ
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    token = environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        with contextlib.suppress(OSError):
            token = path.read_text(encoding="utf-8").strip()
    if token:  # a joining driver looks for a token only when told the cluster wants one
        env.update(RAY_AUTH_TOKEN=token, RAY_AUTH_MODE="token")
    return env
