"""Built-in scorers: exact, includes, regex, numeric, choice, boxed.

All of them are pure functions of (output, target): cheap, deterministic, and safe to re-run by
``proctor rescore``. The judge scorer (a model call) lives in ``proctor.evals.judge``.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import Field

from proctor._validation import StrictModel
from proctor.evals.options import validate_options
from proctor.evals.solvers import LETTERS
from proctor.evals.types import Sample, Score, SolveContext, SolveResult, register_scorer

_PUNCT = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(
    r"[-+]?\d+\s*/\s*\d+(?![\d.])|[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"
)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


class Normalise(StrictModel):
    ignore_case: bool = True
    ignore_punctuation: bool = False
    ignore_whitespace: bool = True
    """Strip the ends and collapse runs of white space."""

    def __call__(self, text: str) -> str:
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(_PUNCT)
        if self.ignore_whitespace:
            text = _SPACES.sub(" ", text).strip()
        return text


def targets(sample: Sample) -> list[str]:
    """A sample's acceptable answers (a target may be a list of alternatives)."""
    if sample.target is None:
        return []
    if isinstance(sample.target, list):
        return [str(t) for t in sample.target]
    return [str(sample.target)]


class _PureScorer:
    """Adapts a pure ``(output, targets, sample) -> Score`` function to the Scorer protocol."""

    needs_models = False

    def __init__(self, fn: Callable[[str, list[str], Sample], Score]) -> None:
        self.fn = fn

    async def __call__(self, sample: Sample, result: SolveResult, ctx: SolveContext) -> Score:
        return self.fn(result.output, targets(sample), sample)


def _verdict(ok: bool, answer: str | None, explanation: str | None = None) -> Score:
    return Score(value=1.0 if ok else 0.0, answer=answer, explanation=explanation)


# --------------------------------------------------------------------------- exact / includes
class ExactOptions(Normalise):
    pass


@register_scorer("exact")
def exact(options: Mapping[str, Any]) -> _PureScorer:
    norm: ExactOptions = validate_options(ExactOptions, options, "scorer")

    def score(output: str, wanted: list[str], sample: Sample) -> Score:
        got = norm(output)
        return _verdict(any(got == norm(t) for t in wanted), output)

    return _PureScorer(score)


@register_scorer("includes")
def includes(options: Mapping[str, Any]) -> _PureScorer:
    norm: ExactOptions = validate_options(ExactOptions, options, "scorer")

    def score(output: str, wanted: list[str], sample: Sample) -> Score:
        got = norm(output)
        return _verdict(any(norm(t) in got for t in wanted), output)

    return _PureScorer(score)


# --------------------------------------------------------------------------- regex
class RegexOptions(Normalise):
    pattern: str | None = None
    """Extracts the answer from the output (group 1 if it has groups); without it the target is
    a regular expression searched for in the output."""
    which: Literal["first", "last"] = "last"

    def compiled(self) -> re.Pattern[str] | None:
        if self.pattern is None:
            return None
        try:
            return re.compile(self.pattern, re.S)
        except re.error as exc:
            from proctor.errors import SpecError

            raise SpecError(f"scorer.pattern is not a valid regular expression: {exc}") from None


@register_scorer("regex")
def regex(options: Mapping[str, Any]) -> _PureScorer:
    opts: RegexOptions = validate_options(RegexOptions, options, "scorer")
    pattern = opts.compiled()

    def score(output: str, wanted: list[str], sample: Sample) -> Score:
        if pattern is None:
            flags = re.I if opts.ignore_case else 0
            ok = any(re.search(t, output, flags) for t in wanted)
            return _verdict(ok, output)
        matches = list(pattern.finditer(output))
        if not matches:
            return _verdict(False, None, "pattern not found in output")
        m = matches[-1] if opts.which == "last" else matches[0]
        answer = m.group(1) if m.groups() else m.group(0)
        return _verdict(any(opts(answer) == opts(t) for t in wanted), answer)

    return _PureScorer(score)


# --------------------------------------------------------------------------- numeric
def parse_number(text: str) -> float | None:
    """A number written as 1,234.5 or 3/4 or 12% (as 12) or 1e3; None if it is not one."""
    text = text.strip().rstrip(".").replace("$", "").replace("%", "").strip()
    frac = re.fullmatch(r"([-+]?\d+)\s*/\s*(\d+)", text)
    if frac:
        den = int(frac.group(2))
        return int(frac.group(1)) / den if den else None
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def find_numbers(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text)]


