"""The numpy MiniLM against sentence-transformers' own vectors, computed once and committed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from proctor.retrieval.encoder import MAX_TOKENS, Encoder

REFERENCE = json.loads((Path(__file__).parent / "data" / "embedding_reference.json").read_text(encoding="utf-8"))


def test_embeddings_match_the_reference_within_cosine_0_999(encoder: Encoder) -> None:
    ours = encoder.encode(REFERENCE["texts"])
    reference = np.asarray(REFERENCE["vectors"], dtype=np.float32)
    cosines = (ours * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, dict(zip(REFERENCE["texts"], cosines.round(5).tolist(), strict=True))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_texts_are_truncated_at_256_tokens_and_not_padded(encoder: Encoder) -> None:
    long_text = max(REFERENCE["texts"], key=len)
    assert encoder.token_counts([long_text, "hello world"]) == [MAX_TOKENS, 4]


def test_a_batch_embeds_each_text_as_it_would_alone(encoder: Encoder) -> None:
    texts = ["short", "a somewhat longer query about mountains and rivers", "mid length text here"]
    batched = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert np.allclose(batched, alone, atol=1e-5)
