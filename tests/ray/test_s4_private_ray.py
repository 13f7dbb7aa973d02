"""The private Ray of `proctor run --executor ray` keeps its token and files to itself.

Ray 2.x writes a new cluster's auth token to ``~/.ray/auth_token`` readable by every user, and
leaves its session in a world-writable ``$TMPDIR/ray``. Each test here runs `proctor run` as a
process with its own HOME and TMPDIR (never the user's ``~/.ray``, never another test's Ray
directory), and checks, while Ray runs: no file holding the token is readable by other users and
nothing listens beyond loopback; and after a SIGINT and after a normal end: nothing is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import wait_for, write_jsonl
from ray_kit import listening, ray_spec

from proctor.testing import FakeLLMConfig, FakeLLMThread

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]

RAY_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_TMPDIR")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR of this test's own, with a path short enough for Ray's Unix sockets."""
    path = Path(tempfile.mkdtemp(prefix="s4ray-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fresh_user(tmp_path: Path, tmp: Path) -> tuple[dict[str, str], Path, Path]:
    """(environment, HOME, TMPDIR) of a user who never ran Ray: nothing inherited from this one."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARIABLES}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp)}, home, tmp


def readable_by_others(path: Path, root: Path) -> bool:
    """Whether another user can read ``path``: it is o+r and every directory below ``root`` is o+x."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents if root in parent.parents)


def files_holding(token: str, roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and token.encode() in path.read_bytes():
                    found.append(path)
            except OSError:  # a socket, or a file Ray removed meanwhile
                continue
    return found


def cluster_token(procs: list[psutil.Process], home: Path) -> str:
    """The running cluster's token: from its processes' environment, or the file Ray wrote."""
    for proc in procs:
        try:
            token = proc.environ().get("RAY_AUTH_TOKEN")
        except psutil.Error:
            continue
        if token:
            return token
    return (home / ".ray" / "auth_token").read_text().strip()


def assert_nothing_left(tmp: Path) -> None:
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert not left, f"{len(left)} paths left, e.g. {left[-10:]}"


def write_data(tmp_path: Path, n: int) -> None:
    rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(n)]
    write_jsonl(tmp_path / "data.jsonl", rows)


def start_run(spec: Path, out: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proctor", "run", str(spec), "--out", str(out), "--progress", "none", "--grace", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_private_ray_keeps_its_token_and_files_private_and_removes_them_even_after_sigint(
    tmp_path: Path, short_tmp: Path
) -> None:
    env, home, tmp = fresh_user(tmp_path, short_tmp)
    n = 40
    write_data(tmp_path, n)
    spec = tmp_path / "spec.yaml"
    out = tmp_path / "run"
    started: list[psutil.Process] = []
    try:
        with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.5)) as llm:
            spec.write_text(json.dumps(ray_spec(llm.base_url)))
            proc = start_run(spec, out, env)
            try:
                wait_for(lambda: llm.stats()["requests"] >= 4 or proc.poll() is not None)
                assert proc.poll() is None, proc.communicate()
                driver = psutil.Process(proc.pid)
                started = driver.children(recursive=True)
                assert started, "the private Ray started no process"
                # While it runs: the token is nowhere another user can read it, the session's files
                # are not readable by others, and nothing listens beyond loopback.
                token = cluster_token(started, home)
                holders = files_holding(token, [home, tmp])
                assert not holders, f"files hold the Ray token: {holders}"
                assert not (home / ".ray").exists()
                exposed = [p for p in tmp.rglob("*") if p.is_file() and readable_by_others(p, tmp)]
                assert not exposed, f"other users can read {exposed[:5]}"
                pids = {proc.pid} | {p.pid for p in started}
                sockets = listening(pids)
                assert len({pid for pid, _ in sockets}) >= 3, sockets  # GCS, raylet, workers at least
                loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
                outside = [(pid, a) for pid, a in sockets if not a.startswith(loopback)]
                assert not outside, f"listening beyond loopback: {outside}"
                proc.send_signal(signal.SIGINT)
                _, stderr = proc.communicate(timeout=120)
            finally:
                proc.kill()
                proc.wait(timeout=30)
            assert proc.returncode == 130, stderr
            _, alive = psutil.wait_procs(started, timeout=30)
            assert not alive, f"Ray processes outlived the run: {[p.pid for p in alive]}"
            assert not (home / ".ray").exists()
            assert_nothing_left(tmp)

            # The resume starts a private Ray again, finishes, and leaves nothing behind either.
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "proctor",
                    "run",
                    str(out / "spec.yaml"),
                    "--out",
                    str(out),
                    "--progress",
                    "none",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
    finally:
        for p in started:  # stopped by our own handles, whatever happened above
            try:
                p.kill()
            except psutil.Error:
                continue
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((out / "eval_stats.json").read_text())["counts"]["scored"] == n
    assert not (home / ".ray").exists()
    assert_nothing_left(tmp)


def test_a_second_sigint_still_stops_the_private_ray_and_removes_its_files(tmp_path: Path, short_tmp: Path) -> None:
    env, home, tmp = fresh_user(tmp_path, short_tmp)
    write_data(tmp_path, 40)
    started: list[psutil.Process] = []
    try:
        with FakeLLMThread(FakeLLMConfig(reply="arith", latency=0.5)) as llm:
            (tmp_path / "spec.yaml").write_text(json.dumps(ray_spec(llm.base_url)))
            proc = start_run(tmp_path / "spec.yaml", tmp_path / "run", env)
            try:
                wait_for(lambda: llm.stats()["requests"] >= 4 or proc.poll() is not None)
                assert proc.poll() is None, proc.communicate()
                started = psutil.Process(proc.pid).children(recursive=True)
                llm.reconfigure(latency=120.0)  # in-flight samples would hold the first SIGINT's grace
                proc.send_signal(signal.SIGINT)
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)  # exit at once
                _, stderr = proc.communicate(timeout=60)
            finally:
                proc.kill()
                proc.wait(timeout=30)
        assert proc.returncode == 130, stderr
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"Ray processes outlived the run: {[(p.pid, p.name()) for p in alive]}"
        assert not (home / ".ray").exists()
        assert_nothing_left(tmp)
    finally:
        for p in started:
            try:
                p.kill()
            except psutil.Error:
                continue


def test_a_private_ray_ignores_the_cluster_a_ray_start_on_the_host_recorded(tmp_path: Path, short_tmp: Path) -> None:
    # `ray start` (docs/ray.md) records its cluster in $RAY_TMPDIR/ray/ray_current_cluster; a run
    # without --ray-address must still start its own private Ray, not join (or fail on) that one.
    env, home, tmp = fresh_user(tmp_path, short_tmp)
    recorded = tmp / "other" / "ray"
    recorded.mkdir(parents=True)
    (recorded / "ray_current_cluster").write_text("127.0.0.1:1")
    env["RAY_TMPDIR"] = str(tmp / "other")
    write_data(tmp_path, 6)
    with FakeLLMThread(FakeLLMConfig(reply="arith")) as llm:
        (tmp_path / "spec.yaml").write_text(json.dumps(ray_spec(llm.base_url)))
        proc = start_run(tmp_path / "spec.yaml", tmp_path / "run", env)
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, stdout + stderr
    assert json.loads((tmp_path / "run" / "eval_stats.json").read_text())["counts"]["scored"] == 6
