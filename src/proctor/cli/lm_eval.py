"""``proctor lm-eval``: ``lm_eval run``'s flags for the API model types, run as an ``lm_eval:`` spec.

An lm-eval user keeps their command line and changes ``lm_eval`` into ``proctor lm-eval``; the
flags become the spec that ``proctor run`` runs (proctor.harness), so both commands behave alike
(ledger, resume, retries, progress, outputs). The flags are parsed here rather than by typer so
that a flag proctor does not serve is refused in one line that says what to do, like lm-eval's
own parser would, instead of a usage dump.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn

import typer

from proctor.errors import InputError

MODEL_TYPES = {
    # lm-eval model type: (chat endpoint?, default base URL, the environment variable of the API key)
    "local-completions": (False, None, None),
    "local-chat-completions": (True, None, None),
    "openai-completions": (False, "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openai-chat-completions": (True, "https://api.openai.com/v1", "OPENAI_API_KEY"),
}
# model_args keys proctor has no use for: it finds a continuation's tokens from the server's
# text offsets, so it needs no tokenizer, and lm-eval's batching is replaced by the bridge's.
IGNORED_MODEL_ARGS = {"tokenizer", "tokenizer_backend", "batch_size", "max_length", "eos_string", "verify_certificate"}
HINT = "proctor lm-eval serves the API model types; run other flags with lm-eval itself"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InputError(f"proctor lm-eval: {message}", hint=HINT)


def _parser() -> _Parser:
    p = _Parser(prog="proctor lm-eval", add_help=False, allow_abbrev=False)
    p.add_argument("--model", required=True)
    p.add_argument("--model_args", default="")
    p.add_argument("--tasks", required=True)
    p.add_argument("--num_fewshot", type=int)
    p.add_argument("--limit", type=float)
    p.add_argument("--gen_kwargs", default="")
    p.add_argument("--apply_chat_template", nargs="?", const=True, default=False)
    p.add_argument("--include_path")
    p.add_argument("--output_path")
    p.add_argument("--log_samples", action="store_true")
    p.add_argument("--seed")
    # proctor's own run options, as `proctor run` has them.
    p.add_argument("--retry-errors", dest="retry_errors", action="store_true")
    p.add_argument("--force-new", dest="force_new", action="store_true")
    p.add_argument("--progress", default="auto", choices=["auto", "rich", "plain", "none"])
    return p


def parse_kv(text: str, flag: str) -> dict[str, Any]:
    """lm-eval's ``key=value,key=value`` (or a JSON object), values as lm-eval reads them."""
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


def _api_base(url: str) -> str:
    """lm-eval's ``base_url`` names the endpoint (``.../v1/completions``); proctor's the API root."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def build_spec(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``lm_eval:`` spec data and the run options that ``argv`` (lm-eval's flags) stand for."""
    if argv[:1] == ["run"]:  # `lm_eval run --model ...` and `lm_eval --model ...` both
        argv = argv[1:]
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        raise InputError(f"proctor lm-eval: unsupported argument(s): {' '.join(unknown)}", hint=HINT)
    if args.model not in MODEL_TYPES:
        raise InputError(
            f"proctor lm-eval: --model {args.model} is not supported; "
            f"use one of {', '.join(MODEL_TYPES)} against an OpenAI-compatible server",
            hint="to evaluate local weights, serve them (e.g. vLLM) and use local-completions",
        )
    chat, default_base, key_env = MODEL_TYPES[args.model]
    margs = parse_kv(args.model_args, "--model_args")
    unsupported = sorted(
        set(margs) - IGNORED_MODEL_ARGS - {"model", "base_url", "num_concurrent", "max_retries", "tokenized_requests"}
    )
    if unsupported:
        raise InputError(
            f"proctor lm-eval: --model_args {', '.join(unsupported)} not supported",
            hint="supported: model, base_url, num_concurrent, max_retries, tokenized_requests, tokenizer",
        )
    if margs.get("tokenized_requests") is True:
        raise InputError(
            "proctor lm-eval: tokenized_requests=True is not supported; proctor sends text",
            hint="use tokenized_requests=False (proctor needs no tokenizer)",
        )
    base_url = margs.get("base_url") or default_base
    if not base_url or not str(base_url).startswith(("http://", "https://")):
        raise InputError("proctor lm-eval: --model_args needs base_url=http://HOST:PORT/v1/completions")
    if not margs.get("model"):
        raise InputError("proctor lm-eval: --model_args needs model=NAME (the served model's name)")
    subject: dict[str, Any] = {"base_url": _api_base(str(base_url)), "model": str(margs["model"])}
    if key_env:
        subject["api_key_env"] = key_env
    if "max_retries" in margs:
        subject["retry"] = {"max_attempts": int(margs["max_retries"])}
    if args.limit is not None and (args.limit != int(args.limit) or args.limit < 1):
        raise InputError(
            "proctor lm-eval: --limit must be a whole number of documents",
            hint="lm-eval's fractional --limit is not supported",
        )
    seed: int | None = None
    if args.seed is not None:
        seeds = {s.strip() for s in str(args.seed).split(",")}
        if len(seeds) != 1 or not next(iter(seeds)).isdigit():
            raise InputError(f"proctor lm-eval: --seed {args.seed}: give one whole number (used for every seed)")
        seed = int(next(iter(seeds)))
    apply_chat = args.apply_chat_template not in (False, "false", "False")
    cfg: dict[str, Any] = {
        "tasks": args.tasks,
        "apply_chat_template": chat or apply_chat,
        "gen_kwargs": parse_kv(args.gen_kwargs, "--gen_kwargs"),
    }
    if args.include_path:
        cfg["include_path"] = str(Path(args.include_path).resolve())
    if args.num_fewshot is not None:
        cfg["num_fewshot"] = args.num_fewshot
    if args.limit is not None:
        cfg["limit"] = int(args.limit)
    if seed is not None:
        cfg["seed"] = seed
    name = "lm-eval-" + "-".join(t.strip() for t in args.tasks.split(",") if t.strip())[:80]
    data: dict[str, Any] = {"name": name, "lm_eval": cfg, "models": {"subject": subject}}
    if "num_concurrent" in margs:
        data["concurrency"] = int(margs["num_concurrent"])
    options = {
        "out": Path(args.output_path) if args.output_path else None,
        "retry_errors": args.retry_errors,
        "force_new": args.force_new,
        "progress": args.progress,
    }
    return data, options


def lm_eval_cmd(ctx: typer.Context) -> None:
    """Run lm-eval tasks with lm-eval's own flags: `lm_eval run --model local-completions ...`
    becomes `proctor lm-eval --model local-completions ...` (durable, resumable; see docs/lm-eval.md).

    --output_path is the run directory (run again into it to resume); lm-eval's files go to
    OUTPUT_PATH/lm_eval/MODEL/. Also: --retry-errors, --force-new, --progress.
    """
    from proctor.cli.run import _run_lm_eval

    data, options = build_spec(list(ctx.args))
    out = options.pop("out")
    # The spec "lives" in the working directory: relative paths are the command line's.
    spec_path = Path.cwd() / "proctor-lm-eval-command"
    raise typer.Exit(
        _run_lm_eval(
            data,
            spec_path,
            out=out,
            model=[],
            limit=None,
            concurrency=None,
            options={**options, "grace": 30.0, "report_interval": 10.0},
        )
    )


def register(app: typer.Typer) -> None:
    app.command(
        "lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, no_args_is_help=True
    )(lm_eval_cmd)
