"""Which executor runs a spec: ``--executor`` over the spec's ``executor:``, checked before any work."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from proctor.errors import InputError
from proctor.evals.runner import Runner, RunOptions
from proctor.evals.spec import ExecutorConfig, TaskSpec

EXECUTORS = ("local", "ray")


def build_runner(
    task: TaskSpec,
    *,
    executor: str | None,
    ray_address: str | None,
    workers: int | None,
    spec_dir: Path,
    options: RunOptions,
    limit: int | None,
    console: Any,
) -> tuple[Runner, str]:
    """The runner, and what the printed resume command needs besides the spec and ``--out``.

    The executor chosen on the command line is written into the run's spec.yaml, so the resume
    command runs the same way; the cluster's address is not part of the spec and is appended.
    """
    if executor is not None and executor not in EXECUTORS:
        raise InputError(f"--executor must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    config = task.executor
    if executor is not None or workers is not None:
        config = ExecutorConfig.model_validate({"kind": executor or config.kind, "workers": workers or config.workers})
        task = task.model_copy(update={"executor": config})
    if config.kind == "local":
        if ray_address or workers:
            raise InputError("--ray-address and --workers need --executor ray (or executor: {kind: ray} in the spec)")
        return Runner(task, spec_dir=spec_dir, options=options, limit=limit, console=console), ""
    import importlib.util

    if importlib.util.find_spec("ray") is None:  # one line and exit 2, before the dataset is read
        from proctor.executors.ray_cluster import import_ray

        import_ray()
    from proctor.executors.ray_runner import RayRunner

    runner = RayRunner(task, spec_dir=spec_dir, options=options, limit=limit, console=console, ray_address=ray_address)
    return runner, f" --ray-address {shlex.quote(ray_address)}" if ray_address else ""
