"""lm-eval's command-line arguments for the API model types, mapped onto an ``lm_eval:`` spec.

Shared by ``proctor lm-eval`` (the flags) and the server's lm-eval-server API (the same names in a
JSON body), so both accept and refuse the same things in the same words. Nothing here imports
lm-eval or the CLI: the server imports it too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from proctor.errors import InputError

MODEL_TYPES = {
    # lm-eval model type: (chat endpoint?, default base URL, the environment variable of the API key)
    "local-completions": (False, None, None),
    "local-chat-completions": (True, None, None),
    "openai-completions": (False, "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openai-chat-completions": (True, "https://api.openai.com/v1", "OPENAI_API_KEY"),
}
IGNORED_MODEL_ARGS = {"tokenizer", "tokenizer_backend", "batch_size", "max_length", "eos_string", "verify_certificate"}
"""model_args keys proctor has no use for: it finds a continuation's tokens from the server's text
offsets, so it needs no tokenizer, and lm-eval's batching is replaced by the bridge's."""
MAPPED_MODEL_ARGS = {"model", "base_url", "num_concurrent", "max_retries", "tokenized_requests"}


@dataclass(slots=True)
class LmEvalArgs:
    """The lm-eval arguments that become a spec (names as lm-eval's flags)."""

    model: str
    tasks: str
    model_args: str | dict[str, Any] = ""
    num_fewshot: int | None = None
    limit: float | None = None
    gen_kwargs: str | dict[str, Any] = ""
    apply_chat_template: bool | str = False
    include_path: str | None = None
    """Already resolved by the caller (a local path, or a server's task directory)."""
    seed: str | int | None = None


def parse_kv(text: str | dict[str, Any], flag: str) -> dict[str, Any]:
    """lm-eval's ``key=value,key=value`` (or a JSON object), values as lm-eval reads them."""
    if isinstance(text, dict):
        return dict(text)
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{flag}: not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise InputError(f"{flag}: expected a JSON object or key=value pairs")
        return value
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag}: {item!r} is not key=value", hint=f"e.g. {flag} model=qwen,base_url=http://...")
        out[key.strip()] = _scalar(raw.strip())
    return out


def _scalar(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def api_base(url: str) -> str:
    """lm-eval's ``base_url`` names the endpoint (``.../v1/completions``); proctor's the API root."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def spec_data(args: LmEvalArgs, *, who: str) -> dict[str, Any]:
    """The ``lm_eval:`` spec's data for ``args``; ``InputError`` (starting with ``who``) otherwise."""
    if args.model not in MODEL_TYPES:
        raise InputError(
            f"{who}: --model {args.model} is not supported; "
            f"use one of {', '.join(MODEL_TYPES)} against an OpenAI-compatible server",
            hint="to evaluate local weights, serve them (e.g. vLLM) and use local-completions",
        )
    chat, default_base, key_env = MODEL_TYPES[args.model]
    margs = parse_kv(args.model_args, "--model_args")
    unsupported = sorted(set(margs) - IGNORED_MODEL_ARGS - MAPPED_MODEL_ARGS)
    if unsupported:
        raise InputError(
            f"{who}: --model_args {', '.join(unsupported)} not supported",
            hint="supported: model, base_url, num_concurrent, max_retries, tokenized_requests, tokenizer",
        )
    if margs.get("tokenized_requests") is True:
        raise InputError(
            f"{who}: tokenized_requests=True is not supported; proctor sends text",
            hint="use tokenized_requests=False (proctor needs no tokenizer)",
        )
    base_url = margs.get("base_url") or default_base
    if not base_url or not str(base_url).startswith(("http://", "https://")):
        raise InputError(f"{who}: --model_args needs base_url=http://HOST:PORT/v1/completions")
    if not margs.get("model"):
        raise InputError(f"{who}: --model_args needs model=NAME (the served model's name)")
    subject: dict[str, Any] = {"base_url": api_base(str(base_url)), "model": str(margs["model"])}
    if key_env:
        subject["api_key_env"] = key_env
    if "max_retries" in margs:
        subject["retry"] = {"max_attempts": _whole(margs["max_retries"], "max_retries", who)}
    if args.limit is not None and (not math.isfinite(args.limit) or args.limit != int(args.limit) or args.limit < 1):
        raise InputError(
            f"{who}: --limit must be a whole number of documents",
            hint="lm-eval's fractional --limit is not supported",
        )
    seed: int | None = None
    if args.seed is not None:
        seeds = {s.strip() for s in str(args.seed).split(",")}
        if len(seeds) != 1 or not next(iter(seeds)).isdigit():
            raise InputError(f"{who}: --seed {args.seed}: give one whole number (used for every seed)")
        seed = int(next(iter(seeds)))
    apply_chat = args.apply_chat_template not in (False, "false", "False")
    cfg: dict[str, Any] = {
        "tasks": args.tasks,
        "apply_chat_template": chat or apply_chat,
        "gen_kwargs": parse_kv(args.gen_kwargs, "--gen_kwargs"),
    }
    if args.include_path:
        cfg["include_path"] = args.include_path
    if args.num_fewshot is not None:
        cfg["num_fewshot"] = args.num_fewshot
    if args.limit is not None:
        cfg["limit"] = int(args.limit)
    if seed is not None:
        cfg["seed"] = seed
    name = "lm-eval-" + "-".join(t.strip() for t in args.tasks.split(",") if t.strip())[:80]
    data: dict[str, Any] = {"name": name, "lm_eval": cfg, "models": {"subject": subject}}
    if "num_concurrent" in margs:
        data["concurrency"] = _whole(margs["num_concurrent"], "num_concurrent", who)
    return data


def _whole(value: Any, key: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{who}: --model_args {key} must be a whole number of at least 1")
    return value
