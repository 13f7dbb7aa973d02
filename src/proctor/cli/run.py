"""``proctor run`` and ``proctor rescore``: the local engine's commands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from proctor._loop import run as run_loop
from proctor.batch import is_matrix
from proctor.cli._console import make_console
from proctor.errors import EXIT_SAMPLE_ERRORS, InputError


def _summary(stats: dict[str, Any], run_dir: Path, *, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{stats['name']} — {stats['model']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    counts = stats["counts"]
    acc = stats["accuracy"]
    if acc["value"] is not None:
        lo, hi = acc["ci95"]
        table.add_row(
            "accuracy", f"{acc['value']:.1%}  ({acc['correct']:g}/{acc['denominator']}, 95% CI {lo:.1%}–{hi:.1%})"
        )
    else:
        table.add_row("accuracy", "-  (nothing scored yet)")
    table.add_row(
        "samples",
        f"{counts['total']} total: {counts['scored']} scored, {stats['errors']['total']} errors, "
        f"{counts['skipped']} skipped, {counts['pending'] + counts['running']} not run",
    )
    errors = stats["errors"]
    if errors["total"]:
        classes = ", ".join(f"{k} {v}" for k, v in errors["by_class"].items())
        table.add_row("errors", f"{errors['infra']} infra, {errors['other']} other ({classes}) — not counted as wrong")
    if stats["skipped"]:
        table.add_row("skipped", ", ".join(f"{k}: {v}" for k, v in stats["skipped"].items()))
    if stats["outcomes"]:
        table.add_row("outcomes", ", ".join(f"{k} {v}" for k, v in stats["outcomes"].items()))
    for cat, cat_acc in list(stats["by_category"].items())[:20]:
        if cat_acc["value"] is not None:
            table.add_row(f"  {cat}", f"{cat_acc['value']:.1%} ({cat_acc['correct']:g}/{cat_acc['denominator']})")
    table.add_row("tokens", f"{stats['tokens']['in']:,} in, {stats['tokens']['out']:,} out")
    # Resumed: the calls and the wall time are this session's, while the counts cover the run.
    session = " this session" if stats.get("resumed_samples") else ""
    latency = stats["latency"]["model_call_s"]
    if latency:
        table.add_row(
            "model calls",
            f"{latency['n']}{session}, p50 {latency['p50']:.3f} s, "
            f"p90 {latency['p90']:.3f} s, p99 {latency['p99']:.3f} s",
        )
    wall = f"{stats['wall_time_s']:.1f} s"
    if session:
        wall += f" this session ({stats['resumed_samples']} samples were finished before)"
    table.add_row("wall time", wall)
    # A server job's directory is the server's own: whoever reads its log (submit, logs) gets
    # the results elsewhere, and submit prints where it downloaded them.
    if not os.environ.get("PROCTOR_JOB_ID"):
        table.add_row("run directory", str(run_dir))
    console.print(table)


def run(
    ctx: typer.Context,
    specs: Annotated[
        list[Path],
        typer.Argument(
            help="Task spec (YAML); several specs run as a matrix (see --parallel).",
            show_default=False,
            metavar="SPEC",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run directory (default: runs/SPEC-NAME). Running again into the same directory resumes.",
        ),
    ] = None,
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            metavar="ROLE=URL@NAME",
            help="Send a role's requests elsewhere, e.g. subject=http://127.0.0.1:8000/v1@qwen.",
        ),
    ] = [],  # noqa: B006
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Run at most N samples.")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Samples in flight at once.")
    ] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Run the samples that errored again.")] = False,
    force_new: Annotated[
        bool,
        typer.Option(
            "--force-new",
            help="Start afresh when --out holds an incomparable run (the old one is moved aside, not deleted).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show where each role's requests would go, with replica health; run no sample."),
    ] = False,
    progress: Annotated[str, typer.Option("--progress", help="auto | rich | plain | none.")] = "auto",
    grace: Annotated[float, typer.Option("--grace", min=0, help="Seconds in-flight samples get after Ctrl-C.")] = 30.0,
    report_interval: Annotated[
        float,
        typer.Option(
            "--report-interval", min=0.1, help="Seconds between refreshes of the output files during the run."
        ),
    ] = 10.0,
    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel",
            "-P",
            min=1,
            help="A matrix (several specs, or one role given by several --model): runs at once, each in "
            "--out/NAME (default runs/NAME); the same command again resumes them.",
        ),
    ] = None,
    executor: Annotated[
        str | None, typer.Option("--executor", help="local | ray (default: the spec's executor, else local).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Join this Ray cluster (default: a private local Ray).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Ray actors (default: the spec's, else 2).")
    ] = None,
) -> None:
    """Run an evaluation (resumable: run it again to continue where it stopped).

    Exit codes: 0 all samples done, 1 finished but some samples errored, 2 bad input,
    3 crashed, 130 interrupted.
    """
    from proctor.evals.runner import RunOptions, resume_command
    from proctor.evals.spec import (
        apply_overrides,
        apply_private_endpoints,
        is_lm_eval_spec,
        parse_spec,
        read_spec_data,
    )
    from proctor.executors.choose import build_runner

    if progress not in ("auto", "rich", "plain", "none"):
        raise InputError(f"--progress must be one of auto, rich, plain, none (got {progress!r})")
    if is_matrix(specs, model):  # several evaluations: each its own `proctor run` (cli/matrix.py)
        from proctor.cli.matrix import given_engine_args, run_matrix

        # Every option given here reaches every run, as given: read from the parsed command line,
        # so an option added to this command later needs no second list.
        engine_args = given_engine_args(ctx)
        raise typer.Exit(
            run_matrix(specs, model, parallel=parallel, out=out, progress=progress, dry_run=dry_run, args=engine_args)
        )
    spec = specs[0]
    data = read_spec_data(spec)
    # The engine's options, the same for a task spec and an lm_eval: spec (RunOptions minus --out).
    options: dict[str, Any] = dict(
        retry_errors=retry_errors, force_new=force_new, grace=grace, progress=progress, report_interval=report_interval
    )
    if is_lm_eval_spec(data):
        if executor not in (None, "local") or ray_address is not None or workers is not None:
            raise InputError(
                "an lm_eval: spec runs on the local executor only (--executor, --ray-address and --workers "
                "are for task specs)",
                hint="drop those options: lm-eval's requests already go out concurrently from one process",
            )
        raise typer.Exit(
            _run_lm_eval(
                data, spec, out=out, model=model, limit=limit, concurrency=concurrency, options=options, dry_run=dry_run
            )
        )
    task = apply_overrides(parse_spec(data, source=str(spec)), model, concurrency)
    task = apply_private_endpoints(task, os.environ)
    if dry_run:
        raise typer.Exit(_dry_run(task, spec.parent.resolve()))
    run_dir = (out or Path("runs") / task.name).resolve()
    console = make_console()
    runner, ray_flags = build_runner(
        task,
        executor=executor,
        ray_address=ray_address,
        workers=workers,
        spec_dir=spec.parent.resolve(),
        options=RunOptions(out=run_dir, **options),
        limit=limit,
        console=console,
    )
    result = runner.run()
    if progress != "none" or result.exit_code:
        _summary(result.stats, run_dir, console=console)
    # Never wrapped nor marked up: the command must survive a copy and paste as printed.
    if result.interrupted:
        console.print(f"interrupted; resume with: {resume_command(run_dir)}{ray_flags}", soft_wrap=True, markup=False)
    elif result.exit_code == EXIT_SAMPLE_ERRORS:
        console.print(
            f"some samples errored; re-run them with: {resume_command(run_dir)}{ray_flags} --retry-errors",
            soft_wrap=True,
            markup=False,
        )
    raise typer.Exit(result.exit_code)


def _run_lm_eval(
    data: dict[str, Any],
    spec: Path,
    *,
    out: Path | None,
    model: list[str],
    limit: int | None,
    concurrency: int | None,
    options: dict[str, Any],
    dry_run: bool = False,
) -> int:
    """A spec with ``lm_eval:``: lm-eval's tasks through proctor's model layer (proctor.harness)."""
    from proctor.evals.runner import RunOptions, resume_command
    from proctor.evals.spec import apply_overrides, apply_private_endpoints
    from proctor.harness.run import run_lm_eval
    from proctor.harness.spec import parse_lm_eval_spec

    task = apply_overrides(parse_lm_eval_spec(data, source=str(spec)), model, concurrency)
    task = apply_private_endpoints(task, os.environ)
    if limit:
        task = task.model_copy(update={"lm_eval": task.lm_eval.model_copy(update={"limit": limit})})
    if dry_run:
        return _dry_run(task, spec.parent.resolve())
    run_dir = (out or Path("runs") / task.name).resolve()
    console = make_console()
    result = run_lm_eval(
        task, spec_dir=spec.parent.resolve(), options=RunOptions(out=run_dir, **options), console=console
    )
    for block in result.stats.get("metrics") or []:
        stderr = f" ± {block['stderr']:.4f}" if block["stderr"] is not None else ""
        console.print(
            f"{block['task']}  {block['metric']} ({block['filter']}): {block['value']:.4f}{stderr}", markup=False
        )
    if result.message:
        console.print(result.message, markup=False)
    if result.interrupted:
        console.print(f"interrupted; resume with: {resume_command(run_dir)}", soft_wrap=True, markup=False)
    elif result.exit_code == EXIT_SAMPLE_ERRORS:
        console.print(
            f"re-run the failed requests with: {resume_command(run_dir)} --retry-errors", soft_wrap=True, markup=False
        )
    return result.exit_code


def _dry_run(task: Any, spec_dir: Path) -> int:
    from rich.table import Table

    from proctor.errors import NoHealthyReplicaError
    from proctor.models.router import ModelRouter

    async def probe() -> tuple[list[dict[str, Any]], str | None]:
        router = ModelRouter(task.models, base_dir=spec_dir)
        problem = None
        try:
            await router.start()
        except NoHealthyReplicaError as exc:
            problem = str(exc)
            await router.check_health()
        try:
            return router.describe(), problem
        finally:
            await router.aclose()

    described, problem = run_loop(probe())
    table = Table(title=f"{task.name}: where requests go (no sample is run)", title_justify="left")
    for col in ("role", "model", "replica", "healthy", "limit"):
        table.add_column(col)
    for role in described:
        for i, rep in enumerate(role["replicas"]):
            table.add_row(
                role["role"] if i == 0 else "",
                role["model"] if i == 0 else "",
                rep["url"],
                "yes" if rep.get("healthy") else f"no ({rep.get('last_error') or 'unreachable'})",
                str(rep.get("concurrency_limit", "")),
            )
    console = make_console()
    console.print(table)
    if getattr(task, "solver", None) is not None:  # an lm_eval: spec has no solver, so no services
        _dry_run_services(task, spec_dir, console)
    if problem:
        console.print(f"[red]{problem}[/red]")
        return 2
    return 0


def _dry_run_services(task: Any, spec_dir: Path, console: Any) -> None:
    """Each retrieval service the run would reuse, or start (with its command line)."""
    import shlex

    import aiohttp

    from proctor.models.launch import probe_retrieval, resolve_index, retrieval_services

    services = retrieval_services(task.solver.model_dump())

    async def probe_all() -> list[tuple[bool, str]]:
        async with aiohttp.ClientSession() as session:
            return [await probe_retrieval(session, s.base_url) for s in services]

    for service, (ok, detail) in zip(services, run_loop(probe_all()) if services else [], strict=True):
        if ok:
            console.print(f"retrieval service {service.url}: healthy ({detail}); would be reused", markup=False)
        else:
            argv = shlex.join(service.argv(str(resolve_index(service, spec_dir))))
            console.print(f"retrieval service {service.url}: not running ({detail}); would start: {argv}", markup=False)


def rescore(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `proctor run`.")],
    scorer: Annotated[
        str | None, typer.Option("--scorer", help="Score with another scorer type (e.g. numeric, boxed).")
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option("--judge", metavar="URL@NAME", help="Re-grade with another judge model (for the judge scorer)."),
    ] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1)] = None,
) -> None:
    """Score a finished run again, without calling the model under evaluation."""
    from proctor.evals.rescore import rescore_run

    console = make_console()
    stats = rescore_run(run_dir.resolve(), scorer=scorer, judge=judge, concurrency=concurrency)
    _summary(stats, run_dir.resolve(), console=console)


def register(app: typer.Typer) -> None:
    app.command("run", no_args_is_help=True)(run)
    app.command("rescore", no_args_is_help=True)(rescore)
