"""Creating the directories a command writes into, with a user's error instead of a traceback."""

from __future__ import annotations

from pathlib import Path

from proctor.errors import InputError


def ensure_directory(path: Path, *, what: str) -> Path:
    """``mkdir -p path``; when that cannot be (a file is in the way), one line naming ``what``.

    The paths come straight from flags (``--out``, ``--data``), so a mistake there is bad input
    (exit 2), not a bug.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(
            f"{what} {path} is a file, not a directory",
            hint="give the path of a directory (it is created when missing)",
        ) from None
    except OSError as exc:
        raise InputError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    return path
