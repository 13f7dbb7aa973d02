"""The retrieval service: index a corpus (MiniLM + faiss, BM25) and serve it, micro-batched.

Modules: ``corpus`` (read and check a corpus), ``encoder`` (MiniLM on numpy), ``index`` (build
and load an index directory), ``batcher`` (micro-batching worker), ``web`` (the fallback rule and
Tavily), ``service`` (the FastAPI app). Heavy dependencies (numpy, faiss, bm25s) are the
``retrieval`` extra and are imported by those modules only, so ``import proctor.retrieval`` is free.
"""

from __future__ import annotations

__all__: list[str] = []
