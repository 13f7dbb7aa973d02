"""The task spec: one YAML file that says what to evaluate, with what, and how.

A spec runs unchanged locally and on a server, so everything in it is declarative and paths are
relative to the spec file. Validation errors name the key and what was expected, because the
person reading them is mid-way through writing a YAML file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretBytes, SecretStr, ValidationError, field_validator
from pydantic_core import to_jsonable_python

from proctor import _yaml
from proctor._validation import StrictModel
from proctor.errors import SpecError
from proctor.evals.options import location, plain_message
from proctor.models.config import GenerateParams, ModelConfig
from proctor.models.private import PrivateEndpoints

FieldName = str | list[str]
"""A dataset column, or several alternatives (the first one present in a row is used)."""


class FieldMap(StrictModel):
    """Which dataset columns hold proctor's sample fields."""

    id: FieldName | None = "id"
    """``null`` numbers the rows instead (stable only while the file does not change)."""
    input: FieldName = "input"
    target: FieldName | None = "target"
    choices: FieldName | None = None
    """A column holding a list of choices."""
    category: FieldName | None = None
    images: FieldName | None = None
    """A column holding an image URL / data URL, or a list of them."""
    metadata: list[str] = Field(default_factory=list)
    """Extra columns copied into the sample's metadata."""


class DatasetConfig(StrictModel):
    """Where the samples come from and which of them to run."""

    path: str
    format: Literal["jsonl", "json", "csv", "parquet"] | None = None
    """Inferred from the file's extension when not given."""
    fields: FieldMap = Field(default_factory=FieldMap)
    limit: int | None = Field(default=None, ge=1)
    shuffle: bool = False
    seed: int = 0
    shard: str | None = None
    """``i/n``: run only the i-th of n interleaved shards (0-based)."""

    @field_validator("shard")
    @classmethod
    def _check_shard(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"expected 'i/n' such as '0/4', got {value!r}")
        index, count = (int(p) for p in parts)
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard index must be in 0..n-1, got {value!r}")
        return value


class ComponentConfig(BaseModel):
    """A solver or scorer: its registered ``type`` plus that type's own options."""

    model_config = ConfigDict(extra="allow")
    type: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExecutorConfig(StrictModel):
    """Where the samples run: ``local`` (this process) or ``ray`` (actors on a Ray cluster, docs/ray.md).

    Not part of the fingerprint: a run may resume under another executor with equal results.
    """

    kind: Literal["local", "ray"] = "local"
    workers: int = Field(default=2, ge=1, le=1024)
    """Ray actors (each its own event loop and model router, with a share of ``concurrency``)."""


class TaskSpec(StrictModel):
    """A whole evaluation."""

    name: str
    dataset: DatasetConfig
    solver: ComponentConfig
    scorer: ComponentConfig
    models: dict[str, ModelConfig]
    concurrency: int = Field(default=32, ge=1, le=100_000)
    generate: GenerateParams = Field(default_factory=GenerateParams)
    """Sampling parameters for the subject model."""
    time_limit: float | None = Field(default=None, gt=0)
    """Seconds one sample may take in all (model and tool calls); past it the sample errors."""
    description: str | None = None
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("solver", "scorer", mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("models")
    @classmethod
    def _needs_subject(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        return require_subject(value)

    def roles_used(self) -> list[str]:
        """Every model role this spec names: its ``models`` and those its solver and scorer ask for.

        A role may be named (``role: judge`` in a scorer, ``roles: [...]`` in a tool) without an
        entry in ``models``, and then ``--model ROLE=URL@NAME`` supplies it; any other role name
        on the command line is a typo, which must not pass silently.
        """
        used = set(self.models)
        if self.scorer.type == "judge":
            used.add(str(self.scorer.options.get("role", "judge")))
        used.update(_named_roles(self.solver.options))
        used.update(_named_roles(self.scorer.options))
        return sorted(used)

    def fingerprint(self) -> dict[str, str]:
        """What must not change between a run and its resumption for results to be comparable.

        The dataset is checked sample by sample instead (``Ledger.differences``): adding samples
        extends a run, while changing or removing one makes it another run.
        """
        return {
            "fields": _digest(self.dataset.fields.model_dump()),
            "model": self.models["subject"].model,
            "solver": _digest(self.solver.model_dump()),
            "generate": _digest(self.generate.model_dump()),
        }


def require_subject(models: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
    """Every kind of spec evaluates its ``subject`` role."""
    if "subject" not in models:
        raise ValueError("a 'subject' role (the model under evaluation) is required")
    return models


def _named_roles(options: Any) -> set[str]:
    """Values of ``role`` / ``roles`` keys anywhere in a component's options (tools included)."""
    found: set[str] = set()
    if isinstance(options, dict):
        for key, value in options.items():
            if key == "role" and isinstance(value, str):
                found.add(value)
            elif key == "roles" and isinstance(value, list):
                found.update(v for v in value if isinstance(v, str))
            else:
                found |= _named_roles(value)
    elif isinstance(options, list):
        for value in options:
            found |= _named_roles(value)
    return found


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    """One line per problem, each naming the dotted key, what was wrong and what was given."""
    lines = [f"{source} is not a valid task spec:"]
    for err in exc.errors():
        lines.append(f"  - {location(err['loc']) or '(top level)'}: {plain_message(err)}")
    return "\n".join(dict.fromkeys(lines))


def parse_spec(data: Any, *, source: str) -> TaskSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source} must be a YAML mapping of keys (name, dataset, solver, scorer, models)")
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source=source)) from None


