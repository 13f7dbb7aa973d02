"""What an ``lm_eval:`` spec submitted to a server may ask for: no stranger's task code, no zoo
task the admin did not allow, no path outside the job.

lm-eval task YAML can make lm-eval import Python: ``!function utils.fn`` (``process_docs``,
``custom_dataset``, ``doc_to_text``, ``class``, metrics...) imports ``utils.py`` from the YAML's
own directory. A task uploaded with a job is a stranger's, so its YAML may use only YAML's own
tags (no ``!function``, however spelled), and its ``include:`` may only name another uploaded
file. Task code runs only from a directory the admin registered (``lm_eval.task_dirs``), which a
spec names by its registered name in ``include_path``. Task names not found in the job's task
files are lm-eval's own zoo, allowed only as ``lm_eval.builtin_tasks`` says. Each refusal is an
``InputError`` (400) naming the key, before anything is queued or written.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import Field, field_validator
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proctor import _yaml
from proctor._validation import StrictModel
from proctor.errors import InputError
from proctor.server.schemas import UploadedFile

REFUSED_KEYS = {
    "trust_remote_code": "proctor never runs a dataset's or model's own code on a server",
    "lm_eval_path": "the server runs its own lm-eval through proctor; no other executable",
    "output_path": "a job's outputs are its artifacts (out/lm_eval/...); fetch them with `proctor results`",
}
"""lm-eval options a server job may not give, and why (the 400's hint)."""
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
"""A task or group name: never a path (lm-eval would read a YAML file from there)."""
YAML_SUFFIXES = (".yaml", ".yml")
STANDARD_TAG = "tag:yaml.org,2002:"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV = {"PATH", "HOME", "TMPDIR", "USER", "VIRTUAL_ENV", "HF_HOME", "HF_DATASETS_CACHE"}
RESERVED_ENV_PREFIXES = ("PROCTOR_", "PYTHON", "LD_", "HF_HUB_", "HF_DATASETS_")
"""What ``lm_eval.env_vars`` may never list: the server's own settings for a job, the offline
switches, and variables that change which code the interpreter loads."""


class LmEvalServerSettings(StrictModel):
    """The admin's choices for ``lm_eval`` jobs (the ``lm_eval:`` section of the server config)."""

    task_dirs: dict[str, Path] = Field(default_factory=dict)
    """Task directories on the server, by name; a spec's ``include_path`` may give the name. Their
    YAML may use ``!function``: the admin vouches for the Python beside it. Jobs read them only."""
    builtin_tasks: list[str] = Field(default_factory=list)
    """lm-eval's own tasks and groups a job may run (``"*"``: all). Jobs are offline and their
    Hugging Face cache starts empty in the job's directory, so a zoo task whose data is on the hub
    cannot load it there: register a task directory with local data instead."""
    env_vars: list[str] = Field(default_factory=list)
    """Environment variables the lm-eval-server API's ``env_vars`` may set for a job (others: 400)."""

    @field_validator("env_vars")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"{name!r} is set by the server for every job (or changes what code runs)")
        return value


def rewrite_spec(spec: dict[str, Any], files: Mapping[str, UploadedFile], settings: LmEvalServerSettings) -> None:
    """Check an ``lm_eval:`` spec against the server's policy; a registered ``include_path`` name
    becomes that directory's absolute path. Raises ``InputError`` naming the first refused key."""
    uploads = {name: _decode(name, upload) for name, upload in files.items()}
    section = spec.get("lm_eval")
    if not isinstance(section, dict):
        raise InputError("lm_eval must be a mapping (tasks, include_path, num_fewshot, limit, ...)")
    for where in (section, spec):
        for key, why in REFUSED_KEYS.items():
            if key in where:
                prefix = "lm_eval." if where is section else ""
                raise InputError(f"{prefix}{key} is not allowed on this server", hint=why)
    for key in ("dataset", "solver", "scorer"):
        if key in spec:
            raise InputError(f"{key}: an lm_eval spec takes its data and metrics from its lm-eval tasks")
    tasks = section.get("tasks")
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else tasks
    if not isinstance(names, list) or not names:
        raise InputError("lm_eval.tasks must list task names")
    for name in names:
        if not isinstance(name, str) or not TASK_NAME_RE.match(name):
            raise InputError(f"lm_eval.tasks: {str(name)[:80]!r} is not a task name (a name, never a path)")
    _check_uploaded_yaml(uploads)
    defined = _include_path(section, uploads, settings)
    allowed = set(settings.builtin_tasks)
    zoo = [n for n in names if n not in defined and "*" not in allowed and n not in allowed]
    if zoo:
        raise InputError(
            f"lm_eval.tasks: {', '.join(zoo)} not in the job's task files, and lm-eval's built-in "
            "tasks are not allowed on this server" + (f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""),
            hint="upload the task YAML with include_path, name a registered task directory, "
            "or ask the admin to add the task to lm_eval.builtin_tasks",
        )


def _include_path(section: dict[str, Any], uploads: Mapping[str, bytes], settings: LmEvalServerSettings) -> set[str]:
    """Resolve ``include_path``; return the task and group names its YAML files define."""
    include = section.get("include_path")
    if include is None:
        return set()
    if not isinstance(include, str) or not include.strip():
        raise InputError("lm_eval.include_path must be a directory of uploaded task files or a registered name")
    registered = settings.task_dirs.get(include.strip().rstrip("/"))
    if registered is not None:
        section["include_path"] = str(registered.resolve())
        return _names_in_dir(registered.resolve())
    rel = PurePosixPath(include)
    if rel.is_absolute() or ".." in rel.parts:
        raise InputError(
            f"lm_eval.include_path {include!r} must be inside the job (uploaded) or a registered name",
            hint=_registered_hint(settings),
        )
    prefix = rel.as_posix().rstrip("/")
    inside = {n: raw for n, raw in uploads.items() if prefix in (".", "") or n.startswith(prefix + "/")}
    if not inside:
        raise InputError(
            f"lm_eval.include_path {include!r} was not uploaded and is not a registered task directory",
            hint="upload the task files next to the spec (`proctor submit` does this); " + _registered_hint(settings),
        )
    section["include_path"] = prefix or "."
    names: set[str] = set()
    for name, raw in inside.items():
        if name.endswith(YAML_SUFFIXES):
            names |= _defined_names(_compose(name, raw))
    return names