class NumericOptions(StrictModel):
    abs_tol: float = Field(default=1e-6, ge=0)
    rel_tol: float = Field(default=0.0, ge=0)
    which: Literal["first", "last"] = "last"
    """Which number in the output is the answer when there are several."""
    extract: bool = True
    """Look inside \\boxed{} / <answer> first."""


def numbers_equal(got: float, want: float, opts: NumericOptions) -> bool:
    return (
        math.isclose(got, want, abs_tol=opts.abs_tol, rel_tol=opts.rel_tol)
        if opts.rel_tol
        else (abs(got - want) <= opts.abs_tol)
    )


@register_scorer("numeric")
def numeric(options: Mapping[str, Any]) -> _PureScorer:
    opts: NumericOptions = validate_options(NumericOptions, options, "scorer")

    def score(output: str, wanted: list[str], sample: Sample) -> Score:
        region = (extract_final_answer(output) or output) if opts.extract else output
        found = find_numbers(region)
        if not found:
            return _verdict(False, None, "no number in output")
        answer = found[-1] if opts.which == "last" else found[0]
        got = parse_number(answer)
        targets_num = [n for n in (parse_number(t) for t in wanted) if n is not None]
        if got is None or not targets_num:
            return _verdict(False, answer, "target is not a number" if not targets_num else None)
        return _verdict(any(numbers_equal(got, t, opts) for t in targets_num), answer)

    return _PureScorer(score)


# --------------------------------------------------------------------------- choice
_CHOICE_PATTERNS = [
    re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*[\(\[]?([A-Z])[\)\]]?(?![A-Za-z])", re.I),
    re.compile(r"^\s*[\(\[]?([A-Z])[\)\].:]?(?:\s|$)"),
    re.compile(r"[\(\[]([A-Z])[\)\]]"),
    re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])"),
]


def extract_letter(output: str, n_choices: int) -> str | None:
    valid = set(LETTERS[: max(n_choices, 1)])
    region = extract_final_answer(output) or output
    for pattern in _CHOICE_PATTERNS:
        for m in pattern.finditer(region):
            letter = m.group(1).upper()
            if letter in valid:
                return letter
    return None


def target_letter(target: str, choices: list[str]) -> str | None:
    t = target.strip()
    if len(t) == 1 and t.upper() in LETTERS[: len(choices)]:
        return t.upper()
    if t.isdigit() and int(t) < len(choices):
        return LETTERS[int(t)]
    for i, c in enumerate(choices):
        if c.strip().lower() == t.lower():
            return LETTERS[i]
    return None


@register_scorer("choice")
def choice(options: Mapping[str, Any]) -> _PureScorer:
    validate_options(StrictModel, options, "scorer")

    def score(output: str, wanted: list[str], sample: Sample) -> Score:
        choices = sample.choices or []
        got = extract_letter(output, len(choices) or 26)
        want = {w for w in (target_letter(t, choices or list(LETTERS)) for t in wanted) if w}
        return _verdict(got is not None and got in want, got, None if got else "no choice letter in output")

    return _PureScorer(score)


# --------------------------------------------------------------------------- boxed
def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, with nested braces balanced."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def extract_final_answer(text: str) -> str | None:
    """The explicitly marked answer: ``\\boxed{...}`` or ``<answer>...</answer>``, if any."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG.findall(text)
    return tags[-1].strip() if tags else None


class BoxedOptions(Normalise, NumericOptions):
    compare: Literal["auto", "exact", "numeric"] = "auto"
    """``auto``: numerically when both sides are numbers, else exactly (after normalisation)."""


@register_scorer("boxed")
def boxed(options: Mapping[str, Any]) -> _PureScorer:
    opts: BoxedOptions = validate_options(BoxedOptions, options, "scorer")

    def score(output: str, wanted: list[str], sample: Sample) -> Score:
        answer = extract_final_answer(output)
        if answer is None:
            return _verdict(False, None, "no \\boxed{} or <answer> in output")
        for t in wanted:
            if opts.compare != "exact":
                a, b = parse_number(answer.replace("\\%", "")), parse_number(t)
                if a is not None and b is not None:
                    if numbers_equal(a, b, opts):
                        return _verdict(True, answer)
                    continue
                if opts.compare == "numeric":
                    continue
            if opts(answer) == opts(t):
                return _verdict(True, answer)
        return _verdict(False, answer)

    return _PureScorer(score)
