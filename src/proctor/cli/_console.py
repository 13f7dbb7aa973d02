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


class LazyConsole:
    """A module-level console that imports rich only when something is printed.

    Every `proctor` invocation imports every command module; rich costs ~30 ms to import, which
    `proctor run` would otherwise pay before its first request.
    """

    def __init__(self, *, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    @property
    def real(self) -> Any:
        """The rich Console itself, for APIs that want one (e.g. ``rich.progress.Progress``)."""
        if self._console is None:
            self._console = make_console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
