"""Built-in tools of the agent solver, and how a spec's ``tools:`` list becomes Tool objects.

A spec entry is a type name (``python``) or a mapping with ``type`` and that tool's options
(``{type: retrieve, url: ...}``). ``type: custom`` loads a tool from Python code:
``{type: custom, path: "my_pkg.tools:make", options: {...}}`` or ``path: "tools.py:MyTool"``, where
the attribute is a ``Tool`` subclass, a ``Tool`` instance, or a callable taking the ``options``
mapping and returning a tool or a list of tools.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from proctor.errors import SpecError
from proctor.evals.agent.tools.answer import AnswerOptions, AnswerTool
from proctor.evals.agent.tools.base import Tool, ToolCall, ToolCallContext, ToolOutcome, invoke_tool
from proctor.evals.agent.tools.expert import ExpertOptions, ExpertTool
from proctor.evals.agent.tools.python import PythonOptions, PythonTool
from proctor.evals.agent.tools.retrieve import RetrieveOptions, RetrieveTool
from proctor.evals.agent.tools.web_search import WebSearchOptions, WebSearchTool
from proctor.evals.options import format_errors

__all__ = [
    "BUILTIN_TOOLS",
    "Tool",
    "ToolCall",
    "ToolCallContext",
    "ToolOutcome",
    "build_tools",
    "invoke_tool",
    "load_custom",
]

BUILTIN_TOOLS: dict[str, tuple[type[BaseModel], Callable[[Any], Tool]]] = {
    "python": (PythonOptions, PythonTool),
    "retrieve": (RetrieveOptions, RetrieveTool),
    "web_search": (WebSearchOptions, WebSearchTool),
    "ask_expert": (ExpertOptions, ExpertTool),
    "answer": (AnswerOptions, AnswerTool),
}


def _error(where: str, exc: ValidationError) -> SpecError:
    return SpecError(format_errors(where, exc))


def load_custom(path: str, options: Mapping[str, Any], *, where: str, base_dir: Path | None = None) -> list[Tool]:
    """Import ``module:attr`` or ``file.py:attr`` and turn it into tools."""
    target, sep, attr = path.rpartition(":")
    if not sep or not target or not attr:
        raise SpecError(f"{where}.path: expected 'module:attribute' or 'file.py:attribute', got {path!r}")
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_absolute() and base_dir is not None:
                file = base_dir / file
            if not file.is_file():
                raise SpecError(f"{where}.path: file not found: {file}")
            mod_name = f"proctor_custom_tools_{abs(hash(str(file.resolve())))}"
            module = sys.modules.get(mod_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(mod_name, file)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where}.path: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    obj = getattr(module, attr, None)
    if obj is None:
        raise SpecError(f"{where}.path: {target!r} has no attribute {attr!r}")
    try:
        if isinstance(obj, Tool):
            made: Any = obj
        elif inspect.isclass(obj) and issubclass(obj, Tool):
            made = obj(**options) if options else obj()
        elif callable(obj):
            made = obj(dict(options))
        else:
            raise SpecError(f"{where}.path: {path!r} is neither a Tool nor a callable returning tools")
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where}: building the custom tool failed: {type(exc).__name__}: {exc}") from exc
    tools = list(made) if isinstance(made, (list, tuple)) else [made]
    for t in tools:
        if not isinstance(t, Tool) or not t.name:
            raise SpecError(f"{where}.path: {path!r} must produce Tool instances with a name, got {t!r}")
    return tools


def build_tools(entries: list[Any], *, where: str = "solver.tools", base_dir: Path | None = None) -> list[Tool]:
    """Validate every entry (errors name the key) and build the tools; names must be unique."""
    tools: list[Tool] = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {"type": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise SpecError(f"{here}: expected a tool name or a mapping with 'type'")
        opts = dict(entry)
        kind = opts.pop("type")
        if kind == "expert":
            kind = "ask_expert"
        if kind == "custom":
            path = opts.pop("path", None)
            options = opts.pop("options", {}) or {}
            if opts:
                raise SpecError(f"{here}.{sorted(opts)[0]}: unknown key (custom tools take 'path' and 'options')")
            if not isinstance(path, str):
                raise SpecError(f"{here}.path: expected 'module:attribute' or 'file.py:attribute'")
            if not isinstance(options, Mapping):
                raise SpecError(f"{here}.options: expected a mapping")
            tools.extend(load_custom(path, options, where=here, base_dir=base_dir))
            continue
        if kind not in BUILTIN_TOOLS:
            known = ", ".join([*BUILTIN_TOOLS, "custom"])
            raise SpecError(f"{here}.type: unknown tool {kind!r}; known: {known}")
        model, factory = BUILTIN_TOOLS[kind]
        try:
            parsed = model.model_validate(opts)
        except ValidationError as exc:
            raise _error(here, exc) from None
        tools.append(factory(parsed))
    seen: set[str] = set()
    for t in tools:
        if t.name in seen:
            raise SpecError(f"{where}: two tools are named {t.name!r}; give one a different 'name'")
        seen.add(t.name)
    return tools
