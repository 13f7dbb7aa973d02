"""The ``answer`` tool: the model hands in its final answer, which ends the sample."""

from __future__ import annotations

from typing import Any

from proctor._validation import StrictModel
from proctor.evals.agent.tools.base import Tool, ToolCallContext

__all__ = ["AnswerOptions", "AnswerTool"]


class AnswerOptions(StrictModel):
    name: str = "answer"
    description: str = "Submit your final answer. Call this once, when you are sure; it ends the task."


class AnswerTool(Tool):
    parameters = {
        "type": "object",
        "properties": {"answer": {"type": "string", "description": "The final answer, as short as possible."}},
        "required": ["answer"],
    }
    final = True
    timeout = 5.0

    def __init__(self, options: AnswerOptions | None = None) -> None:
        opts = options or AnswerOptions()
        self.name = opts.name
        self.description = opts.description

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        # Models sometimes send a number although the schema says string; keep its text.
        value = args["answer"]
        return value if isinstance(value, str) else str(value)
