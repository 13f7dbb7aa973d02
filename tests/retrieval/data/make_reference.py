"""Compute the reference embeddings in ``embedding_reference.json`` (run once, by hand; not in CI).

The reference is sentence-transformers itself (the model's own implementation, on torch), which
proctor never installs: run this in a throwaway virtualenv::

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.13.0+cpu sentence_transformers==6.0.1
    python -c "import zipfile; zipfile.ZipFile('$HOME/.cache/proctor/models/all-minilm-l6-v2.zip').extractall('/tmp/minilm')"
    /tmp/refvenv/bin/python tests/retrieval/data/make_reference.py /tmp/minilm

``test_encoder.py`` checks proctor's numpy forward pass against these vectors (cosine >= 0.999).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEXTS = [
    "hello world",
    "What year was the Eiffel Tower completed?",
    "Python is a high-level programming language created by Guido van Rossum.",
    "a",
    "Zürich, São Paulo and Kraków are cities; 東京 is Tokyo.",
    "The mitochondria is the powerhouse of the cell. " * 40,  # over 256 tokens: truncated
    "How many moons does Jupiter have, and which is the largest?",
    "   leading and trailing spaces   ",
]


def main() -> None:
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(sys.argv[1], device="cpu")
    vectors = model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    out = {
        "computed_with": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "model": "all-minilm-l6-v2",
        "max_seq_length": model.max_seq_length,
        "texts": TEXTS,
        "vectors": [[round(float(x), 7) for x in row] for row in vectors],
    }
    target = Path(__file__).with_name("embedding_reference.json")
    target.write_text(json.dumps(out) + "\n", encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
