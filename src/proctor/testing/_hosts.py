"""Ways to host the fake server outside the caller's event loop: a thread, or a subprocess.

``FakeLLMThread`` serves sync tests (and code under test that starts its own loop) without making
them async. ``FakeLLMProcess`` serves benchmarks and subprocess tests: the server then burns its
own CPU instead of the engine's, and the engine can be a separate process too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from proctor.errors import InputError, LaunchError

from ._config import FakeLLMConfig
from ._server import FakeLLM

__all__ = ["FakeLLMProcess", "FakeLLMThread"]

T = TypeVar("T")
STARTUP_TIMEOUT = 15.0


class FakeLLMThread:
    """A ``FakeLLM`` on its own event loop in a daemon thread, with the same attributes.

    Reads and changes are marshalled onto the server's loop, so a test thread never iterates a
    counter dict while a handler is inserting into it.
    """

    def __init__(self, config: FakeLLMConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = FakeLLM(config, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def start(self) -> FakeLLMThread:
        """Start the thread and wait (at most 15 s) until the server is listening."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            raise LaunchError("fake LLM thread did not start listening within 15 s")
        if self._failure is not None:
            self._thread.join(5)
            self._thread = None
            raise LaunchError(f"fake LLM thread failed to start: {self._failure}") from self._failure
        return self

    def stop(self) -> None:
        """Stop the server and join the thread (bounded: 10 s)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping.set)
        thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # reported to start(), which raises it in the caller
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.server.stop()

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the server's loop and return its result (or raise its error)."""
        loop = self._loop
        if loop is None or self._thread is None:
            return fn(*args, **kwargs)  # not running: nothing can race
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    def __enter__(self) -> FakeLLMThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def config(self) -> FakeLLMConfig:
        return self.server.config

    @property
    def counts(self) -> dict[str, int]:
        return self._call(lambda: dict(self.server.counts))

    @property
    def successes(self) -> dict[str, int]:
        return self._call(lambda: dict(self.server.successes))

    def stats(self) -> dict[str, Any]:
        return self._call(self.server.stats)

    def reconfigure(self, **fields: Any) -> FakeLLMConfig:
        return self._call(self.server.reconfigure, **fields)

    def reset(self) -> None:
        self._call(self.server.reset)


class FakeLLMProcess:
    """``python -m proctor.testing serve`` in its own process group, killed on exit.

    The config travels as a JSON file (not argv), so large scripts and keys never hit ``ps``.
    Counters are read over HTTP (``/_stats``), since they live in the other process.
    """

    def __init__(
        self,
        config: FakeLLMConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.config = config if config is not None else FakeLLMConfig()
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def start(self) -> FakeLLMProcess:
        """Spawn the server and wait (bounded) for it to write its port file."""
        if self.proc is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="proctor-fakellm-"))
        config_file = self._dir / "config.json"
        config_file.write_text(json.dumps(self.config.to_dict()))
        port_file = self._dir / "port"
        log_path = self._dir / "server.log"
        cmd = [
            sys.executable,
            "-m",
            "proctor.testing",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--config",
            str(config_file),
            "--port-file",
            str(port_file),
            "--exit-with-parent",
        ]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if port_file.exists():
                self.port = int(port_file.read_text())
                return self
            code = self.proc.poll()
            if code is not None:
                output = log_path.read_text(errors="replace")[-2000:]
                self._cleanup()
                raise LaunchError(f"fake LLM process exited with code {code} before listening:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise LaunchError(f"fake LLM process did not write its port file within {self.startup_timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL if it has not exited within 5 s."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None and proc.poll() is None:
            proc.wait(5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> FakeLLMProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FakeLLMProcess:
        """Start without blocking the caller's loop during the (sub-second) spawn."""
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _http(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.host}:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise InputError(f"fake LLM {method} {path} failed ({exc.code}): {detail}") from None

    def stats(self) -> dict[str, Any]:
        return dict(self._http("GET", "/_stats"))

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.stats()["counts"])

    @property
    def successes(self) -> dict[str, int]:
        return dict(self.stats()["successes"])

    def reconfigure(self, **fields: Any) -> FakeLLMConfig:
        self.config = FakeLLMConfig.from_dict(self._http("POST", "/_config", fields))
        return self.config

    def reset(self) -> None:
        self._http("POST", "/_reset", {})
