"""``proctor run SPEC... --model ... --parallel K``: a matrix of runs on this machine, K at a time.

Each cell of the matrix (``proctor.batch.expand``) is an ordinary ``proctor run`` in a child
process with its own run directory, so each is resumable on its own, one that fails or crashes
leaves the others running, and running the same command again resumes every cell (the
directories are named from the spec and the models, ``proctor.batch.run_names``). A child's
output goes to ``console.log`` in its run directory; what this process shows is one table, drawn
from the ``PROCTOR_PROGRESS`` lines the children print (as a server's jobs do).

Ctrl-C (or SIGTERM) reaches this process only, since the children run in their own process
groups: it is passed on once to each running child, which finishes its samples in flight and
stops resumable; cells not started yet are left for the next invocation. A second Ctrl-C is
passed on again, and the children stop at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proctor._files import ensure_directory
from proctor._loop import run as run_loop
from proctor.batch import Cell, expand, run_names, worst_exit
from proctor.cli._console import make_console
from proctor.errors import InputError

CHILD_LOG = "console.log"
"""A cell's own output (its progress lines left out), in its run directory."""

MAX_LINE = 1 << 24
"""The longest line a child may print (its tracebacks, its progress lines are far shorter)."""

STATES = {0: "done", 1: "done, some errored", 130: "interrupted", 2: "bad input", 3: "crashed"}


@dataclass(slots=True)
class MatrixRun:
    """One cell while the matrix runs: where it runs, and what its progress lines said."""

    cell: Cell
    name: str
    run_dir: Path
    label: str
    """The models that set this run apart (``Cell.label``)."""
    exit_code: int | None = None
    started: bool = False
    progress: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None

    @property
    def state(self) -> str:
        if self.exit_code is not None:
            return STATES.get(self.exit_code, f"exit {self.exit_code}")
        return "running" if self.started else "waiting"


def describe_cells(cells: Sequence[Cell]) -> list[tuple[str, str]]:
    """Each cell's task name and model label, loading its spec with its models as ``proctor run`` will.

    Bad input in any cell (a spec that does not load, a ``--model`` for a role the spec does not
    use) stops the whole matrix here, before any run starts.
    """
    from proctor.evals.spec import apply_overrides, is_lm_eval_spec, parse_spec, read_spec_data
    from proctor.harness.spec import parse_lm_eval_spec

    described = []
    for cell in cells:
        data = read_spec_data(cell.spec)
        parse = parse_lm_eval_spec if is_lm_eval_spec(data) else parse_spec
        task = apply_overrides(parse(data, source=str(cell.spec)), list(cell.models), None)
        names = {role: config.model or config.base_url or "-" for role, config in task.models.items()}
        described.append((task.name, cell.label(names)))
    return described


def run_matrix(
    specs: Sequence[Path],
    models: Sequence[str],
    *,
    parallel: int | None,
    out: Path | None,
    progress: str,
    dry_run: bool = False,
    args: Sequence[str] = (),
) -> int:
    """Run every cell, ``parallel`` at a time; print one summary table; return the worst exit code.

    ``args``: the options of ``proctor run`` every child gets (``given_engine_args``).
    """
    if dry_run:
        raise InputError("--dry-run takes one spec and one model per role", hint="dry-run each cell on its own")
    cells = expand(specs, models)
    tasks, labels = zip(*describe_cells(cells), strict=True)
    root = (out or Path("runs")).resolve()
    runs = [
        MatrixRun(cell, name, root / name, label)
        for cell, name, label in zip(cells, run_names(cells, tasks, labels), labels, strict=True)
    ]
    for run in runs:
        ensure_directory(run.run_dir, what="run directory")
    console = make_console()
    live = progress == "rich" or (progress == "auto" and console.is_terminal)
    k = parallel or 1
    console.print(f"{len(runs)} runs, {k} at a time, under {root}", markup=False, soft_wrap=True)
    interrupted = run_loop(_run_all(runs, k, list(args), console=console, live=live))
    _summary(runs, console)
    code = worst_exit(run.exit_code if run.exit_code is not None else 130 for run in runs)
    if code:
        incomplete = sum(1 for run in runs if run.exit_code != 0)
        console.print(
            f"{incomplete} of {len(runs)} runs incomplete; run the same command again to resume them all "
            "(or each one alone, as above)",
            markup=False,
            soft_wrap=True,
        )
    return 130 if interrupted and code in (0, 1) else code


MATRIX_OWN = frozenset({"specs", "model", "out", "parallel", "progress", "dry_run"})
"""The parameters of ``proctor run`` that shape the matrix itself: each child gets its own spec,
models and run directory, and ``--progress none`` (its progress lines feed this process's table)."""


def given_engine_args(ctx: Any) -> list[str]:
    """The options of ``proctor run`` given on its command line (``ctx``: its click context), as
    ``argv`` for each run of the matrix: every option but ``MATRIX_OWN``, exactly as given.

    Read from the parsed command line rather than listed, so that every option ``proctor run``
    has or gains (``--executor``, ``--ray-address``, ``--workers``, ...) reaches every run.
    An option left at its default is left out, so the child takes the same default.
    """
    argv: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name in MATRIX_OWN or param.param_type_name != "option":
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        argv += _option_argv(param, ctx.params[name])
    return argv


