"""``launch: {kind: retrieval, ...}``: a retrieval service proctor starts, reuses and stops.

Kept apart from the service itself so that the task spec (``retrieve`` tool options) and the
launcher (``proctor.models.launch``) can use it without importing numpy, faiss or the model.
"""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import Field

from proctor._validation import StrictModel

__all__ = ["RetrievalLaunch"]


class RetrievalLaunch(StrictModel):
    """Where a retrieval tool's service runs, and how to start it when it does not yet."""

    kind: Literal["retrieval"]
    index: str
    """Index directory made by ``proctor retrieval index``; relative to the spec file."""
    corpus: str | None = None
    """A corpus file to build ``index`` from when it is missing or was built from other data
    (relative to the spec file); without it the index must exist."""
    index_args: list[str] = Field(default_factory=lambda: ["--bm25"])
    """``proctor retrieval index`` options for that build (default: dense and BM25)."""
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    extra_args: list[str] = Field(default_factory=list)
    """More ``proctor retrieval serve`` options, e.g. ``["--mode", "bm25", "--no-web"]``."""
    env: dict[str, str] = Field(default_factory=dict)
    health_deadline: float = Field(default=300.0, gt=0)
    """Seconds to wait for ``/health`` (loading the model and index) before giving up."""

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The tool's endpoint: ``http://host:port/retrieve``."""
        return f"{self.base_url}/retrieve"

    def index_argv(self, corpus: str, index: str) -> list[str]:
        """The command that builds ``index`` from ``corpus`` (both resolved paths)."""
        return [sys.executable, "-m", "proctor", "retrieval", "index", corpus, "--out", index, *self.index_args]

    def argv(self, index: str) -> list[str]:
        """The command that serves ``index`` (the resolved directory)."""
        return [sys.executable, "-m", "proctor", "retrieval", "serve", index,
                "--host", self.host, "--port", str(self.port), *self.extra_args]  # fmt: skip
