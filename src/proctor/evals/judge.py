"""The ``judge`` scorer: a judge model grades the output against the reference answer.

Grading with a model is only trustworthy if it is reproducible and auditable, so:

- the default prompt is pinned (``DEFAULT_JUDGE_PROMPT``, identified by ``JUDGE_PROMPT_ID`` in every
  score) and any replacement is recorded by its hash;
- temperature is 0 unless the spec says otherwise;
- an exact-match shortcut (optional, on by default) grades obvious matches without a call;
- the judge's raw reply is kept in ``Score.extra["judge_raw"]``;
- the verdict is parsed from the common shapes (``correct: yes``, ``CORRECT``/``INCORRECT``,
  ``[[A]]``/``[[B]]``, JSON ``{"correct": true}``); a reply that says neither raises
  ``JudgeParseError``, which the engine records as a *scoring error*, never as "wrong".
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from proctor._validation import StrictModel
from proctor.errors import ProctorError
from proctor.evals.content import question_text
from proctor.evals.options import validate_options
from proctor.evals.scorers import targets as sample_targets
from proctor.evals.types import Sample, Score, SolveContext, SolveResult, register_scorer
from proctor.models.config import GenerateParams

__all__ = [
    "DEFAULT_JUDGE_PROMPT",
    "JUDGE_PROMPT_ID",
    "JudgeOptions",
    "JudgeParseError",
    "JudgeScorer",
    "parse_verdict",
]

JUDGE_PROMPT_ID = "proctor-judge-v1"
DEFAULT_JUDGE_PROMPT = """\
Judge whether the following [response] to [question] is correct, based on the precise and \
unambiguous [correct_answer] below.

[question]: {question}

[response]: {response}

[correct_answer]: {target}

Your judgement must follow this format:

extracted_final_answer: The final exact answer extracted from the [response]. Put 'None' if \
there is no exact final answer to extract.

reasoning: Explain why the extracted_final_answer is or is not correct given [correct_answer], \
focusing only on whether they match. Do not solve the problem again.

correct: Answer 'yes' if extracted_final_answer matches the [correct_answer] given above, or is \
within a small margin of error for numerical problems. Answer 'no' otherwise, i.e. if there is \
any inconsistency, ambiguity, non-equivalency, or if the extracted answer is incorrect.
"""


class JudgeParseError(ProctorError):
    """The judge's reply states no verdict: a scoring error, not a wrong answer."""

    error_class = "scoring_error"

    def __init__(self, message: str, *, raw: str) -> None:
        super().__init__(message, hint="use a judge prompt that asks for 'correct: yes' or 'correct: no'")
        self.raw = raw


class JudgeOptions(StrictModel):
    """The ``scorer:`` section of a spec with ``type: judge``."""

    role: str = "judge"
    prompt: str | None = None
    """Template with ``{question}``, ``{response}`` and ``{target}``; default: the pinned prompt."""
    system_prompt: str | None = None
    params: GenerateParams = Field(default_factory=lambda: GenerateParams(temperature=0.0))
    exact_match: bool = True
    """Grade as correct without calling the judge when the normalised output equals a target."""


_PLACEHOLDER = re.compile(r"\{(question|response|target)\}")
_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.DOTALL)
_CORRECT_KV = re.compile(r"(?im)^[\s*#>_-]*(?:\*\*)?correct(?:\*\*)?\s*[:=]\s*(?:\*\*)?\s*['\"]?(yes|no|true|false)\b")
_BRACKET = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_VERDICT_LINE = re.compile(
    r"(?i)^[\s*#>_-]*(?:(?:final\s+)?(?:verdict|grade|judgement|judgment|answer|result)\s*[:=-]?\s*)?"
    r"[\s*\"'`\[(]*(correct|incorrect|wrong|right|not\s+correct|true|false|yes|no)[\s*\"'`\]).!]*$"
)
_UPPER = re.compile(r"\b(INCORRECT|CORRECT)\b")
_POSITIVE = {"yes", "true", "correct", "right", "a"}


