"""What a spec submitted to a server may ask for: no plugin code, no raised ceilings.

A server job is hostile until proven otherwise. The sandbox contains what a job does; this policy
keeps a spec from asking the engine to run code the admin did not install (custom tools, dotted
solver/scorer types, ``solver.base_dir`` pointing a custom path elsewhere, another interpreter for
the python tool) or to give model-written code more than the server's ceilings (network, time,
memory). Each refusal is a 400 naming the key, before anything is queued.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from proctor.errors import InputError
from proctor.server.settings import SandboxSettings


def check_spec(spec: Mapping[str, Any], policy: SandboxSettings) -> None:
    """Raise ``InputError`` naming the first key this server does not allow."""
    for kind in ("solver", "scorer"):
        component = spec.get(kind)
        ctype = (
            component
            if isinstance(component, str)
            else component.get("type")
            if isinstance(component, Mapping)
            else None
        )
        if isinstance(ctype, str) and ("." in ctype or ":" in ctype) and ctype not in policy.plugins:
            raise InputError(
                f"{kind}.type: {ctype!r} is plugin code, which this server does not allow",
                hint="use a built-in type, or ask the server's admin to add it to sandbox.plugins",
            )
        if isinstance(component, Mapping):
            base_dir = component.get("base_dir")
            if base_dir is not None and str(base_dir) not in policy.base_dirs:
                raise InputError(
                    f"{kind}.base_dir is not allowed on this server (paths resolve in the job's directory)"
                )
            for where, tool in _tools(component, kind):
                _check_tool(where, tool, policy)


def _tools(node: Any, where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every tool entry under ``node`` (solver tools, an expert's tools), with its dotted key."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{where}.{key}"
            if key == "tools" and isinstance(value, list):
                for i, entry in enumerate(value):
                    entry = {"type": entry} if isinstance(entry, str) else entry
                    if isinstance(entry, Mapping):
                        yield f"{here}[{i}]", entry
                        yield from _tools(entry, f"{here}[{i}]")
            else:
                yield from _tools(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _tools(value, f"{where}[{i}]")


def _check_tool(where: str, tool: Mapping[str, Any], policy: SandboxSettings) -> None:
    kind = tool.get("type")
    if kind == "custom":
        path = tool.get("path")
        if not isinstance(path, str) or path not in policy.plugins:
            raise InputError(
                f"{where}.path: custom tools are plugin code, which this server does not allow",
                hint="ask the server's admin to add it to sandbox.plugins",
            )
    if kind == "python":
        _check_python(where, tool, policy)
    if kind in ("ask_expert", "expert") and isinstance(tool.get("python"), Mapping):
        _check_python(f"{where}.python", tool["python"], policy)


def _check_python(where: str, opts: Mapping[str, Any], policy: SandboxSettings) -> None:
    interpreter = opts.get("interpreter")
    if interpreter is not None and interpreter not in policy.tool_interpreters:
        raise InputError(f"{where}.interpreter is not allowed on this server (the python tool uses its own Python)")
    if opts.get("network") and not policy.tool_network:
        raise InputError(f"{where}.network: this server does not let model-written code reach the network")
    timeout = opts.get("timeout")
    if isinstance(timeout, int | float) and timeout > policy.tool_timeout:
        raise InputError(f"{where}.timeout: at most {policy.tool_timeout:g} s on this server")
    if "memory_mb" in opts:
        memory = opts["memory_mb"]
        if memory is None or (isinstance(memory, int | float) and memory > policy.tool_memory_mb):
            raise InputError(f"{where}.memory_mb: at most {policy.tool_memory_mb} on this server (null is unlimited)")
