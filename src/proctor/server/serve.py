"""Running the app: bind first, then build, so the real port is known before any job starts.

Binding the socket ourselves (rather than letting uvicorn do it) means ``--port 0`` works: the
private-mode facade URL handed to jobs needs the port the server actually listens on.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys

import uvicorn
from starlette.types import ASGIApp

from proctor._files import ensure_directory
from proctor._loop import tune_gc
from proctor.errors import InputError
from proctor.server.app import create_app, served_app
from proctor.server.connections import connection_cap, guarded_protocol, raise_open_files_limit
from proctor.server.settings import ServerSettings


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on ``host:port``; a port in use or an address this machine lacks is bad input."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on {host} is already in use",
                hint="stop what listens there, or choose another port with --port (0 picks a free one)",
            ) from None
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="check --host (an address of this machine) and --port",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def configure_logging(settings: ServerSettings) -> None:
    """Server events to stderr and ``DATA/server.log``; never a secret in either."""
    logger = logging.getLogger("proctor.server")
    if logger.handlers:
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    ensure_directory(settings.data_dir, what="data directory (--data)")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(settings.data_dir / "server.log")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def uvicorn_config(app: ASGIApp, settings: ServerSettings, *, open_files: int) -> uvicorn.Config:
    """uvicorn with the front door's connection limits (docs/server.md, "Limits").

    ``proxy_headers`` is uvicorn's, but its default trusts ``X-Forwarded-For`` from 127.0.0.1,
    which is every job on this machine: here only the proxies the config lists are trusted.
    """
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        http=guarded_protocol(
            header_timeout=settings.header_timeout,
            max_connections=connection_cap(settings.max_connections, open_files),
            max_head_bytes=settings.max_head_bytes,
            send_timeout=settings.send_timeout,
        ),
        h11_max_incomplete_event_size=settings.max_head_bytes,
        timeout_keep_alive=settings.keep_alive_timeout,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or [],
    )


def serve(settings: ServerSettings, *, on_ready: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM; jobs still running are stopped and re-queued on the next start.

    ``on_ready``: print this line (with ``{port}`` filled in) once listening, for scripts and tests.
    """
    open_files = raise_open_files_limit()
    sock = bind_socket(settings.host, settings.port)
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    configure_logging(settings)
    app = create_app(settings)
    tune_gc()
    config = uvicorn_config(served_app(app), settings, open_files=open_files)
    server = uvicorn.Server(config)
    if on_ready:
        original = server.startup

        async def startup(sockets: list[socket.socket] | None = None) -> None:
            await original(sockets=sockets)
            print(on_ready.format(port=settings.port, host=settings.host), flush=True)

        server.startup = startup  # type: ignore[method-assign]
    log = logging.getLogger("proctor.server")
    original_shutdown = server.shutdown

    async def shutdown(sockets: list[socket.socket] | None = None) -> None:
        # Logged here, not after run(): uvicorn re-raises the SIGTERM it caught once shut down,
        # and the default handler then ends the process before run() could return.
        try:
            await original_shutdown(sockets=sockets)
        finally:
            log.info("proctor server on http://%s:%s stopped", settings.host, settings.port)

    server.shutdown = shutdown  # type: ignore[method-assign]
    log.info(
        "proctor server on http://%s:%s (data %s, %s slot(s))",
        settings.host,
        settings.port,
        settings.data_dir,
        settings.slots,
    )
    server.run(sockets=[sock])
