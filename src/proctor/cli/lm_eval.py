"""``proctor lm-eval``: ``lm_eval run``'s flags for the API model types, run as an ``lm_eval:`` spec.

An lm-eval user keeps their command line and changes ``lm_eval`` into ``proctor lm-eval``; the
flags become the spec that ``proctor run`` runs (proctor.harness), so both commands behave alike
(ledger, resume, retries, progress, outputs). The flags are parsed here rather than by typer so
that a flag proctor does not serve is refused in one line that says what to do, like lm-eval's
own parser would, instead of a usage dump.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NoReturn

import typer

from proctor.errors import InputError
from proctor.harness.args import LmEvalArgs, spec_data

HINT = "proctor lm-eval serves the API model types; run other flags with lm-eval itself"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(f"proctor lm-eval: {message}", hint=HINT)


def _parser() -> _Parser:
    p = _Parser(prog="proctor lm-eval", add_help=False, allow_abbrev=False)
    p.add_argument("--model", required=True)
    p.add_argument("--model_args", default="")
    p.add_argument("--tasks", required=True)
    p.add_argument("--num_fewshot", type=int)
    p.add_argument("--limit", type=float)
    p.add_argument("--gen_kwargs", default="")
    p.add_argument("--apply_chat_template", nargs="?", const=True, default=False)
    p.add_argument("--include_path")
    p.add_argument("--output_path")
    p.add_argument("--log_samples", action="store_true")
    p.add_argument("--seed")
    # proctor's own run options, as `proctor run` has them.
    p.add_argument("--retry-errors", dest="retry_errors", action="store_true")
    p.add_argument("--force-new", dest="force_new", action="store_true")
    p.add_argument("--progress", default="auto", choices=["auto", "rich", "plain", "none"])
    return p


def build_spec(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``lm_eval:`` spec data and the run options that ``argv`` (lm-eval's flags) stand for."""
    if argv[:1] == ["run"]:  # `lm_eval run --model ...` and `lm_eval --model ...` both
        argv = argv[1:]
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        raise InputError(f"proctor lm-eval: unsupported argument(s): {' '.join(unknown)}", hint=HINT)
    data = spec_data(
        LmEvalArgs(
            model=args.model,
            tasks=args.tasks,
            model_args=args.model_args,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            gen_kwargs=args.gen_kwargs,
            apply_chat_template=args.apply_chat_template,
            include_path=str(Path(args.include_path).resolve()) if args.include_path else None,
            seed=args.seed,
        ),
        who="proctor lm-eval",
    )
    options = {
        "out": Path(args.output_path) if args.output_path else None,
        "retry_errors": args.retry_errors,
        "force_new": args.force_new,
        "progress": args.progress,
    }
    return data, options


def lm_eval_cmd(ctx: typer.Context) -> None:
    """Run lm-eval tasks with lm-eval's own flags: `lm_eval run --model local-completions ...`
    becomes `proctor lm-eval --model local-completions ...` (durable, resumable; see docs/lm-eval.md).

    --output_path is the run directory (run again into it to resume); lm-eval's files go to
    OUTPUT_PATH/lm_eval/MODEL/. Also: --retry-errors, --force-new, --progress.
    """
    from proctor.cli.run import _run_lm_eval

    data, options = build_spec(list(ctx.args))
    out = options.pop("out")
    # The spec "lives" in the working directory: relative paths are the command line's.
    spec_path = Path.cwd() / "proctor-lm-eval-command"
    raise typer.Exit(
        _run_lm_eval(
            data,
            spec_path,
            out=out,
            model=[],
            limit=None,
            concurrency=None,
            options={**options, "grace": 30.0, "report_interval": 10.0},
        )
    )


def register(app: typer.Typer) -> None:
    app.command(
        "lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, no_args_is_help=True
    )(lm_eval_cmd)
