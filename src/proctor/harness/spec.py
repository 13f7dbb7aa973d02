"""The spec of an lm-eval run: ``lm_eval:`` instead of ``dataset``/``solver``/``scorer``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, field_validator

from proctor._validation import StrictModel
from proctor.errors import SpecError
from proctor.evals.spec import _digest, format_validation_error, require_subject
from proctor.models.config import ModelConfig


class LmEvalConfig(StrictModel):
    """What lm-eval is asked to run; the names follow ``lm_eval run``'s flags."""

    tasks: list[str] = Field(min_length=1)
    """Task (or group) names: looked up in ``include_path`` first, then in lm-eval's own zoo."""
    include_path: str | None = None
    """A directory of task YAML files, relative to the spec."""
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1)
    """At most this many documents per task."""
    apply_chat_template: bool = False
    """Send generation requests as chat messages (``/chat/completions``) rather than prompts."""
    gen_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Generation arguments for every ``generate_until`` request, over the task's own."""
    seed: int = 0
    """lm-eval's random, numpy and few-shot seeds."""

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value


class LmEvalSpec(StrictModel):
    """A whole lm-eval run."""

    name: str
    lm_eval: LmEvalConfig
    models: dict[str, ModelConfig]
    concurrency: int = Field(default=32, ge=1, le=100_000)
    """Requests in flight at once."""
    description: str | None = None

    @field_validator("models")
    @classmethod
    def _needs_subject(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        return require_subject(value)

    def roles_used(self) -> list[str]:
        return sorted(self.models)

    def fingerprint(self, include_path: str | None) -> dict[str, str]:
        """What must not change for a resumed run to reuse the answers in its ledger.

        The tasks and their options decide which requests exist; each request is keyed by its
        content, so a changed task simply asks new requests. The model must not change, since an
        answer is the model's. ``include_path`` is the resolved one: the spec written into the run
        directory names it absolutely, and resuming from that spec is the same run.
        """
        settings = {**self.lm_eval.model_dump(), "include_path": include_path}
        return {"model": self.models["subject"].model, "lm_eval": _digest(settings)}


def parse_lm_eval_spec(data: dict[str, Any], *, source: str) -> LmEvalSpec:
    try:
        return LmEvalSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source=source)) from None
