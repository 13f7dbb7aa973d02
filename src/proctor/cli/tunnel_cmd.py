"""``proctor tunnel JOB --model URL``: serve a private-mode job's model calls from this machine.

``proctor submit --private`` already runs the same agent in-process; this command is for serving a
job from another machine or terminal (e.g. the one next to the GPU), or after the submitting
command was stopped. Nothing secret goes through argv, where ``ps`` and shell history would show
it: the user token, the tunnel secret and the model's key are read from environment variables
(or the client config file, or a hidden prompt for the secret).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Annotated

import typer

from proctor._loop import run as run_loop
from proctor.errors import InputError

__all__ = ["register"]


def _stderr(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _secret(env_name: str) -> str:
    value = os.environ.get(env_name)
    if value:
        return value
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass("tunnel secret (from `proctor submit --private`): ").strip()
        if value:
            return value
    raise InputError(
        f"no tunnel secret: set {env_name}",
        hint="the secret is shown once by `proctor submit --private` (or `proctor resume`) on an interactive terminal",
    )


def _per_role(values: list[str], what: str) -> tuple[str | None, dict[str, str]]:
    """``VALUE`` and ``ROLE=VALUE`` items -> (the default value, {role: value})."""
    default: str | None = None
    by_role: dict[str, str] = {}
    for item in values:
        role, sep, value = item.partition("=")
        if sep and re.fullmatch(r"[A-Za-z0-9_-]+", role) and value:
            if role in by_role:
                raise InputError(f"{what} for role {role!r} is given twice")
            by_role[role] = value
        elif default is None:
            default = item
        else:
            raise InputError(f"{what} is given twice without a role", hint="use ROLE=... for each role")
    return default, by_role


def tunnel(
    job_id: Annotated[str, typer.Argument(help="The private-mode job to serve.")],
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="Local model base URL, e.g. http://127.0.0.1:8000/v1; ROLE=URL (repeatable) when the "
            "job's private roles are different local models.",
        ),
    ],
    api_key_env: Annotated[
        list[str],
        typer.Option(
            "--api-key-env", help="Environment variable holding the local model's API key; ROLE=VAR per role."
        ),
    ] = [],  # noqa: B006
    server: Annotated[
        str | None, typer.Option("--server", "-s", help="Server URL (env PROCTOR_SERVER, or client.yaml).")
    ] = None,
    token_env: Annotated[
        str, typer.Option("--token-env", help="Environment variable holding your user token (else client.yaml).")
    ] = "PROCTOR_TOKEN",
    secret_env: Annotated[
        str, typer.Option("--secret-env", help="Environment variable holding the job's tunnel secret.")
    ] = "PROCTOR_TUNNEL_SECRET",
    connections: Annotated[
        int,
        typer.Option("--connections", min=1, max=16, help="Parallel WebSockets; the server spreads calls over them."),
    ] = 1,
) -> None:
    """Serve a private-mode job's model calls from a model on this machine, until the job ends."""
    from proctor.client_config import DEFAULT_SERVER, load_client_config
    from proctor.tunnel.agent import run_agent

    config = load_client_config() if (server is None or not os.environ.get(token_env)) else {}
    server_url = server or os.environ.get("PROCTOR_SERVER") or config.get("server") or DEFAULT_SERVER
    token = os.environ.get(token_env) or config.get("token")
    if not token:
        raise InputError(f"no user token: set {token_env} or put token: in the client config file")
    default_url, role_urls = _per_role(model, "--model")
    default_env, role_envs = _per_role(api_key_env, "--api-key-env")
    for url in [default_url, *role_urls.values()]:
        if url is not None and not re.match(r"^https?://[^\s/]+", url):
            raise InputError(f"--model {url!r}: the local model URL must start with http:// or https://")
    unknown = sorted(set(role_envs) - set(role_urls)) if role_urls else []
    if unknown:
        raise InputError(f"--api-key-env names role(s) {', '.join(unknown)} that no --model ROLE=URL serves")
    routes = {role: (url, _key(role_envs.get(role) or default_env)) for role, url in role_urls.items()}
    if default_url is None:  # calls that name no role go to the first role's model
        default_url = next(iter(role_urls.values()))
        default_env = role_envs.get(next(iter(role_urls))) or default_env
    api_key = _key(default_env)
    secret = _secret(secret_env)
    _stderr(f"tunnel for job {job_id}: serving its model calls from the local model (Ctrl-C to stop)")
    run_loop(
        run_agent(
            server_url,
            job_id,
            token,
            secret,
            default_url,
            api_key,
            role_models=routes or None,
            log=_stderr,
            connections=connections,
        )
    )


def _key(env_name: str | None) -> str | None:
    if not env_name:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise InputError(f"--api-key-env {env_name}: environment variable {env_name} is not set")
    return key


def register(app: typer.Typer) -> None:
    """Add ``proctor tunnel`` to the main app."""
    app.command("tunnel")(tunnel)
