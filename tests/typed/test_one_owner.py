"""Each shared string and code has one owner in ``src/proctor`` (issue 10).

A copy that drifts (a renamed prefix, a new exit code) breaks the process on the other side
silently; these checks read the source so a second copy fails here instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proctor.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_SAMPLE_ERRORS, SpecError
from proctor.evals.progress import PROGRESS_PREFIX, progress_record
from proctor.evals.spec import ModelTarget

SRC = Path(__file__).resolve().parents[2] / "src" / "proctor"

# pattern -> the one module (relative to src/proctor) allowed to hold it (None: no module)
OWNERS: dict[str, str | None] = {
    r"""["']PROCTOR_PROGRESS """: "evals/progress.py",
    r"""extra=["']forbid["']""": "_validation.py",
    r"""e(\.get\(|\[)['"]msg['"]""": "_validation.py",
    r"""rpartition\(["']@["']\)""": "evals/spec.py",
    r"""(sys\.exit|typer\.Exit|os\._exit)\((130|[0-3])\)""": None,  # a literal code: use errors.EXIT_*
    r"""^EXIT_\w+(, \w+)* = """: "errors.py",
}


@pytest.mark.parametrize("pattern", sorted(OWNERS))
def test_a_shared_fact_is_written_in_its_owner_only(pattern: str) -> None:
    owner = OWNERS[pattern]
    found = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if re.search(pattern, path.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert found == ([owner] if owner else [])


def test_no_module_imports_the_dataset_readers_private_helpers() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if re.search(r"from proctor\.evals\.dataset import .*\b_\w+", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_exit_codes_are_the_documented_ones() -> None:
    assert (EXIT_OK, EXIT_SAMPLE_ERRORS, EXIT_BAD_INPUT, EXIT_INTERRUPTED) == (0, 1, 2, 130)


def test_a_progress_line_reads_the_same_as_text_and_as_bytes() -> None:
    line = PROGRESS_PREFIX + '{"done": 3, "total": 9}'
    assert progress_record(line) == progress_record(line.encode()) == {"done": 3, "total": 9}
    assert progress_record("PROCTOR_PROGRESS [1]") is None and progress_record("plain log line") is None
    assert progress_record(PROGRESS_PREFIX.encode() + b"{torn") is None


@pytest.mark.parametrize(
    ("text", "role", "url", "name"),
    [
        ("subject=http://127.0.0.1:8000/v1@qwen", "subject", "http://127.0.0.1:8000/v1", "qwen"),
        ("judge=http://127.0.0.1:8000/v1/", "judge", "http://127.0.0.1:8000/v1", None),
        ("subject=http://127.0.0.1:8000/v1@org/model@v2", "subject", "http://127.0.0.1:8000/v1@org/model", "v2"),
    ],
)
def test_role_url_name_is_parsed_once_for_every_command(text: str, role: str, url: str, name: str | None) -> None:
    assert ModelTarget.parse(text) == ModelTarget(role=role, url=url, name=name)


@pytest.mark.parametrize("text", ["subject", "=http://h/v1@m", "subject="])
def test_a_malformed_model_flag_names_the_expected_shape(text: str) -> None:
    with pytest.raises(SpecError, match="ROLE=URL@NAME"):
        ModelTarget.parse(text)
