"""``proctor tunnel JOB --model URL``: serve a private-mode job's model calls from this machine.

``proctor submit --private`` already runs the same agent in-process; this command is for serving a
job from another machine or terminal (e.g. the one next to the GPU), or after the submitting
command was stopped. Nothing secret goes through argv, where ``ps`` and shell history would show
it: the user token, the tunnel secret and the model's key are read from environment variables
(or the client config file, or a hidden prompt for the secret).
"""

from __future__ import annotations

import os
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


def tunnel(
    job_id: Annotated[str, typer.Argument(help="The private-mode job to serve.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Local model base URL, e.g. http://127.0.0.1:8000/v1.")],
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Environment variable holding the local model's API key.")
    ] = None,
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
    from proctor.client import DEFAULT_SERVER, load_client_config
    from proctor.tunnel.agent import run_agent

    config = load_client_config() if (server is None or not os.environ.get(token_env)) else {}
    server_url = server or os.environ.get("PROCTOR_SERVER") or config.get("server") or DEFAULT_SERVER
    token = os.environ.get(token_env) or config.get("token")
    if not token:
        raise InputError(f"no user token: set {token_env} or put token: in the client config file")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise InputError(f"--api-key-env {api_key_env}: environment variable {api_key_env} is not set")
    secret = _secret(secret_env)
    _stderr(f"tunnel for job {job_id}: serving its model calls from the local model (Ctrl-C to stop)")
    run_loop(run_agent(server_url, job_id, token, secret, model, api_key, log=_stderr, connections=connections))


def register(app: typer.Typer) -> None:
    """Add ``proctor tunnel`` to the main app."""
    app.command("tunnel")(tunnel)
