"""Agentic evaluations: the ``agent`` solver and its tools.

Importing this package registers the ``agent`` solver (``proctor.evals.types.SOLVERS``).
"""

from __future__ import annotations

from proctor.evals.agent.loop import AgentOptions, AgentSolver, SampleSkipped, check_images, user_content
from proctor.evals.agent.tools import Tool, ToolCallContext, build_tools

__all__ = [
    "AgentOptions",
    "AgentSolver",
    "SampleSkipped",
    "Tool",
    "ToolCallContext",
    "build_tools",
    "check_images",
    "user_content",
]
