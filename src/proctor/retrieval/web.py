"""The web fallback: when the local index has too little, ask a web search provider (Tavily).

The rule (ToolOrchestra's): fall back when fewer than ``min_good`` local hits have a score above
``min_score`` *and* content longer than ``min_chars`` characters. Every number is configurable;
``min_score`` has one value per index kind, because BM25 scores are unbounded while cosines are
not. The provider's key is read from the environment variable *named* in the settings, never
from a flag or file, and never logged. With no key there is no fallback, and the answer says so.

Tavily is called as its REST API documents: ``POST /search`` then one ``POST /extract`` for the
result URLs (upstream ran 20 extracts one after another; one call takes them all). Web hits are
ranked after the local ones and marked ``"source": "web"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["FallbackRule", "TavilyClient", "WebError", "needs_fallback"]


class WebError(Exception):
    """The web provider failed; the local hits are still returned, with a note."""


@dataclass(frozen=True, slots=True)
class FallbackRule:
    """When local results are too thin to stand alone."""

    min_good: int = 3
    """Fall back when fewer than this many hits are good."""
    min_chars: int = 100
    """A good hit's content is longer than this many characters."""
    min_score: dict[str, float] = field(default_factory=lambda: {"dense": 0.1, "hybrid": 0.1, "bm25": 5.0})
    """A good hit scores strictly above this, per search mode."""

    def good(self, hits: Sequence[dict[str, Any]], mode: str) -> int:
        threshold = self.min_score[mode]
        return sum(1 for h in hits if h["score"] > threshold and len(h["document"]["content"]) > self.min_chars)


def needs_fallback(rule: FallbackRule, hits: Sequence[dict[str, Any]], mode: str) -> bool:
    """True when fewer than ``rule.min_good`` hits are good (see :class:`FallbackRule`)."""
    return rule.good(hits, mode) < rule.min_good


@dataclass(slots=True)
class TavilyClient:
    """Search, then extract, on Tavily's REST API (or anything speaking it, e.g. a test fake)."""

    key_env: str = "TAVILY_API_KEY"
    base_url: str = "https://api.tavily.com"
    max_results: int = 3
    extract: bool = True
    timeout: float = 20.0

    def key(self) -> str | None:
        value = os.environ.get(self.key_env, "").strip()
        return value or None

    async def search(self, session: aiohttp.ClientSession, query: str) -> list[dict[str, Any]]:
        """Web hits for ``query`` in the service's hit shape (best first)."""
        key = self.key()
        if key is None:
            raise WebError(f"no web fallback: ${self.key_env} is not set")
        headers = {"Authorization": f"Bearer {key}"}
        found = await self._post(session, "/search", {"query": query, "max_results": self.max_results}, headers)
        results = [r for r in found.get("results", []) if isinstance(r, dict) and r.get("url")][: self.max_results]
        pages: dict[str, str] = {}
        if self.extract and results:
            extracted = await self._post(session, "/extract", {"urls": [r["url"] for r in results]}, headers)
            pages = {
                str(r["url"]): str(r.get("raw_content") or "")
                for r in extracted.get("results", [])
                if isinstance(r, dict) and r.get("url")
            }
        hits = []
        for r in results:
            url = str(r["url"])
            body = pages.get(url) or str(r.get("content") or "")
            title = str(r.get("title") or "")
            content = f"{title}\n{body}" if title else body
            hits.append(
                {"document": {"id": url, "content": content}, "score": float(r.get("score") or 0.0), "source": "web"}
            )
        return hits

    async def _post(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + path
        try:
            async with session.post(
                url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                if resp.status != 200:
                    raise WebError(f"web search {path} answered HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except TimeoutError:
            raise WebError(f"web search {path} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise WebError(f"web search {path} unreachable: {type(exc).__name__}") from None
        except ValueError:
            raise WebError(f"web search {path} sent invalid JSON") from None
        if not isinstance(data, dict):
            raise WebError(f"web search {path} sent an unexpected shape")
        return data