def parse_verdict(text: str) -> tuple[bool, str]:
    """(correct, which rule decided). Raises ``JudgeParseError`` when no rule applies.

    Rules, most explicit first: a JSON object with ``correct``/``verdict``/``score``;
    ``correct: yes|no``; ``[[A]]`` (correct) / ``[[B]]`` / ``[[C]]`` (not attempted counts as
    wrong); the last line that is only a verdict word (``Verdict: INCORRECT``); finally an
    upper-case ``CORRECT`` or ``INCORRECT`` when only one of them occurs.
    """
    raw = text or ""
    body = re.sub(r"(?s)<think>.*?</think>", "", raw).strip()  # reasoning models think first
    for m in reversed(_JSON_OBJ.findall(body)):
        try:
            obj = json.loads(m)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            for key in ("correct", "is_correct", "verdict", "grade", "score"):
                if key in obj:
                    verdict = _truthy(obj[key])
                    if verdict is not None:
                        return verdict, "json"
    kv = _CORRECT_KV.findall(body)
    if kv:
        return kv[-1].lower() in _POSITIVE, "correct_field"
    brackets = _BRACKET.findall(body)
    if brackets:
        return brackets[-1] == "A", "bracket"
    for line in reversed(body.splitlines()):
        m = _VERDICT_LINE.match(line.strip())
        if m:
            word = re.sub(r"\s+", " ", m.group(1).lower())
            return word in _POSITIVE, "verdict_line"
    upper = set(_UPPER.findall(body))
    if len(upper) == 1:
        return upper.pop() == "CORRECT", "keyword"
    raise JudgeParseError(f"could not parse a verdict from the judge's reply: {raw[:200]!r}", raw=raw)


def _truthy(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value) if value in (0, 1) else None  # other scales are ambiguous
    if isinstance(value, str):
        v = value.strip().lower()
        if v in {"yes", "true", "correct", "right", "a", "1"}:
            return True
        if v in {"no", "false", "incorrect", "wrong", "b", "c", "0", "not_attempted"}:
            return False
    return None


def _normalise(text: str) -> str:
    text = text.strip().lower()
    text = re.sub(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", "", text)
    text = text.translate(str.maketrans("", "", string.punctuation.replace(".", "").replace("-", "")))
    text = text.strip().rstrip(".")
    return re.sub(r"\s+", " ", text)


class JudgeScorer:
    """Asks the judge role; see the module docstring for the rules."""

    needs_models = True

    def __init__(self, options: JudgeOptions) -> None:
        self.options = options
        self.template = options.prompt or DEFAULT_JUDGE_PROMPT
        self.prompt_id = (
            JUDGE_PROMPT_ID
            if options.prompt is None
            else "custom-" + hashlib.sha256(options.prompt.encode()).hexdigest()[:12]
        )

    async def __call__(self, sample: Sample, result: SolveResult, ctx: SolveContext) -> Score:
        output = result.output or ""
        targets = sample_targets(sample)
        if self.options.exact_match and output.strip():
            norm = _normalise(output)
            if any(norm == _normalise(t) for t in targets):
                return Score(
                    1.0, answer=output, explanation="exact match", extra={"judge_raw": None, "shortcut": "exact"}
                )
        values = {"question": question_text(sample), "response": output, "target": " | ".join(targets)}
        prompt = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)
        messages: list[dict[str, Any]] = []
        if self.options.system_prompt:
            messages.append({"role": "system", "content": self.options.system_prompt})
        messages.append({"role": "user", "content": prompt})
        role = ctx.models.role(self.options.role)
        reply = await role.chat(messages, params=self.options.params, sample_id=sample.id)
        raw = reply.content or ""
        model = getattr(getattr(role, "config", None), "model", None)
        extra: dict[str, Any] = {"judge_raw": raw, "judge_prompt": self.prompt_id, "judge_role": self.options.role}
        if model:
            extra["judge_model"] = model
        try:
            correct, rule = parse_verdict(raw)
        except JudgeParseError as exc:
            exc.extra = extra  # type: ignore[attr-defined]  # the engine may store the raw reply
            raise
        extra["verdict_rule"] = rule
        answer = _extracted(raw) or output
        return Score(1.0 if correct else 0.0, answer=answer, explanation=raw[-500:], extra=extra)


def _extracted(raw: str) -> str | None:
    m = re.search(r"(?im)^\s*extracted_final_answer\s*:\s*(.+)$", raw)
    return m.group(1).strip() if m else None


@register_scorer("judge")
def judge_scorer(options: Mapping[str, Any]) -> JudgeScorer:
    """Build the scorer from its spec section; problems are ``SpecError`` naming ``scorer.<key>``."""
    return JudgeScorer(validate_options(JudgeOptions, options, "scorer"))
