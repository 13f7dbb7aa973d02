"""``proctor view RUN_DIR...``: the web dashboard over local run directories, read-only."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer


def view(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories made by `proctor run` (may still be running)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (only this machine by default)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0 picks a free one)."),
) -> None:
    """Browse local runs in a web browser: progress, accuracy, samples, trajectories, latency analysis."""
    import uvicorn

    from proctor.server.serve import bind_socket
    from proctor.web import local_app

    app = local_app(run_dirs)  # bad directories are one line and exit 2, before anything listens
    sock = bind_socket(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"proctor view: http://{shown}:{sock.getsockname()[1]}/  (read-only; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        shutil.rmtree(app.state.cache_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("view", no_args_is_help=True)(view)
