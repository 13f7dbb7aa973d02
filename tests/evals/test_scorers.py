from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proctor.errors import SpecError
from proctor.evals.registry import build_scorer
from proctor.evals.spec import ComponentConfig
from proctor.evals.types import Sample, SolveContext, SolveResult


def score(kind: str, output: str, target: Any, *, choices: list[str] | None = None, **options: Any) -> float:
    scorer = build_scorer(ComponentConfig(type=kind, **options))
    sample = Sample(id="s", input="q", target=target, choices=choices)
    ctx = SolveContext(models=None, emit=lambda e: None)  # type: ignore[arg-type]
    return asyncio.run(scorer(sample, SolveResult(output=output), ctx)).value


def test_exact_normalisation() -> None:
    assert score("exact", "  Paris ", "paris") == 1.0
    assert score("exact", "Paris", "paris", ignore_case=False) == 0.0
    assert score("exact", "Paris!", "paris") == 0.0
    assert score("exact", "Paris!", "paris", ignore_punctuation=True) == 1.0
    assert score("exact", "Lyon", ["paris", "lyon"]) == 1.0


def test_includes() -> None:
    assert score("includes", "The capital is Paris.", "paris") == 1.0
    assert score("includes", "The capital is Lyon.", "paris") == 0.0


def test_regex_extract_and_target_pattern() -> None:
    assert score("regex", "Answer: 42", "42", pattern=r"Answer:\s*(\d+)") == 1.0
    assert score("regex", "Answer: 41", "42", pattern=r"Answer:\s*(\d+)") == 0.0
    assert score("regex", "colour or color", r"colou?r") == 1.0
    with pytest.raises(SpecError, match="scorer.pattern"):
        build_scorer(ComponentConfig(type="regex", pattern="(unclosed"))


def test_numeric() -> None:
    assert score("numeric", "So the total is 1,234.", "1234") == 1.0
    assert score("numeric", "Answer: 3/4", "0.75") == 1.0
    assert score("numeric", "first 5 then 7", "7") == 1.0
    assert score("numeric", "first 5 then 7", "5", which="first") == 1.0
    assert score("numeric", "about 3.14", "3.1416", abs_tol=0.01) == 1.0
    assert score("numeric", "about 3.14", "3.1416") == 0.0
    assert score("numeric", "no digits", "3") == 0.0
    assert score("numeric", "I think 9 but \\boxed{12}", "12") == 1.0


def test_choice_letters() -> None:
    choices = ["red", "green", "blue", "black"]
    assert score("choice", "B", "B", choices=choices) == 1.0
    assert score("choice", "The answer is (C).", "C", choices=choices) == 1.0
    assert score("choice", "Answer: c", "C", choices=choices) == 1.0
    assert score("choice", "A) red", "green", choices=choices) == 0.0
    assert score("choice", "B", "1", choices=choices) == 1.0  # index target
    assert score("choice", "B", "green", choices=choices) == 1.0  # text target
    assert score("choice", "no idea", "B", choices=choices) == 0.0


def test_boxed_and_answer_tags() -> None:
    assert score("boxed", "so \\boxed{\\frac{1}{2}} yes", "\\frac{1}{2}") == 1.0
    assert score("boxed", "\\boxed{0.50}", "0.5") == 1.0
    assert score("boxed", "<answer> Paris </answer>", "paris") == 1.0
    assert score("boxed", "Paris", "paris") == 0.0


def test_unknown_scorer_lists_known_ones() -> None:
    with pytest.raises(SpecError) as info:
        build_scorer(ComponentConfig(type="exactt"))
    assert "unknown scorer 'exactt'" in str(info.value) and "exact" in str(info.value)


def test_unknown_option_is_named() -> None:
    with pytest.raises(SpecError, match="scorer.tolerance: unknown key"):
        build_scorer(ComponentConfig(type="numeric", tolerance=3))