def _decode(name: str, upload: UploadedFile) -> bytes:
    if upload.encoding == "utf-8":
        return upload.content.encode()
    try:
        return base64.b64decode(upload.content, validate=True)
    except ValueError:
        raise InputError(f"file {name!r} is not valid base64") from None


def _registered_hint(settings: LmEvalServerSettings) -> str:
    known = ", ".join(sorted(settings.task_dirs)) or "none"
    return f"registered task directories on this server: {known}"


def _check_uploaded_yaml(uploads: Mapping[str, bytes]) -> None:
    """No Python at all; every uploaded YAML file, and every file one of them includes (lm-eval
    reads ``include: _template`` whatever its suffix): YAML's own tags only, no
    ``trust_remote_code`` (a dataset's loading script), ``include:`` only of another uploaded file."""
    for name in uploads:
        if name.endswith((".py", ".pyc", ".so")):
            raise InputError(
                f"{name}: an lm_eval job may not upload code (task code from a submission never runs)",
                hint="ask the server's admin to register the task directory (lm_eval.task_dirs)",
            )
    todo = [n for n in uploads if n.endswith(YAML_SUFFIXES)]
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        root = _compose(name, uploads[name])
        for node in _walk(root):
            if not node.tag.startswith(STANDARD_TAG):
                raise InputError(
                    f"{name}: the YAML tag {node.tag[:60]!r} is not allowed: lm-eval's !function imports "
                    "Python from the task's directory, and task code from a submission never runs",
                    hint="ask the server's admin to register the task directory (lm_eval.task_dirs) and name it "
                    "in include_path",
                )
            if isinstance(node, ScalarNode) and node.value == "trust_remote_code":
                raise InputError(
                    f"{name}: trust_remote_code is not allowed on this server", hint=REFUSED_KEYS["trust_remote_code"]
                )
        for target in _top_level(root, "include"):
            path = (PurePosixPath(name).parent / target).as_posix()
            rel = PurePosixPath(target)
            if rel.is_absolute() or ".." in rel.parts or path not in uploads:
                raise InputError(f"{name}: include {target[:80]!r} must name another uploaded task file beside it")
            todo.append(path)


def _compose(name: str, raw: bytes) -> Node | None:
    try:
        loader = _yaml._BoundedLoader(raw.decode("utf-8"))
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{name}: not valid YAML ({str(exc).splitlines()[0][:120]})") from None


def _walk(node: Node | None) -> Iterator[Node]:
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, MappingNode):
            for key, value in current.value:
                stack += [key, value]
        elif isinstance(current, SequenceNode):
            stack += list(current.value)


def _top_level(root: Node | None, key: str) -> list[str]:
    """The string values of ``key`` in a top-level mapping (a string or a list of strings)."""
    if not isinstance(root, MappingNode):
        return []
    out: list[str] = []
    for k, v in root.value:
        if isinstance(k, ScalarNode) and k.value == key:
            items = v.value if isinstance(v, SequenceNode) else [v]
            out += [i.value for i in items if isinstance(i, ScalarNode) and isinstance(i.value, str)]
    return out


def _defined_names(root: Node | None) -> set[str]:
    return {n for key in ("task", "group", "tag") for n in _top_level(root, key)}


def _names_in_dir(path: Path) -> set[str]:
    """Task names in a registered directory (the admin's own files; read, never imported here)."""
    names: set[str] = set()
    for file in sorted(path.rglob("*"))[:10_000]:
        if file.suffix in YAML_SUFFIXES and file.is_file():
            try:
                names |= _defined_names(_compose(file.name, file.read_bytes()))
            except (InputError, OSError):
                continue
    return names


def readable_paths(settings: LmEvalServerSettings) -> list[Path]:
    """What every job may read besides its own directory: the registered task directories."""
    return [p.resolve() for p in settings.task_dirs.values()]


def check_env_vars(env: Mapping[str, Any], settings: LmEvalServerSettings) -> dict[str, str]:
    """The lm-eval-server API's ``env_vars``: only names on the admin's allow-list, string values."""
    refused = sorted(k for k in env if k not in settings.env_vars)
    if refused:
        allowed = ", ".join(settings.env_vars) or "none"
        raise InputError(
            f"env_vars: {', '.join(refused)[:200]} not allowed on this server (allowed: {allowed})",
            hint="remove them, or ask the server's admin to add them to lm_eval.env_vars",
        )
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(value, str | int | float | bool) or len(str(value)) > 4096:
            raise InputError(f"env_vars.{key} must be a string of at most 4096 characters")
        out[key] = str(value)
    return out


def job_env(request: Mapping[str, Any], settings: LmEvalServerSettings) -> dict[str, str]:
    """The stored ``env_vars`` of an lm_eval job, checked again at each start (the allow-list may
    have shrunk since it was queued): only allowed names reach the job."""
    env = request.get("env") if request.get("kind") == "lm_eval" else None
    if not isinstance(env, dict):
        return {}
    return {k: str(v) for k, v in env.items() if k in settings.env_vars}
