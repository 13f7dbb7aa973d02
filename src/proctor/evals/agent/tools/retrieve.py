"""The ``retrieve`` tool: a client for an HTTP retrieval service.

Protocol (the one common research retrieval servers speak): ``POST {url}`` with
``{"queries": [...], "topk": k}``; the answer is one list per query of
``{"document": {"id", "content"}, "score"}``. ``proctor retrieval serve`` is the real service
(``docs/retrieval.md``), ``proctor.testing.retrieval`` a stand-in. Instead of ``url`` the options
may carry ``launch: {kind: retrieval, index: DIR, port: P}``: the run then reuses a healthy
service on that port or starts one (``proctor.models.launch``), and stops what it started.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import Field, model_validator

from proctor._validation import StrictModel
from proctor.errors import ToolError
from proctor.evals.agent.tools._http import get_session
from proctor.evals.agent.tools.base import Tool, ToolCallContext
from proctor.retrieval.config import RetrievalLaunch

__all__ = ["RetrieveOptions", "RetrieveTool", "retrieve", "format_hits"]


class RetrieveOptions(StrictModel):
    name: str = "retrieve"
    description: str = "Search the document collection. Returns the most relevant passages for the query."
    url: str = ""
    """Full URL of the service's endpoint, e.g. ``http://127.0.0.1:8001/retrieve``; derived from
    ``launch`` when that is given."""
    launch: RetrievalLaunch | None = None
    topk: int = Field(default=3, ge=1, le=100)
    timeout: float = Field(default=30.0, gt=0)
    doc_chars: int = Field(default=1500, ge=50)
    """Each passage is cut to this many characters before the model sees it."""

    @model_validator(mode="after")
    def _url_or_launch(self) -> RetrieveOptions:
        if not self.url:
            if self.launch is None:
                raise ValueError("the retrieve tool needs 'url' (or 'launch: {kind: retrieval, index, port}')")
            self.url = self.launch.url
        return self


async def retrieve(
    session: aiohttp.ClientSession, url: str, queries: list[str], topk: int, timeout: float
) -> list[list[dict[str, Any]]]:
    """One POST to the service; every failure becomes a ``ToolError`` the model can read."""
    try:
        async with session.post(
            url, json={"queries": queries, "topk": topk}, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200]
                raise ToolError(f"retrieval service answered HTTP {resp.status}: {text}")
            data = await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ToolError(f"retrieval service unreachable: {type(exc).__name__}: {exc}") from exc
    except ValueError as exc:
        raise ToolError(f"retrieval service sent invalid JSON: {exc}") from exc
    if isinstance(data, dict) and "result" in data:  # some servers wrap the list
        data = data["result"]
    if not isinstance(data, list) or len(data) != len(queries):
        raise ToolError("retrieval service answered with an unexpected shape (expected a list per query)")
    return data


def format_hits(hits: list[dict[str, Any]], doc_chars: int) -> str:
    """Numbered passages, cut to ``doc_chars``; ``(no results)`` when empty."""
    if not hits:
        return "(no results)"
    lines = []
    for i, hit in enumerate(hits, 1):
        doc = hit.get("document", hit) if isinstance(hit, dict) else {"content": str(hit)}
        content = str(doc.get("content", doc.get("contents", "")))
        if len(content) > doc_chars:
            content = content[:doc_chars] + " ..."
        lines.append(f"[{i}] (id={doc.get('id', '?')}) {content}")
    return "\n".join(lines)


class RetrieveTool(Tool):
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What to search for."}},
        "required": ["query"],
    }

    def __init__(self, options: RetrieveOptions) -> None:
        self.options = options
        self.name = options.name
        self.description = options.description
        self.timeout = options.timeout + 5.0

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        session = get_session(ctx.solve.models)
        with ctx.step("retrieval"):
            results = await retrieve(
                session, self.options.url, [args["query"]], self.options.topk, self.options.timeout
            )
        return format_hits(results[0], self.options.doc_chars)
