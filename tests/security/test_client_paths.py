"""A hostile server against the real ``proctor results`` / ``proctor submit`` processes: no artifact
path it lists may land outside ``--out``, and each artifact keeps its own relative path
(issue 17, "the client writes outside --out").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import run_proctor, write_spec
from security.tunnel_kit import HostileProctor

JOB = "j-hostile"


def _env(home: Path) -> dict[str, str]:
    """No client config of the machine's user, and a token the hostile server does not check."""
    return {"HOME": str(home), "PROCTOR_TOKEN": "pt-test", "PROCTOR_SERVER": ""}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


EVIL_PATHS = [
    "../../escaped.txt",
    "out/../../../escaped.txt",
    "{tmp}/absolute.txt",  # absolute
    "..\\..\\escaped.txt",  # a backslash: a separator on Windows
    "C:/escaped.txt",  # a drive letter
    "c:escaped.txt",
    "a//b.txt",
    "./a.txt",
    "a/\x1b[31mred.txt",  # a control character (a terminal escape)
]


@pytest.mark.parametrize("evil", EVIL_PATHS)
def test_results_refuses_a_path_outside_out(tmp_path: Path, evil: str) -> None:
    evil = evil.format(tmp=tmp_path)
    out = tmp_path / "a" / "b" / "res"
    before = _files(tmp_path)
    artifacts = {"out/eval_stats.json": b"{}", evil: b"PWNED"}
    with HostileProctor(JOB, artifacts) as server:
        done = run_proctor("results", JOB, "--out", out, "--server", server.url, env=_env(tmp_path / "home"))
        downloads = list(server.downloads)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "refusing artifact path" in done.stderr and "nothing was downloaded" in done.stderr, done.stderr
    # Nothing at all was written: not the evil file, not even the good one (the listing is refused whole).
    assert downloads == []
    assert _files(tmp_path) - before <= {"home"}, _files(tmp_path) - before


def test_results_refuses_to_write_through_planted_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "res"
    out.mkdir()
    (out / "linkdir").symlink_to(outside, target_is_directory=True)
    (out / "file.txt").symlink_to(victim)
    env = _env(tmp_path / "home")
    for name in ("linkdir/new.txt", "linkdir/sub/new.txt", "file.txt"):
        with HostileProctor(JOB, {name: b"PWNED"}) as server:
            done = run_proctor("results", JOB, "--out", out, "--server", server.url, env=env)
        assert done.returncode != 0, f"{name}: {done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert "symbolic link" in done.stderr or "cannot write" in done.stderr, done.stderr
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


def test_results_keeps_each_artifact_at_its_own_path(tmp_path: Path) -> None:
    artifacts = {
        "spec.yaml": b"as uploaded",
        "job.log": b"the job's log",
        "out/spec.yaml": b"as run",
        "out/eval_stats.json": b'{"accuracy": 1}',
        "out/deep/dir/file name #1?.txt": b"odd name",
    }
    out = tmp_path / "res"
    with HostileProctor(JOB, artifacts) as server:
        done = run_proctor("results", JOB, "--out", out, "--server", server.url, env=_env(tmp_path / "home"))
        assert done.returncode == 0, done.stdout + done.stderr
        assert {p: (out / p).read_bytes() for p in artifacts} == artifacts
        one = tmp_path / "one"
        done = run_proctor(
            "results", JOB, "--out", one, "--file", "out/spec.yaml", "--server", server.url, env=_env(tmp_path / "home")
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert _files(one) == {"out/spec.yaml"} and (one / "out" / "spec.yaml").read_bytes() == b"as run"
        done = run_proctor(
            "results", JOB, "--out", one, "--file", "../../x", "--server", server.url, env=_env(tmp_path / "home")
        )
        assert done.returncode != 0 and "refusing artifact path" in done.stderr, done.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_submit_refuses_a_hostile_listing_and_keeps_paths(tmp_path: Path) -> None:
    (tmp_path / "spec").mkdir()
    spec = write_spec(tmp_path / "spec", "http://127.0.0.1:9/v1", n=2)
    env = _env(tmp_path / "home")
    out = tmp_path / "res"
    with HostileProctor(JOB, {"out/eval_stats.json": b"{}", "../escaped.txt": b"PWNED"}) as server:
        done = run_proctor("submit", spec, "--server", server.url, "--out", out, env=env)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "refusing artifact path" in done.stderr, done.stderr
    # submit makes --out before it queues anything (a file in the way is refused up front); the
    # hostile listing must leave it empty.
    assert not (tmp_path / "escaped.txt").exists() and not any(out.rglob("*"))

    stats = b'{"accuracy": 0.5}'
    listing = {"spec.yaml": b"as uploaded", "out/spec.yaml": b"as run", "out/eval_stats.json": stats, "job.log": b"log"}
    with HostileProctor(JOB, listing) as server:
        done = run_proctor(
            "submit",
            spec,
            "--server",
            server.url,
            "--out",
            out,
            "--output-file",
            tmp_path / "stats.json",
            "--server-log",
            tmp_path / "job.log",
            env=env,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p: (out / p).read_bytes() for p in listing} == listing
    assert (tmp_path / "stats.json").read_bytes() == stats and (tmp_path / "job.log").read_bytes() == b"log"
