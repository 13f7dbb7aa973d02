"""The ``ask_expert`` tool: a named expert model behind a tool, with a prompt template.

The orchestrator (the subject model) delegates a sub-task to another model role. Three modes:

- ``answer``: the expert answers; with ``final: true`` its answer ends the sample (the pattern
  "the orchestrator picks an expert to answer, a judge grades it");
- ``python``: the expert writes a Python program, which runs in the ``python`` sandbox; the code
  and its output go back to the orchestrator;
- ``retrieve``: the expert writes a search query, the retrieval service answers it, and when that
  fails or finds nothing a web search is tried if one is configured.

Each sub-step is timed (``generation`` / ``code_writing`` / ``query_writing``, ``execution``,
``retrieval``, ``web_search``) and the tool event names the expert role and model, so the latency
of every expert and service can be analysed separately.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from proctor._validation import StrictModel
from proctor.errors import ToolError
from proctor.evals.agent.tools._http import get_session
from proctor.evals.agent.tools.base import Tool, ToolCallContext
from proctor.evals.agent.tools.python import PythonOptions, format_result, run_python
from proctor.evals.agent.tools.retrieve import RetrieveOptions, format_hits, retrieve
from proctor.evals.agent.tools.web_search import WebSearchOptions, format_search, make_provider
from proctor.evals.content import question_text
from proctor.models.config import GenerateParams

__all__ = ["DEFAULT_PROMPTS", "ExpertOptions", "ExpertTool", "render"]

DEFAULT_PROMPTS: dict[str, str] = {
    "answer": (
        "Answer the following question. Think briefly, then give the answer on the last line as "
        "'Answer: <answer>'.\n\nQuestion: {question}\n\nNotes from the assistant working on it:\n{task}"
    ),
    "python": (
        "Write a complete Python 3 program that computes what is asked below and prints the result. "
        "Reply with only the program in one ```python block.\n\nOverall question: {question}\n\n"
        "What to compute: {task}"
    ),
    "retrieve": (
        "Write one short search query (a few keywords) that would find the information needed below. "
        "Reply with the query only.\n\nOverall question: {question}\n\nInformation needed: {task}"
    ),
}

_STEP = {"answer": "generation", "python": "code_writing", "retrieve": "query_writing"}
_PLACEHOLDER = re.compile(r"\{(task|question)\}")
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def render(template: str, **values: str) -> str:
    """Fill ``{task}`` and ``{question}`` only: prompts full of JSON or code braces stay intact."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def extract_code(text: str) -> str:
    """The last fenced code block, or the whole text when the expert wrote bare code."""
    blocks = _CODE_BLOCK.findall(text)
    return (blocks[-1] if blocks else text).strip()


def extract_query(text: str) -> str:
    for line in text.strip().splitlines():
        line = re.sub(r"^(search\s+)?query\s*:\s*", "", line.strip(), flags=re.IGNORECASE).strip().strip("\"'`")
        if line:
            return line
    return ""


class ExpertOptions(StrictModel):
    name: str = "ask_expert"
    description: str | None = None
    role: str | None = None
    """The model role that answers (a key of the spec's ``models``)."""
    roles: list[str] | None = None
    """Several roles to choose from: the tool gets a ``model`` argument naming one of them."""
    mode: Literal["answer", "python", "retrieve"] = "answer"
    prompt: str | None = None
    """Template with ``{task}`` (what the orchestrator asked) and ``{question}`` (the sample)."""
    system_prompt: str | None = None
    params: GenerateParams | None = None
    final: bool = False
    """The expert's reply is the sample's final answer (mode ``answer`` only)."""
    timeout: float = Field(default=600.0, gt=0)
    python: PythonOptions = Field(default_factory=PythonOptions)
    retrieve: RetrieveOptions | None = None
    web_search: WebSearchOptions | None = None
    """Fallback of mode ``retrieve`` when retrieval fails or finds nothing."""

    @model_validator(mode="after")
    def _check(self) -> ExpertOptions:
        if (self.role is None) == (self.roles is None):
            raise ValueError("give exactly one of 'role' (a model role) or 'roles' (a list of them)")
        if self.roles is not None and not self.roles:
            raise ValueError("'roles' must not be empty")
        if self.mode == "retrieve" and self.retrieve is None and self.web_search is None:
            raise ValueError("mode 'retrieve' needs 'retrieve: {url: ...}' (and/or 'web_search')")
        if self.final and self.mode != "answer":
            raise ValueError("'final: true' is only meaningful with mode 'answer'")
        return self