def load_spec(path: Path) -> TaskSpec:
    """Read and validate a spec file."""
    return parse_spec(read_spec_data(path), source=str(path))


def is_lm_eval_spec(data: Any) -> bool:
    """An ``lm_eval:`` section makes a spec an lm-eval run (``proctor.harness``)."""
    return isinstance(data, dict) and "lm_eval" in data


def read_spec_data(path: Path) -> Any:
    """A spec file's YAML, read with bounds; each way it can fail is one clear line."""
    if not path.exists():
        raise SpecError(f"spec file not found: {path}", hint="give the path to a task spec YAML file")
    if path.is_dir():
        raise SpecError(f"{path} is a directory, not a spec file")
    try:
        data = _yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not a UTF-8 text file") from None
    except OSError as exc:
        raise SpecError(f"cannot read the spec file {path}: {exc.strerror or exc}") from None
    return data


class _HasModels(Protocol):
    models: dict[str, ModelConfig]

    def roles_used(self) -> list[str]: ...

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Self: ...


_SpecT = TypeVar("_SpecT", bound=_HasModels)


def apply_overrides(spec: _SpecT, models: list[str], concurrency: int | None) -> _SpecT:
    """``--model`` (each ``ROLE=URL@NAME``) and ``--concurrency`` over a spec of either kind."""
    for override in models:
        spec = apply_model_override(spec, override)
    return spec.model_copy(update={"concurrency": concurrency}) if concurrency else spec


def apply_private_endpoints(spec: _SpecT, environ: Mapping[str, str]) -> _SpecT:
    """A server job's private roles sent to its facade (``proctor.models.private``), if it has any.

    Task specs and ``lm_eval:`` specs alike: both reach their models through the same roles."""
    private = PrivateEndpoints.from_environ(environ)
    if private is None:
        return spec
    return spec.model_copy(update={"models": private.apply(spec.models)})


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A ``--model ROLE=URL@NAME`` (or ``ROLE=URL``) flag, parsed once for every command that takes it."""

    role: str
    url: str
    """The base URL without a trailing slash."""
    name: str | None
    """The model name, None when the flag gave only a URL."""

    @classmethod
    def parse(cls, text: str) -> ModelTarget:
        """Split ``ROLE=URL@NAME`` at the last ``@``; if what follows holds ``://``, it was all the URL."""
        role, sep, target = text.partition("=")
        if not sep or not role or not target:
            raise SpecError(f"--model {text!r}: expected ROLE=URL@NAME, e.g. subject=http://127.0.0.1:8000/v1@qwen")
        url, at, name = target.rpartition("@")
        if not at or "://" in name:
            url, name = target, ""
        return cls(role=role, url=url.rstrip("/"), name=name or None)


def apply_model_override(spec: _SpecT, override: str) -> _SpecT:
    """``ROLE=URL@NAME`` (or ``ROLE=URL``) replaces where that role's requests go."""
    parsed = ModelTarget.parse(override)
    role, url, name = parsed.role, parsed.url, parsed.name
    if not url.startswith(("http://", "https://")):
        raise SpecError(f"--model {override!r}: the URL must start with http:// or https://")
    used = spec.roles_used()
    if role not in used:
        raise SpecError(f"--model {override!r}: the spec uses no role {role!r}; its roles are: {', '.join(used)}")
    current = spec.models.get(role)
    if current is None and not name:
        raise SpecError(f"--model {override!r}: role {role!r} is not in the spec, so a model name is needed (URL@NAME)")
    base = current.model_dump(exclude={"base_url", "replicas", "pool_file", "launch"}) if current else {}
    base.update(base_url=url, model=name or base.get("model"))
    models = dict(spec.models)
    models[role] = ModelConfig.model_validate(base)
    return spec.model_copy(update={"models": models})


def dump_spec(spec: TaskSpec, *, dataset_path: Path) -> str:
    """The spec as run, for the run directory: absolute dataset path, defaults left implicit.

    The file must load again unchanged, because the printed resume command and ``proctor
    rescore`` read it back; so only secrets are redacted, never an ordinary setting that happens
    to look like one (``max_tokens``). A spec's schema has no secret field (keys are referenced
    by environment-variable name); secrets could only hide in the free-form mappings
    (``extra_body``, ``launch.env``, solver and tool options), which ``is_secret_name`` guards, or
    be typed as secrets (``SecretStr``).
    """
    data = spec.model_dump(mode="python", exclude_unset=True)
    data["dataset"]["path"] = str(dataset_path)
    return yaml.safe_dump(to_jsonable_python(_redact(data)), sort_keys=False)


REDACTED = "***"

_SECRET_LAST_WORDS = frozenset({"token", "secret", "password", "passwd", "authorization", "apikey", "credentials"})
"""A key is secret when its LAST word is one of these (``HF_TOKEN``, ``client_secret``), or it
ends in ``api_key``. Words, not substrings: ``max_tokens`` and ``api_key_env`` (the *name* of a
variable) are ordinary settings."""


def is_secret_name(key: str) -> bool:
    """Whether a mapping key names a secret value (the one rule; see ``_SECRET_LAST_WORDS``)."""
    words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]
    return bool(words) and (words[-1] in _SECRET_LAST_WORDS or words[-2:] == ["api", "key"])


def _redact(value: Any) -> Any:
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_name(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value
