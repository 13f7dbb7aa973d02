"""Locating a continuation's logprobs by text offsets (no tokenizer), stop strings, and task lookup."""

from __future__ import annotations

import pytest

from proctor.harness.bridge import continuation_logprob, cut_at_stops
from proctor.testing._replies import echo_logprobs


def test_the_continuation_is_the_tokens_after_the_context_and_before_the_generated_one() -> None:
    logprobs = echo_logprobs(["Question: What is 2 + 3?\nAnswer:", " 5", "5"], top=True)
    context = "Question: What is 2 + 3?\nAnswer:"
    assert continuation_logprob(logprobs, len(context), len(context) + 2) == (pytest.approx(-0.1), True)
    wrong = echo_logprobs([context, " 6", "5"], top=True)
    assert continuation_logprob(wrong, len(context), len(context) + 2) == (pytest.approx(-1.5), False)


def test_a_token_straddling_the_boundary_counts_as_the_continuations() -> None:
    # The server merged "ab" across the boundary between context "xa" and continuation "b c".
    logprobs = {
        "tokens": ["x", "ab", " c"],
        "text_offset": [0, 1, 3],
        "token_logprobs": [None, -1.0, -2.0],
        "top_logprobs": [None, {"ab": -1.0}, {" d": -0.5}],
    }
    assert continuation_logprob(logprobs, 2, 5) == (pytest.approx(-3.0), False)


def test_a_rolling_loglikelihood_skips_the_first_token_only() -> None:
    logprobs = {"tokens": ["a", " b"], "text_offset": [0, 1], "token_logprobs": [None, -1.5], "top_logprobs": None}
    assert continuation_logprob(logprobs, 0, 3, skip_first=True)[0] == pytest.approx(-1.5)
    with pytest.raises(ValueError, match="no logprob"):
        continuation_logprob(logprobs, 0, 3)


def test_answers_are_cut_at_every_stop_string() -> None:
    assert cut_at_stops("42\nQuestion: next", ["Question:", "\n"]) == "42"
    assert cut_at_stops("42", ["\n"]) == "42"


def test_lm_evals_own_zoo_is_not_indexed_when_include_path_has_every_task() -> None:
    pytest.importorskip("lm_eval")
    from pathlib import Path

    from proctor.harness.run import _task_manager

    tasks = Path(__file__).resolve().parents[2] / "examples" / "lm-eval" / "tasks"
    manager = _task_manager(["proctor_arith", "proctor_arith_mc"], tasks)
    assert sorted(manager.all_tasks) == ["proctor_arith", "proctor_arith_mc"]  # not lm-eval's thousands
