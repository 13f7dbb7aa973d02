"""The one way CLI commands make a rich console."""

from __future__ import annotations

import sys
from typing import Any


def make_console(*, stderr: bool = False) -> Any:
    """A console that does not squeeze tables to 80 columns when output goes to a file or pipe."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width)
