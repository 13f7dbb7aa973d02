"""The ``web_search`` tool: a provider interface, with a Tavily adapter.

The adapter is used only when its key's environment variable is set. Without a key the tool does
not silently fall back to anything: it answers that it is unavailable, so a run never reaches a
paid or unexpected service because of what happened to be in the environment. The key is read at
call time from the environment and sent in a header only; it never enters the spec, a log or an
event.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Protocol

import aiohttp
from pydantic import Field

from proctor._validation import StrictModel
from proctor.errors import ToolError
from proctor.evals.agent.tools._http import get_session
from proctor.evals.agent.tools.base import Tool, ToolCallContext

__all__ = ["SearchHit", "SearchProvider", "TavilyProvider", "WebSearchOptions", "WebSearchTool", "make_provider"]

UNAVAILABLE = "web_search is unavailable: no provider configured"

SearchHit = dict[str, str]
"""``{"title", "url", "content"}``."""


class SearchProvider(Protocol):
    name: str

    async def search(self, session: aiohttp.ClientSession, query: str, k: int) -> list[SearchHit]: ...


class TavilyProvider:
    """https://docs.tavily.com — POST /search with a bearer key."""

    name = "tavily"

    def __init__(self, key_env: str, base_url: str = "https://api.tavily.com", timeout: float = 30.0) -> None:
        self.key_env = key_env
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    async def search(self, session: aiohttp.ClientSession, query: str, k: int) -> list[SearchHit]:
        key = os.environ.get(self.key_env, "")
        if not key:
            raise ToolError(UNAVAILABLE)
        try:
            async with session.post(
                f"{self.base_url}/search",
                json={"query": query, "max_results": k},
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status != 200:
                    # The body is not echoed: some services repeat the request (and key) in errors.
                    raise ToolError(f"web search provider {self.name} answered HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ToolError(f"web search provider {self.name} unreachable: {type(exc).__name__}") from exc
        except ValueError as exc:
            raise ToolError(f"web search provider {self.name} sent invalid JSON") from exc
        results = data.get("results", []) if isinstance(data, dict) else []
        return [
            {"title": str(r.get("title", "")), "url": str(r.get("url", "")), "content": str(r.get("content", ""))}
            for r in results
            if isinstance(r, dict)
        ]


class WebSearchOptions(StrictModel):
    name: str = "web_search"
    description: str = "Search the web. Returns titles, URLs and snippets of the top results."
    provider: Literal["tavily"] | None = "tavily"
    api_key_env: str = "TAVILY_API_KEY"
    """Name of the environment variable holding the provider's key (never the key itself)."""
    base_url: str | None = None
    k: int = Field(default=5, ge=1, le=20)
    timeout: float = Field(default=30.0, gt=0)
    snippet_chars: int = Field(default=800, ge=50)


def make_provider(opts: WebSearchOptions) -> SearchProvider | None:
    """The configured provider, or None when it has no key in the environment (checked now)."""
    if opts.provider == "tavily" and os.environ.get(opts.api_key_env):
        return TavilyProvider(opts.api_key_env, opts.base_url or "https://api.tavily.com", opts.timeout)
    return None


def format_search(hits: list[SearchHit], snippet_chars: int) -> str:
    if not hits:
        return "(no results)"
    out = []
    for i, h in enumerate(hits, 1):
        content = h.get("content", "")[:snippet_chars]
        out.append(f"[{i}] {h.get('title', '')} <{h.get('url', '')}>\n{content}")
    return "\n".join(out)


class WebSearchTool(Tool):
    parameters = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "The search query."}},
        "required": ["query"],
    }

    def __init__(self, options: WebSearchOptions, provider: SearchProvider | None = None) -> None:
        self.options = options
        self.name = options.name
        self.description = options.description
        self.timeout = options.timeout + 5.0
        self.provider = provider if provider is not None else make_provider(options)

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        if self.provider is None:
            return UNAVAILABLE
        with ctx.step("web_search"):
            hits = await self.provider.search(get_session(ctx.solve.models), args["query"], self.options.k)
        return format_search(hits, self.options.snippet_chars)
