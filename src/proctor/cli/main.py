"""The ``proctor`` typer app and its one error reporter.

Every ``ProctorError`` is printed as ``Error: message`` (plus a hint) with its exit code and no
traceback; Ctrl-C exits 130. Anything else is a crash: its traceback is printed (its last line
names the error) and the exit code is ``CRASH_EXIT_CODE`` (3), never 1, which means "finished,
some samples errored". Command modules
are imported lazily inside their commands, so ``proctor --help`` and ``proctor run`` do not pay
for the server's imports.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from proctor import __version__
from proctor.errors import CRASH_EXIT_CODE, EXIT_INTERRUPTED, EXIT_OK, ProctorError

app = typer.Typer(
    name="proctor",
    help="Run LLM evaluations as durable, observable jobs: locally, or on a shared server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"proctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Run LLM evaluations as durable, observable jobs: locally, or on a shared server."""


# Command groups; a group whose module is absent (an optional part) is simply not offered.
_GROUPS = (
    "proctor.cli.run",
    "proctor.cli.analyze",
    "proctor.cli.server_cmd",
    "proctor.cli.remote",
    "proctor.cli.tunnel_cmd",
    "proctor.cli.retrieval",
    "proctor.cli.lm_eval",
    "proctor.cli.view",
)
for _name in _GROUPS:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:
        if _exc.name != _name:
            raise
        continue
    _module.register(app)


def report_error(exc: ProctorError) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(
        f"[bold red]Error:[/bold red] {exc.message}", markup=True
    ) if "[" not in exc.message else console.print(f"Error: {exc.message}", markup=False)
    if exc.hint:
        console.print(f"  hint: {exc.hint}", markup=False)


def main() -> None:
    try:
        rc = app(standalone_mode=False)
    except ProctorError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - e.g. pyo3's PanicException, which is no Exception
        # Usage errors from click (typer vendors its own copy, so match by shape, not class).
        if type(exc).__name__ == "Abort":
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        if hasattr(exc, "show"):
            exit_code = getattr(exc, "exit_code", None)
            if isinstance(exit_code, int):
                exc.show()
                sys.exit(exit_code)
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(CRASH_EXIT_CODE)
    sys.exit(rc if isinstance(rc, int) else EXIT_OK)


if __name__ == "__main__":
    main()
