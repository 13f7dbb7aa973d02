"""What a model call returns and what it records.

Plain slotted dataclasses, not pydantic: one is made per model call on the engine's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proctor.profiling.events import EventSink as EventSink  # the event records are typed there


@dataclass(slots=True)
class ChatResult:
    """One successful chat completion."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    message: dict[str, Any]
    """The assistant message as the API returned it (for the trajectory)."""
    endpoint: str
    """Base URL of the replica that answered."""
    attempts: int = 1
    duration: float = 0.0
    ttft: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
