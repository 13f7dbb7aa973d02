"""`--executor ray` on the command line: bad input is one line and exit 2, before any work."""

from __future__ import annotations

from pathlib import Path

from helpers import run_proctor, write_spec


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def test_without_the_ray_extra_it_says_how_to_install_it(tmp_path: Path) -> None:
    # A `ray` that cannot be imported stands in for a missing extra (the real one is installed).
    fake = tmp_path / "shadow" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n", encoding="utf-8")
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", n=3)
    r = run_proctor("run", spec, "--executor", "ray", env={"PYTHONPATH": str(fake.parent)})
    assert r.returncode == 2
    assert "pip install 'proctor[ray]'" in one_line_error(r.stderr)
    assert not (tmp_path / "runs").exists()


def test_ray_flags_without_the_ray_executor_are_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", n=3)
    r = run_proctor("run", spec, "--executor", "local", "--ray-address", "127.0.0.1:6379")
    assert r.returncode == 2 and "--ray-address" in one_line_error(r.stderr)
    r = run_proctor("run", spec, "--executor", "slurm")
    assert r.returncode == 2 and "--executor" in one_line_error(r.stderr)


def test_a_bad_executor_in_the_spec_is_named(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", n=3, extra="executor: {kind: spark, workers: 0}\n")
    r = run_proctor("run", spec)
    assert r.returncode == 2
    assert "executor.kind" in r.stderr and "executor.workers" in r.stderr and "Traceback" not in r.stderr
