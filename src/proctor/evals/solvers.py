"""Built-in single-turn solvers: ``generate`` and ``multiple_choice``.

Both are one model call per sample; they differ only in how the prompt is built. Options are
validated with their own pydantic model so that a typo names ``solver.<key>``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from proctor._validation import StrictModel
from proctor.errors import ContextOverflowError, SpecError
from proctor.evals.content import check_images, user_content
from proctor.evals.options import validate_options
from proctor.evals.types import Sample, SolveContext, SolveResult, register_solver

LETTERS = string.ascii_uppercase


def build_messages(sample: Sample, text: str, system_prompt: str | None, *, images_ok: bool) -> list[dict[str, Any]]:
    if isinstance(sample.input, list):  # the dataset already holds chat messages
        messages = list(sample.input)
    else:
        check_images(sample, images_ok)
        messages = [{"role": "user", "content": user_content(text, sample.images)}]
    if system_prompt and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


class GenerateOptions(StrictModel):
    system_prompt: str | None = None
    template: str = "{input}"
    """Prompt template; ``{input}`` is the sample's input, ``{category}`` and metadata keys also work."""
    role: str = "subject"


class GenerateSolver:
    """One chat call with a templated prompt."""

    def __init__(self, options: GenerateOptions) -> None:
        self.options = options

    def prompt(self, sample: Sample) -> str:
        fields = {**sample.metadata, "input": sample.input, "category": sample.category or ""}
        try:
            return self.options.template.format_map(fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise SpecError(f"solver.template: cannot fill {exc} for sample {sample.id!r}") from None

    async def __call__(self, sample: Sample, ctx: SolveContext) -> SolveResult:
        role = ctx.models.role(self.options.role)
        images_ok = role.config.supports_images
        text = sample.input if isinstance(sample.input, list) else self.prompt(sample)
        messages = build_messages(sample, text, self.options.system_prompt, images_ok=images_ok)  # type: ignore[arg-type]
        try:
            result = await role.chat(messages, sample_id=sample.id)
        except ContextOverflowError as exc:
            return SolveResult(
                output="", messages=messages, model_calls=1, outcome="context_overflow", extra={"error": str(exc)}
            )
        return SolveResult(
            output=result.content or "",
            messages=[*messages, result.message],
            tokens_in=result.prompt_tokens,
            tokens_out=result.completion_tokens,
            model_calls=1,
            outcome="truncated" if result.finish_reason == "length" else None,
        )


class MultipleChoiceOptions(GenerateOptions):
    template: str = "{input}\n\n{choices}\n\nAnswer with the letter of the correct choice only."


class MultipleChoiceSolver(GenerateSolver):
    """Lettered choices (A, B, C, …) from the sample's ``choices`` field."""

    def prompt(self, sample: Sample) -> str:
        if not sample.choices:
            raise SpecError(
                f"sample {sample.id!r} has no choices; multiple_choice needs dataset.fields.choices",
            )
        lines = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(sample.choices))
        fields = {**sample.metadata, "input": sample.input, "choices": lines, "category": sample.category or ""}
        return self.options.template.format_map(fields)


@register_solver("generate")
def generate(options: Mapping[str, Any]) -> GenerateSolver:
    return GenerateSolver(validate_options(GenerateOptions, options, "solver"))


@register_solver("multiple_choice")
def multiple_choice(options: Mapping[str, Any]) -> MultipleChoiceSolver:
    return MultipleChoiceSolver(validate_options(MultipleChoiceOptions, options, "solver"))
