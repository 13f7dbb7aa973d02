"""Building user message content, shared by every solver.

Image questions are either passed as OpenAI ``image_url`` content parts or, for a model that
does not accept images, skipped with one reason, so that every solver counts them the same way.
"""

from __future__ import annotations

from typing import Any

from proctor.evals.types import Sample, SampleSkipped

IMAGES_UNSUPPORTED = "image input, but the subject model does not accept images (supports_images: false)"


def question_text(sample: Sample) -> str:
    """The sample's question as text (the last user message of a chat-shaped input)."""
    value = sample.input
    if isinstance(value, str):
        return value
    for msg in reversed(value):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def check_images(sample: Sample, supports_images: bool) -> None:
    """Raise ``SampleSkipped`` when the sample has images the model cannot take."""
    if sample.images and not supports_images:
        raise SampleSkipped(IMAGES_UNSUPPORTED)


def user_content(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    """Plain text, or OpenAI content parts (text then one ``image_url`` part per image)."""
    if not images:
        return text
    return [{"type": "text", "text": text}, *({"type": "image_url", "image_url": {"url": u}} for u in images)]
