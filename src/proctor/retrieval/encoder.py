"""all-MiniLM-L6-v2 sentence embeddings as a numpy forward pass: no torch, no model hub.

Why numpy: the model is a 6-layer, 384-wide BERT; its forward pass is a dozen matrix products per
layer, which numpy's BLAS runs as fast as a framework would on a CPU, and it needs no one-time
export step. The weights and the tokenizer come from the zip that :mod:`proctor.models.assets`
assembles and verifies (asset ``all-minilm-l6-v2``); both are read straight from the zip.

The tokenizer file shipped with the model pads and truncates every text to 128 tokens. Padding is
turned off here (a batch is padded only to its longest member, so a short query costs a short
forward pass) and truncation is set to 256 tokens, the model's ``max_seq_length``. Output vectors
are mean-pooled over real tokens and L2-normalised, as sentence-transformers does, so an inner
product is a cosine similarity.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from proctor.errors import LaunchError

__all__ = ["MAX_TOKENS", "MODEL_ASSET", "Encoder"]

MODEL_ASSET = "all-minilm-l6-v2"
MAX_TOKENS = 256
"""Truncation length: the model's ``max_seq_length`` (sentence_bert_config.json)."""

Array = npt.NDArray[np.float32]


def _erf(x: Array) -> Array:
    """Error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7): numpy has none of its own."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    out: Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: Array) -> Array:
    """BERT's exact (erf) GELU."""
    out: Array = (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)
    return out


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: Array = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return out


class Encoder:
    """Embeds texts into unit vectors of ``dim`` floats; thread-compatible (one caller at a time)."""

    def __init__(
        self, weights: dict[str, Array], tokenizer_json: str, config: dict[str, Any], *, blas_threads: int = 1
    ) -> None:
        from threadpoolctl import threadpool_limits
        from tokenizers import Tokenizer

        # One BLAS thread: OpenBLAS's spinning worker threads made encoding 5-15x slower here on
        # two shared cores (measured: 1.4 vs 22 queries/s), and the service has one worker anyway.
        threadpool_limits(blas_threads, user_api="blas")
        self.config = config
        self.dim = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        # Linear weights are stored (out, in); keep them transposed once so every product is x @ W.
        self.w = {
            k: (np.ascontiguousarray(v.T) if v.ndim == 2 and "embeddings" not in k else v) for k, v in weights.items()
        }

    @classmethod
    def from_zip(cls, path: str | Path) -> Encoder:
        """Load from the model zip (safetensors weights, tokenizer.json, config.json)."""
        from safetensors.numpy import load as load_safetensors

        try:
            with zipfile.ZipFile(path) as zf:
                weights = load_safetensors(zf.read("model.safetensors"))
                tokenizer_json = zf.read("tokenizer.json").decode("utf-8")
                config = json.loads(zf.read("config.json"))
        except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
            raise LaunchError(f"cannot load the embedding model from {path}: {exc}") from exc
        floats = {k: v.astype(np.float32, copy=False) for k, v in weights.items() if v.dtype.kind == "f"}
        return cls(floats, tokenizer_json, config)

    @classmethod
    def load(cls) -> Encoder:
        """The verified model asset (assembled into the cache on first use)."""
        from proctor.models.assets import ensure_asset

        return cls.from_zip(ensure_asset(MODEL_ASSET))

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation (what a batch is sorted by)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> Array:
        """Unit vectors, one row per text; the batch is padded only to its longest text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        types = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.float32)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            types[row, :n] = enc.type_ids
            mask[row, :n] = 1.0
        hidden = self._forward(ids, types, mask)
        summed = (hidden * mask[:, :, None]).sum(1)
        pooled = summed / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Array = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def _forward(self, ids: npt.NDArray[np.int64], types: npt.NDArray[np.int64], mask: Array) -> Array:
        w = self.w
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(length)][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        # Token rows stay flattened to (batch * length, dim): every linear layer is then one GEMM.
        x = _layer_norm(
            x.reshape(batch * length, self.dim),
            w["embeddings.LayerNorm.weight"],
            w["embeddings.LayerNorm.bias"],
            self.eps,
        )
        head_dim = self.dim // self.heads
        scale = np.float32(1.0 / np.sqrt(head_dim))
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]

        def heads(t: Array) -> Array:
            return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = heads(x @ w[p + "attention.self.query.weight"] + w[p + "attention.self.query.bias"])
            k = heads(x @ w[p + "attention.self.key.weight"] + w[p + "attention.self.key.bias"])
            v = heads(x @ w[p + "attention.self.value.weight"] + w[p + "attention.self.value.bias"])
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = scores - scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * length, self.dim)
            attn = ctx @ w[p + "attention.output.dense.weight"] + w[p + "attention.output.dense.bias"]
            x = _layer_norm(
                attn + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps
            )
            inter = _gelu(x @ w[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"])
            out = inter @ w[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return x.reshape(batch, length, self.dim).astype(np.float32)
