"""A fake OpenAI-compatible LLM server for proctor's tests and benchmarks.

Every other part of proctor is tested against this server over real sockets, so its behaviour is
a contract: change it only together with its tests. It is built on ``aiohttp.web`` with a minimal
per-request path (plain ``json``, no pydantic, no access log) so that benchmarks measure the
engine, not the fake model.

Three ways to host it
---------------------
```python
from proctor.testing import FakeLLM, FakeLLMConfig, FakeLLMProcess, FakeLLMThread

# 1. On the current event loop (async tests; use asyncio.run in a plain pytest function):
async with FakeLLM(FakeLLMConfig(reply="arith"), host="127.0.0.1", port=0) as llm:
    llm.base_url                 # "http://127.0.0.1:PORT/v1"
    llm.counts                   # {sample_key: chat requests received, failed ones included}
    llm.successes                # {sample_key: 200 replies sent}
    llm.stats()                  # same document as GET /_stats
    llm.reconfigure(fail_rate=0.5)   # validated; raises proctor.errors.InputError on bad fields
    llm.reset()                  # zero the counters

# 2. In a daemon thread with its own loop (sync tests); same attributes:
with FakeLLMThread(cfg) as llm: ...

# 3. In a subprocess of its own process group (benchmarks, subprocess tests); same attributes,
#    read over HTTP; killed (SIGTERM, then SIGKILL) on exit; LaunchError if not up within 15 s:
with FakeLLMProcess(cfg) as llm: ...          # also usable as `async with`
```
From a shell: ``python -m proctor.testing serve --port 0 --latency 0.05 --config cfg.json
--port-file PATH`` (every ``FakeLLMConfig`` field can be set in the JSON file; ``--latency``,
``--jitter``, ``--model``, ``--reply``, ``--seed`` override it; ``--answers-from DATA.jsonl`` adds
each question of a dataset to ``answers`` with ``Answer: <target>``; it prints what it will reply,
and exits cleanly on SIGTERM/SIGINT).

Configuration (``FakeLLMConfig``, all fields changeable at runtime)
-------------------------------------------------------------------
``latency``/``jitter`` (seconds; a stream spreads latency over its chunks), ``model`` (other
names get 404 ``model_not_found``), ``reply`` (``"echo"``, ``"arith"`` or fixed text),
``answers`` (substring of the last user message -> reply), ``script`` (tool-calling turns),
``fail_rate`` (500), ``rate_limit_rate`` (429 + ``Retry-After: retry_after``), ``hang_rate`` /
``hang_seconds``, ``max_rps`` (token bucket, burst = max_rps, 429 with the wait as Retry-After),
``max_concurrency`` (429), ``fail_samples`` (sample key -> number of leading 500s, -1 = always),
``context_limit`` (total characters of message contents; above it 400
``context_length_exceeded``; the error message reports characters as "tokens"), ``require_key``
(401 without ``Authorization: Bearer <key>``), ``seed`` (for every random choice).

Sample key
----------
Each chat request is attributed to the ``X-Proctor-Sample-Id`` header if present, else to the
text of its FIRST user message (for ``/v1/completions``: the prompt). ``counts``,
``successes`` and ``fail_samples`` are keyed by it.

Endpoints
---------
``GET /v1/models`` (also the health probe; honours ``require_key``), ``POST /v1/chat/completions``
(``stream``, ``stream_options.include_usage``, ``max_tokens``/``max_completion_tokens``, ``stop``;
usage = chars/4, at least 1), ``POST /v1/completions`` (legacy, ``choices[0].text``; ignores
``script``; with ``logprobs: N`` it adds deterministic ``logprobs`` — tokens are whitespace plus
a word, the token carrying the ``arith`` answer to the preceding text scores -0.1, others
``-(1 + len/2)`` — and with ``echo: true`` the prompt comes back before the reply), ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize`` (vLLM's shape, at the server
root, with the same whitespace-and-word tokens, so lm-eval's ``local-completions`` with
``tokenizer_backend=remote`` can run multiple-choice tasks here), ``GET /_stats``, ``POST /_reset``, ``POST /_config`` (JSON object of fields; replies
with the whole new config). Bad JSON or missing ``messages`` -> 400 in OpenAI's error shape.

Order of decisions for a chat request
-------------------------------------
Faults first, in this order: ``fail_samples`` -> ``context_limit`` -> ``require_key`` -> model
name -> ``max_concurrency`` -> ``max_rps`` -> ``fail_rate`` -> ``rate_limit_rate`` ->
``hang_rate`` (a hang then replies normally). Then the reply: ``script`` -> ``answers`` ->
``reply``; then ``stop``, then ``max_tokens`` (finish_reason ``"length"``).

Reply modes
-----------
- ``"echo"``: the last user message's text. Any other string that is not a mode: that fixed text.
- ``"arith"``: the LAST ``<int> <op> <int>`` in the last user message, op in ``+ - * /`` or
  ``plus minus times``; integer result as a string (``/`` truncates toward zero); else
  ``"I don't know"``.
- ``script``: turn ``k`` = number of assistant messages already in the request (clamped to the
  last entry). An entry is ``{"content": "..."}`` and/or ``{"tool_calls": [{"name": "python",
  "arguments": {...} or "json string"}]}``; the server adds ``id`` (``call_<n>``, unique per
  process), ``type: "function"`` and JSON-encodes the arguments. ``{"content_from": MODE}``
  computes the content with ``answers`` and reply mode MODE instead (e.g. ``"arith"`` for the
  final answer of an agent loop). ``finish_reason`` is ``"tool_calls"`` when the turn has calls.
"""

from __future__ import annotations

from ._config import FakeLLMConfig
from ._hosts import FakeLLMProcess, FakeLLMThread
from ._server import SAMPLE_HEADER, FakeLLM

__all__ = ["SAMPLE_HEADER", "FakeLLM", "FakeLLMConfig", "FakeLLMProcess", "FakeLLMThread"]
