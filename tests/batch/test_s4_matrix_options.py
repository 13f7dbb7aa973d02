"""`proctor run --parallel`: every option of `proctor run` reaches every run of the matrix, as given."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from helpers import run_proctor, write_spec

from proctor.cli.main import app
from proctor.cli.matrix import MATRIX_OWN, given_engine_args
from proctor.testing import FakeLLMConfig, FakeLLMThread

SAMPLE_VALUES = {int: "3", float: "0.5", str: "x", Path: "elsewhere"}
"""A value other than the default for each kind of option `proctor run` has."""


def run_command() -> Any:
    return typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]


def engine_options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option" and p.name not in MATRIX_OWN]


def test_every_option_of_proctor_run_given_is_passed_on_to_each_run_unchanged() -> None:
    """Built from `proctor run`'s own parameters, so an option added to it later is checked too."""
    command = run_command()
    argv = ["a.yaml", "b.yaml", "--parallel", "2"]
    for param in engine_options(command):
        flag = max(param.opts, key=len)
        if param.is_flag:
            argv.append(flag)
            continue
        kind = param.type_descriptor.annotation
        assert kind in SAMPLE_VALUES, f"no sample value for {flag} ({kind}): add one"
        argv += [flag, SAMPLE_VALUES[kind]]
    given = command.make_context("run", argv)
    child = command.make_context("run", ["cell.yaml", *given_engine_args(given)])
    names = [p.name for p in engine_options(command)]
    assert {"executor", "ray_address", "workers", "limit", "concurrency", "grace"} <= set(names)
    for name in names:
        assert given.params[name] != next(p.default for p in command.params if p.name == name), name
        assert child.params[name] == given.params[name], name


def test_options_left_at_their_defaults_are_left_to_each_run_and_the_matrix_keeps_its_own() -> None:
    command = run_command()
    given = command.make_context("run", ["a.yaml", "b.yaml", "-P", "2", "--out", "runs", "--progress", "plain"])
    assert given_engine_args(given) == []
    given = command.make_context("run", ["a.yaml", "b.yaml", "-n", "4", "--retry-errors", "--workers", "2"])
    assert given_engine_args(given) == ["--limit", "4", "--retry-errors", "--workers", "2"]


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        (["--workers", "3"], "--ray-address and --workers need --executor ray"),
        (["--ray-address", "127.0.0.1:1"], "--ray-address and --workers need --executor ray"),
        (["--executor", "nope"], "--executor must be one of local, ray (got 'nope')"),
    ],
)
def test_each_run_of_a_matrix_gets_the_executor_options_a_single_run_would(
    tmp_path: Path, given: list[str], refusal: str
) -> None:
    """Each run answers them as one `proctor run` does (here: refuses them, before any model call)."""
    with (
        FakeLLMThread(FakeLLMConfig(reply="arith", model="m-one")) as one,
        FakeLLMThread(FakeLLMConfig(reply="arith", model="m-two")) as two,
    ):
        spec = write_spec(tmp_path, one.base_url, n=4, concurrency=2)
        single = run_proctor("run", spec, *given, "--out", tmp_path / "single")
        assert single.returncode == 2 and refusal in single.stderr, single.stdout + single.stderr
        models = ["--model", f"subject={one.base_url}@m-one", "--model", f"subject={two.base_url}@m-two"]
        matrix = run_proctor("run", spec, *models, "--parallel", "2", *given, "--out", tmp_path / "runs")
        assert matrix.returncode == 2, matrix.stdout + matrix.stderr
        assert "Traceback" not in matrix.stdout + matrix.stderr
        for name in ("arith--m-one", "arith--m-two"):
            log = (tmp_path / "runs" / name / "console.log").read_text()
            assert shlex.join(given) in log and refusal in log, log
        assert one.counts == {} and two.counts == {}  # no run went ahead without the options it was given