def _option_argv(param: Any, value: Any) -> list[str]:
    """One option and its parsed value back as argv: its long flag, then each value."""
    flag = max(param.opts, key=len)
    if param.is_flag:
        if value:
            return [flag]
        secondary = max(param.secondary_opts, key=len, default=None)
        return [secondary] if secondary else []
    values = value if param.multiple else [value]
    return [item for one in values if one is not None for item in (flag, str(one))]


async def _run_all(runs: list[MatrixRun], parallel: int, child_args: list[str], *, console: Any, live: bool) -> bool:
    """Run the children; True when a signal stopped the matrix."""
    slots = asyncio.Semaphore(parallel)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        for run in runs:
            if run.pid is not None and run.exit_code is None:
                try:
                    os.kill(run.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    async def one(run: MatrixRun) -> None:
        async with slots:
            if stop.is_set():
                return
            await _run_child(run, child_args, stop, console=None if live else console)

    display = asyncio.create_task(_display(runs, console)) if live else None
    try:
        await asyncio.gather(*(one(run) for run in runs))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if display is not None:
            display.cancel()
            await asyncio.gather(display, return_exceptions=True)
    return signals > 0


def child_argv(run: MatrixRun, child_args: list[str]) -> list[str]:
    """The ``proctor run`` of one cell: the same options, its own models and run directory."""
    argv = [sys.executable, "-m", "proctor", "run", str(run.cell.spec), "--out", str(run.run_dir)]
    for value in run.cell.models:
        argv += ["--model", value]
    return argv + ["--progress", "none", *child_args]


async def _run_child(run: MatrixRun, child_args: list[str], stop: asyncio.Event, *, console: Any) -> None:
    from proctor.evals.progress import progress_record

    proc = await asyncio.create_subprocess_exec(
        *child_argv(run, child_args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PROCTOR_PROGRESS": "json"},
        start_new_session=True,  # Ctrl-C at a terminal reaches the parent only, which passes it on once
        limit=MAX_LINE,
    )
    run.pid, run.started = proc.pid, True
    if stop.is_set():  # the signal came while this child was being spawned: it gets it too
        os.kill(proc.pid, signal.SIGINT)
    if console is not None:
        console.print(f"started  {run.name}", markup=False, soft_wrap=True)
    assert proc.stdout is not None
    with open(run.run_dir / CHILD_LOG, "ab") as sink:  # noqa: ASYNC230 - local appends of a few lines
        sink.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(child_argv(run, child_args))}\n".encode())
        async for raw in proc.stdout:
            record = progress_record(raw.rstrip(b"\n"))
            if record is not None:
                run.progress = record
            else:
                sink.write(raw)
                sink.flush()
    run.exit_code = _exit_code(await proc.wait())
    if console is not None:
        console.print(f"finished {run.name}: {run.state}", markup=False, soft_wrap=True)


def _exit_code(returncode: int) -> int:
    """A child killed by a signal has no exit code of its own: reported as a crash."""
    return returncode if returncode >= 0 else 3


async def _display(runs: list[MatrixRun], console: Any) -> None:
    from rich.live import Live

    with Live(_table(runs, final=False), console=console, refresh_per_second=2, transient=True) as live:
        while True:
            await asyncio.sleep(0.5)
            live.update(_table(runs, final=False))


def _stats(run: MatrixRun) -> dict[str, Any] | None:
    try:
        data = json.loads((run.run_dir / "eval_stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _figures(run: MatrixRun, *, final: bool) -> tuple[float | None, int, int | None, int]:
    """(accuracy, done, total, errors): from the run's report at the end, else its last progress line."""
    stats = _stats(run) if final else None
    if stats is not None:
        counts = stats.get("counts") or {}
        total = counts.get("total")
        done = (total or 0) - (counts.get("pending") or 0) - (counts.get("running") or 0)
        return (stats.get("accuracy") or {}).get("value"), done, total, (stats.get("errors") or {}).get("total", 0)
    record = run.progress
    return record.get("accuracy"), record.get("done") or 0, record.get("total"), record.get("errors") or 0


def _table(runs: list[MatrixRun], *, final: bool) -> Any:
    from rich.table import Table

    from proctor.evals.progress import _fmt_eta

    table = Table(title="summary" if final else None, title_justify="left")
    for column in ("run", "model", "state", "accuracy", "done/total", "errors", *(() if final else ("ETA",))):
        table.add_column(column, overflow="fold")
    for run in runs:
        accuracy, done, total, errors = _figures(run, final=final)
        row = [
            run.name,
            run.label,
            "not started" if final and not run.started else run.state,
            "-" if accuracy is None else f"{accuracy:.1%}",
            f"{done}/{'?' if total is None else total}",
            str(errors),
        ]
        if not final:
            row.append(_fmt_eta(run.progress.get("eta")) if run.started and run.exit_code is None else "")
        table.add_row(*row)
    return table


def resume_line(run: MatrixRun) -> str:
    """The command that resumes one run on its own (printed whole: it must survive copy and paste)."""
    from proctor.evals.runner import resume_command

    if (run.run_dir / "spec.yaml").is_file():
        return resume_command(run.run_dir)
    return shlex.join(["proctor", *child_argv(run, [])[3:-2]])


def _summary(runs: list[MatrixRun], console: Any) -> None:
    console.print(_table(runs, final=True))
    for run in runs:
        if run.exit_code != 0:
            console.print(f"{run.name}: {resume_line(run)}", markup=False, soft_wrap=True)
