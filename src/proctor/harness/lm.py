"""proctor's lm-eval ``LM``: lm-eval's requests, answered on proctor's event loop.

lm-eval runs synchronously in a worker thread. Each ``LM`` method turns its ``Instance``s into
:class:`~proctor.harness.bridge.Request`s and blocks on the bridge's coroutine, scheduled on the
loop that owns the model router. Imported only when an lm-eval run starts (lm-eval is heavy
and optional).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM

from proctor.harness.bridge import Request, RequestBridge

DEFAULT_MAX_TOKENS = 256
"""lm-eval's default ``max_gen_toks``."""


class ProctorLM(LM):  # type: ignore[misc]
    """Sends lm-eval's requests through a :class:`RequestBridge` on ``loop``."""

    def __init__(
        self,
        bridge: RequestBridge,
        loop: asyncio.AbstractEventLoop,
        *,
        chat: bool,
        gen_kwargs: dict[str, Any],
        model_name: str,
    ) -> None:
        super().__init__()
        self.bridge = bridge
        self.loop = loop
        self.chat = chat
        self.gen_kwargs = gen_kwargs
        self.model_name = model_name

    # lm-eval asks these when it applies a chat template and when it names the model.
    @property
    def tokenizer_name(self) -> str:
        return "proctor-" + self.model_name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str:
        return ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The messages themselves (as JSON): the server applies its own template."""
        return json.dumps(chat_history, ensure_ascii=False)

    def _answer(self, kind: str, requests: list[Request]) -> list[Any]:
        future = asyncio.run_coroutine_threadsafe(self.bridge.answer(kind, requests), self.loop)
        return future.result()

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        converted = [Request("generate_until", self._generation(*req.args), _label(req)) for req in requests]
        return [a if isinstance(a, str) else "" for a in self._answer("generate_until", converted)]

    def _generation(self, context: str, task_kwargs: dict[str, Any]) -> dict[str, Any]:
        params, until = to_params({**task_kwargs, **self.gen_kwargs})
        if not self.chat:
            return {"prompt": context, "params": params, "until": until}
        try:
            messages = json.loads(context)
        except ValueError:
            messages = None
        if not isinstance(messages, list):
            messages = [{"role": "user", "content": context}]
        return {"messages": messages, "params": params, "until": until}

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        converted = [
            Request("loglikelihood", {"context": req.args[0], "continuation": req.args[1]}, _label(req))
            for req in requests
        ]
        return [(a[0], bool(a[1])) if a else (float("-inf"), False) for a in self._answer("loglikelihood", converted)]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        converted = [Request("loglikelihood_rolling", {"text": req.args[0]}, _label(req)) for req in requests]
        return [a if isinstance(a, float) else float("-inf") for a in self._answer("loglikelihood_rolling", converted)]


def _label(req: Instance) -> str:
    return f"{req.task_name}/{req.doc_id}/{req.idx}"


def to_params(kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """lm-eval's generation arguments as OpenAI request fields (GenerateParams' shape), and ``until``.

    ``until`` → ``stop``, ``max_gen_toks`` → ``max_tokens``, ``do_sample: false`` → temperature 0
    unless one is given; anything else goes through into the request body as it is.
    """
    kwargs = dict(kwargs)
    until = kwargs.pop("until", None)
    stop = [until] if isinstance(until, str) else [s for s in (until or []) if isinstance(s, str) and s]
    do_sample = kwargs.pop("do_sample", None)
    params: dict[str, Any] = {"max_tokens": int(kwargs.pop("max_gen_toks", DEFAULT_MAX_TOKENS))}
    if stop:
        params["stop"] = stop[:4]  # OpenAI's limit; the answer is cut at every one of them locally
    if "temperature" in kwargs:
        params["temperature"] = float(kwargs.pop("temperature"))
    elif do_sample is False or do_sample is None:
        params["temperature"] = 0.0
    for name in ("top_p", "seed"):
        if name in kwargs:
            params[name] = kwargs.pop(name)
    if kwargs:
        params["extra_body"] = kwargs
    return params, stop
