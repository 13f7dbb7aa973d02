"""The judge scorer: verdict parsing, the exact-match shortcut, parse errors, rescoring."""

from __future__ import annotations

import pytest

from proctor.errors import SpecError
from proctor.evals.judge import JUDGE_PROMPT_ID, JudgeParseError, judge_scorer, parse_verdict
from proctor.evals.types import SCORERS, Sample, SolveResult

from .conftest import FakeModels, FakeRole, arun, make_ctx, reply


@pytest.mark.parametrize(
    ("text", "correct"),
    [
        ("extracted_final_answer: 4\nreasoning: matches\ncorrect: yes", True),
        ("extracted_final_answer: 5\nreasoning: differs\ncorrect: no\nconfidence: 90%", False),
        ("**correct:** Yes", True),
        ("CORRECT", True),
        ("INCORRECT", False),
        ("The response is wrong.\n\nVerdict: INCORRECT", False),
        ("Grade: correct.", True),
        ("After comparing, the answer is [[A]]", True),
        ("[[B]]", False),
        ("[[C]]", False),  # not attempted counts as wrong
        ('{"correct": true, "reason": "same"}', True),
        ('Here you go: {"verdict": "incorrect"}', False),
        ("<think>is it CORRECT? maybe not</think>\ncorrect: no", False),
        ("The two answers agree, so I mark it CORRECT here.", True),
    ],
)
def test_verdicts(text: str, correct: bool) -> None:
    assert parse_verdict(text)[0] is correct


@pytest.mark.parametrize("text", ["", "I am not sure.", "It could be CORRECT or INCORRECT.", '{"score": 0.5}'])
def test_unparseable_verdicts_raise(text: str) -> None:
    with pytest.raises(JudgeParseError) as info:
        parse_verdict(text)
    assert info.value.error_class == "scoring_error" and info.value.raw == text


def test_scorer_calls_the_judge_at_temperature_zero() -> None:
    assert SCORERS["judge"] is judge_scorer
    judge = FakeRole([reply("extracted_final_answer: Paris\nreasoning: same city\ncorrect: yes")])
    scorer = judge_scorer({})
    assert scorer.needs_models is True
    sample = Sample(id="q", input="Capital of France?", target="Paris")
    score = arun(
        scorer(sample, SolveResult(output="I believe it's Paris, France."), make_ctx(FakeModels(judge=judge))[0])
    )
    assert score.value == 1.0 and score.answer == "Paris"
    assert score.extra["judge_raw"].endswith("correct: yes") and score.extra["judge_prompt"] == JUDGE_PROMPT_ID
    sent = judge.calls[0]
    assert sent["params"].temperature == 0.0
    prompt = sent["messages"][0]["content"]
    assert "[question]: Capital of France?" in prompt and "[correct_answer]: Paris" in prompt
    assert "I believe it's Paris, France." in prompt


def test_exact_match_shortcut_skips_the_judge() -> None:
    judge = FakeRole([reply("correct: no")])
    sample = Sample(id="q", input="2+2?", target=["4", "four"])
    score = arun(judge_scorer({})(sample, SolveResult(output=" Four. "), make_ctx(FakeModels(judge=judge))[0]))
    assert score.value == 1.0 and score.extra["shortcut"] == "exact" and judge.calls == []
    score = arun(
        judge_scorer({"exact_match": False})(sample, SolveResult(output="4"), make_ctx(FakeModels(judge=judge))[0])
    )
    assert score.value == 0.0 and len(judge.calls) == 1


def test_unparseable_judge_reply_is_a_scoring_error_with_the_raw_text() -> None:
    judge = FakeRole([reply("Hmm, hard to say.")])
    with pytest.raises(JudgeParseError) as info:
        arun(
            judge_scorer({})(
                Sample(id="q", input="x", target="y"), SolveResult(output="z"), make_ctx(FakeModels(judge=judge))[0]
            )
        )
    assert info.value.extra["judge_raw"] == "Hmm, hard to say."  # type: ignore[attr-defined]


def test_rescoring_with_another_judge_changes_only_the_grade() -> None:
    """The same stored result, graded by two judge roles, with a custom prompt on the second."""
    result = SolveResult(output="roughly 3.14", messages=[{"role": "user", "content": "pi?"}])
    sample = Sample(id="q", input="Value of pi to 2 decimals?", target="3.14")
    lenient, strict = FakeRole([reply("correct: yes")]), FakeRole([reply('{"correct": false}')])
    models = FakeModels(judge=lenient, strict_judge=strict)
    first = arun(judge_scorer({})(sample, result, make_ctx(models)[0]))
    second = arun(
        judge_scorer({"role": "strict_judge", "prompt": "Q {question} A {response} T {target}"})(
            sample, result, make_ctx(models)[0]
        )
    )
    assert (first.value, second.value) == (1.0, 0.0)
    assert strict.calls[0]["messages"][0]["content"] == "Q Value of pi to 2 decimals? A roughly 3.14 T 3.14"
    assert second.extra["judge_prompt"].startswith("custom-") and second.extra["judge_role"] == "strict_judge"


def test_judge_spec_errors() -> None:
    with pytest.raises(SpecError, match=r"scorer.exact_match: expected true or false"):
        judge_scorer({"exact_match": "perhaps"})
    with pytest.raises(SpecError, match=r"scorer.temprature: unknown key"):
        judge_scorer({"temprature": 0})