class ExpertTool(Tool):
    def __init__(self, options: ExpertOptions) -> None:
        self.options = options
        self.name = options.name
        self.final = options.final
        self.timeout = options.timeout
        self.template = options.prompt or DEFAULT_PROMPTS[options.mode]
        self.description = (
            options.description
            or {
                "answer": "Ask an expert model to answer; describe what you know so far in 'task'.",
                "python": "Ask an expert to write and run Python code for a computation described in 'task'.",
                "retrieve": "Ask an expert to search for the information described in 'task'.",
            }[options.mode]
        )
        props: dict[str, Any] = {"task": {"type": "string", "description": "What the expert should do."}}
        required = ["task"]
        if options.roles:
            props["model"] = {"type": "string", "enum": list(options.roles), "description": "Which expert to ask."}
            required.append("model")
        self.parameters = {"type": "object", "properties": props, "required": required}
        self.provider = make_provider(options.web_search) if options.web_search else None

    async def run(self, args: dict[str, Any], ctx: ToolCallContext) -> str:
        role_name = args.get("model") if self.options.roles else self.options.role
        assert role_name is not None
        role = ctx.solve.models.role(role_name)
        ctx.info["expert_role"] = role_name
        model = getattr(getattr(role, "config", None), "model", None) or getattr(role, "model", None)
        if model is not None:
            ctx.info["expert_model"] = str(model)
        prompt = render(self.template, task=str(args["task"]), question=question_text(ctx.sample))
        messages: list[dict[str, Any]] = []
        if self.options.system_prompt:
            messages.append({"role": "system", "content": self.options.system_prompt})
        messages.append({"role": "user", "content": prompt})
        with ctx.step(_STEP[self.options.mode]):
            result = await role.chat(messages, params=self.options.params, sample_id=ctx.sample.id)
        text = result.content or ""
        if self.options.mode == "answer":
            if not text.strip():
                raise ToolError(f"expert {role_name} returned an empty answer")
            return text
        if self.options.mode == "python":
            return await self._python(text, ctx)
        return await self._retrieve(text, ctx)

    async def _python(self, text: str, ctx: ToolCallContext) -> str:
        code = extract_code(text)
        if not code:
            raise ToolError("the expert wrote no code")
        with ctx.step("execution"):
            res = await run_python(code, self.options.python)
        return f"Code:\n```python\n{code}\n```\nOutput:\n{format_result(res, self.options.python.timeout)}"

    async def _retrieve(self, text: str, ctx: ToolCallContext) -> str:
        query = extract_query(text)
        if not query:
            raise ToolError("the expert wrote no search query")
        session = get_session(ctx.solve.models)
        problem = ""
        if self.options.retrieve is not None:
            opts = self.options.retrieve
            try:
                with ctx.step("retrieval"):
                    hits = (await retrieve(session, opts.url, [query], opts.topk, opts.timeout))[0]
                if hits or self.provider is None:
                    return f"Query: {query}\nResults:\n{format_hits(hits, opts.doc_chars)}"
                problem = "retrieval found nothing"
            except ToolError as exc:
                if self.provider is None:
                    raise
                problem = exc.message
        if self.provider is None:
            return f"Query: {query}\nweb_search is unavailable: no provider configured"
        assert self.options.web_search is not None
        ctx.info["fallback"] = "web_search"
        with ctx.step("web_search"):
            found = await self.provider.search(session, query, self.options.web_search.k)
        note = f" ({problem}; web search used)" if problem else ""
        return f"Query: {query}{note}\nResults:\n{format_search(found, self.options.web_search.snippet_chars)}"
