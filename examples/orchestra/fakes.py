"""Stand-ins for every service the orchestra example talks to, in one process.

Five fake LLM servers (orchestrator, three experts, judge) and a second "lenient" judge for the
rescoring demo, on the ports ``spec.yaml`` names. The retrieval service is the real one, which
``proctor run`` starts itself (``launch:`` in the spec); tests that want the BM25 stand-in over
``corpus.jsonl`` instead get it from ``start(..., retrieval=True)``. The orchestrator follows a script (search and code in parallel, then hand the question to
the answering expert); the experts answer from keyword tables. Nothing here is smart: it exercises
the plumbing (tool calls, experts, sandbox, retrieval, judge, events) exactly as real models would.

    python examples/orchestra/fakes.py            # Ctrl-C to stop
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from proctor.testing import FakeLLM, FakeLLMConfig
from proctor.testing.retrieval import RetrievalServer

HERE = Path(__file__).resolve().parent

PORTS = {"orchestrator": 8101, "searcher": 8102, "coder": 8103, "answerer": 8104, "judge": 8105, "judge-lenient": 8107}
RETRIEVAL_PORT = 8106

ORCHESTRATOR_SCRIPT: list[dict[str, Any]] = [
    {
        "content": "",
        "tool_calls": [
            {"name": "search", "arguments": {"task": "Find the fact the question asks about."}},
            {"name": "enhance_reasoning", "arguments": {"task": "Compute anything numeric in the question."}},
        ],
    },
    {"content": "", "tool_calls": [{"name": "answer", "arguments": {"task": "Answer using the search results.", "model": "answerer"}}]},
]

SEARCH_QUERIES = {
    "Eiffel": "Eiffel Tower completed",
    "Python": "Python programming language creator",
    "Everest": "Mount Everest elevation metres",
    "2**100": "2 to the power of 100",
    "Fe": "chemical element symbol Fe",
    "Colosseum": "Colosseum city",
    "Mars": "moons of Mars",
    "Pride": "Pride and Prejudice novel author",
}

ANSWERS = {  # two are off on purpose, so the judge has something to judge
    "Eiffel": "1889",
    "Python": "Guido van Rossum",
    "Everest": "About 8,849 m",
    "2**100": "115",
    "Fe": "Iron",
    "Colosseum": "Rome",
    "Mars": "One",
    "Pride": "Jane Austen",
}


def configs() -> dict[str, FakeLLMConfig]:
    return {
        "orchestrator": FakeLLMConfig(model="orchestrator", script=ORCHESTRATOR_SCRIPT),
        "searcher": FakeLLMConfig(model="searcher", answers=SEARCH_QUERIES, reply="general knowledge"),
        "coder": FakeLLMConfig(model="coder", reply="```python\nprint(sum(int(d) for d in str(2**100)))\n```"),
        "answerer": FakeLLMConfig(model="answerer", answers=ANSWERS, reply="I don't know"),
        "judge": FakeLLMConfig(model="judge", reply="extracted_final_answer: see response\nreasoning: strict\ncorrect: no"),
        "judge-lenient": FakeLLMConfig(model="judge-lenient", reply="extracted_final_answer: see response\nreasoning: close enough\ncorrect: yes"),
    }


async def start(stack: AsyncExitStack, *, fixed_ports: bool = True, corpus: Path = HERE / "corpus.jsonl",
                retrieval: bool = True) -> dict[str, str]:
    """Start the fakes; returns ``name -> base URL`` (and ``retrieval -> /retrieve URL`` with the stand-in)."""
    urls: dict[str, str] = {}
    for name, cfg in configs().items():
        port = PORTS[name] if fixed_ports else 0
        llm = await stack.enter_async_context(FakeLLM(cfg, host="127.0.0.1", port=port))
        urls[name] = llm.base_url
    if retrieval:
        retr = await stack.enter_async_context(
            RetrievalServer.from_file(corpus, host="127.0.0.1", port=RETRIEVAL_PORT if fixed_ports else 0)
        )
        urls["retrieval"] = retr.url
    return urls


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        urls = await start(stack, retrieval=False)  # proctor run launches the real retrieval service
        for name, url in urls.items():
            print(f"{name:14s} {url}", flush=True)
        print("ready; Ctrl-C to stop", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
