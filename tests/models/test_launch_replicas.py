"""Data-parallel launch: ``replicas: N`` servers on consecutive ports, each with its own GPUs and log.

No GPU here: a stand-in ``vllm`` executable (the fake model server) prints the
``CUDA_VISIBLE_DEVICES`` it was given, so each replica's log shows its devices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError

from proctor.errors import LaunchError
from proctor.models.config import LaunchConfig, ModelConfig
from proctor.models.launch import launched_servers, replica_configs

FAKE = Path(__file__).resolve().parents[1] / "fixtures" / "fake_model_server.py"
LOG = logging.getLogger("test.launch.replicas")


def free_ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (bounded search)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no run of free ports")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture
def vllm_env(tmp_path: Path) -> dict[str, str]:
    """A ``vllm`` on PATH that prints its CUDA_VISIBLE_DEVICES, and fails on ``$FAIL_PORT``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(
        f"#!{sys.executable}\nimport os, runpy, sys\n"
        "print('CUDA_VISIBLE_DEVICES=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'), flush=True)\n"
        "if os.environ.get('FAIL_PORT') and sys.argv[sys.argv.index('--port') + 1] == os.environ['FAIL_PORT']:\n"
        "    print('CUDA error: out of memory (stand-in)', flush=True); sys.exit(3)\n"
        f"sys.argv[0] = {str(FAKE)!r}\nrunpy.run_path({str(FAKE)!r}, run_name='__main__')\n"
    )
    vllm.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def subject(port: int, env: dict[str, str], **launch: object) -> dict[str, ModelConfig]:
    cfg = LaunchConfig(
        kind="vllm", model_path="m", port=port, replicas=3, gpus_per_replica=1, stagger=0.1, env=env, **launch
    )  # type: ignore[arg-type]
    return {"subject": ModelConfig(model="m", launch=cfg)}


def test_replica_configs_spread_ports_and_gpus() -> None:
    four = replica_configs(LaunchConfig(kind="vllm", model_path="m", port=1800, replicas=4, gpus_per_replica=1))
    assert [(c.port, c.gpus, c.replicas) for c in four] == [
        (1800, "0", 1),
        (1801, "1", 1),
        (1802, "2", 1),
        (1803, "3", 1),
    ]
    pairs = replica_configs(
        LaunchConfig(kind="vllm", model_path="m", port=9000, replicas=2, gpus_per_replica=2, gpus="4,5,6,7")
    )
    assert [c.gpus for c in pairs] == ["4,5", "6,7"]
    with pytest.raises(ValidationError, match="gpus lists 2 device"):
        LaunchConfig(kind="vllm", model_path="m", port=9000, replicas=2, gpus_per_replica=2, gpus="0,1")


def test_replicas_start_staggered_each_with_its_gpu_and_log_and_form_the_pool(
    tmp_path: Path, vllm_env: dict[str, str]
) -> None:
    base = free_ports(3)

    async def go() -> list[str]:
        async with launched_servers(subject(base, vllm_env), run_dir=tmp_path, base_dir=tmp_path, log=LOG) as resolved:
            assert all(healthy(base + i) for i in range(3))
            return [str(r) for r in resolved["subject"].replicas]

    pool = asyncio.run(go())
    assert pool == [f"http://127.0.0.1:{base + i}/v1" for i in range(3)]
    for i in range(3):
        assert f"CUDA_VISIBLE_DEVICES={i}" in (tmp_path / f"launch-subject-{i}.log").read_text()
    assert not any(healthy(base + i) for i in range(3))


def test_a_healthy_replica_is_reused_and_a_failing_one_is_named_with_its_log(
    tmp_path: Path, vllm_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    base = free_ports(3)
    own = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(base + 1), "--served-model-name", "m"], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not healthy(base + 1) and time.monotonic() < deadline:
            time.sleep(0.05)

        async def go(env: dict[str, str]) -> None:
            async with launched_servers(subject(base, env), run_dir=tmp_path, base_dir=tmp_path, log=LOG):
                pass

        with caplog.at_level(logging.INFO, logger=LOG.name):
            asyncio.run(go(vllm_env))
        assert f"reusing the healthy server at http://127.0.0.1:{base + 1}/v1" in caplog.text
        assert not (tmp_path / "launch-subject-1.log").exists() and healthy(base + 1)
        with pytest.raises(LaunchError) as err:
            asyncio.run(go({**vllm_env, "FAIL_PORT": str(base + 2)}))
        message = str(err.value)
        assert "server for role 'subject-2' exited with status 3" in message
        assert "| CUDA error: out of memory (stand-in)" in message and "launch-subject-2.log" in message
        assert not healthy(base) and healthy(base + 1)  # the replica proctor started was stopped; ours lives
    finally:
        own.terminate()
        own.wait(timeout=30)
