"""``python -m proctor.testing serve``: the fake server as a standalone process.

argparse rather than typer: this process is started by tests and benchmarks many times, and a
lean import keeps its start-up (and so every subprocess test) short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from proctor.errors import InputError, ProctorError

from ._config import FakeLLMConfig
from ._server import FakeLLM

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proctor.testing", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the fake OpenAI-compatible server until SIGTERM/SIGINT")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (see --port-file)")
    serve.add_argument("--config", type=Path, help="JSON file of FakeLLMConfig fields")
    serve.add_argument("--port-file", type=Path, help="write the bound port here (atomically) once listening")
    serve.add_argument("--latency", type=float, help="overrides the config file")
    serve.add_argument("--jitter", type=float, help="overrides the config file")
    serve.add_argument("--model", help="overrides the config file")
    serve.add_argument("--reply", help="overrides the config file")
    serve.add_argument("--seed", type=int, help="overrides the config file")
    serve.add_argument(
        "--answers-from",
        type=Path,
        metavar="DATA.jsonl",
        help="answer every question of this JSONL dataset with its target ('Answer: <target>'), "
        "e.g. examples/arith/data.jsonl; other messages get the reply mode",
    )
    serve.add_argument("--question-field", default="question", help="with --answers-from (default: question)")
    serve.add_argument("--answer-field", default="answer", help="with --answers-from (default: answer)")
    serve.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when the parent process dies (it runs in its own process group, so no signal would reach it)",
    )
    return parser


def _load_config(args: argparse.Namespace) -> FakeLLMConfig:
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text())
        except OSError as exc:
            raise InputError(f"cannot read fake LLM config {args.config}: {exc.strerror}") from None
        except ValueError as exc:
            raise InputError(f"fake LLM config {args.config} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"fake LLM config {args.config} must hold a JSON object")
    for name in ("latency", "jitter", "model", "reply", "seed"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    if args.answers_from is not None:
        data["answers"] = {
            **(data.get("answers") or {}),
            **_dataset_answers(args.answers_from, args.question_field, args.answer_field),
        }
    return FakeLLMConfig.from_dict(data)


def _dataset_answers(path: Path, question: str, answer: str) -> dict[str, str]:
    """Question text -> ``Answer: <target>``, so a run of that dataset scores (nearly) 100%.

    Matching is by substring of the last user message (the ``answers`` rule), which holds the
    question however the spec's template wraps it. Questions that share their text get the
    first one's target.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --answers-from {path}: {getattr(exc, 'strerror', None) or exc}") from None
    answers: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InputError(f"--answers-from {path}, line {number}: not valid JSON") from None
        if not isinstance(row, dict) or question not in row or answer not in row:
            raise InputError(
                f"--answers-from {path}, line {number}: needs the fields {question!r} and {answer!r}",
                hint="name them with --question-field and --answer-field",
            )
        answers.setdefault(str(row[question]), f"Answer: {row[answer]}")
    return answers


def describe_replies(cfg: FakeLLMConfig) -> str:
    """What the fake model will say, in the start-up banner: its scores are otherwise a puzzle."""
    if cfg.script:
        return f"replies: a scripted tool-calling conversation of {len(cfg.script)} turn(s)"
    if cfg.reply == "echo":
        fallback = (
            "echo: the question is repeated back, so a scorer finds no answer and a run scores "
            "near 0%; --answers-from DATA.jsonl answers a dataset's questions with its targets"
        )
    elif cfg.reply == "arith":
        fallback = (
            "arith: solves the last 'a + b' (+ - * / plus minus times) written in the question, else \"I don't know\""
        )
    else:
        fallback = f"the fixed text {cfg.reply!r}"
    if cfg.answers:
        return f"replies: the known answers of {len(cfg.answers)} question(s); to anything else, {fallback}"
    return f"replies: {fallback}"


def _write_port(path: Path, port: int) -> None:
    """Write-then-rename, so a waiting parent never reads a half-written port number."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(str(port))
    os.replace(tmp, path)


async def _serve(cfg: FakeLLMConfig, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    parent = os.getppid()
    async with FakeLLM(cfg, host=args.host, port=args.port) as llm:
        if args.port_file is not None:
            _write_port(args.port_file, llm.port)
        print(f"fake LLM serving {llm.base_url} (model {cfg.model!r})", flush=True)
        print(describe_replies(cfg), flush=True)
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), 0.5)
            except TimeoutError:
                if args.exit_with_parent and os.getppid() != parent:
                    print("parent process exited; stopping", flush=True)
                    break
    print("fake LLM stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, per ``proctor.errors``)."""
    args = _parser().parse_args(argv)
    try:
        cfg = _load_config(args)
        asyncio.run(_serve(cfg, args))
    except ProctorError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except OSError as exc:  # e.g. port already in use
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
