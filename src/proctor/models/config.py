"""How a spec describes a model role: where its replicas are, how to call them, how to launch them.

These are the validated shapes only; behaviour lives in ``client``, ``pool``, ``router`` and
``launch``. Keeping them here lets the task spec, the server and ``--dry-run`` share one schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from proctor._validation import StrictModel


class GenerateParams(StrictModel):
    """Sampling parameters sent with every chat request of a role."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    stream: bool = False
    """Stream the answer; needed to measure time to first token."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Passed through verbatim into the request body, e.g. ``chat_template_kwargs``."""

    def merged(self, other: GenerateParams | None) -> GenerateParams:
        """``other``'s explicitly set fields win over ours."""
        if other is None:
            return self
        data = self.model_dump(exclude_unset=True)
        extra = {**data.pop("extra_body", {}), **other.extra_body}
        data.update(other.model_dump(exclude_unset=True, exclude={"extra_body"}))
        data["extra_body"] = extra
        return GenerateParams(**data)


class ReplicaAddress(StrictModel):
    """One replica given as host and port (the shape of model-config JSON files)."""

    host: str
    port: int = Field(ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    path: str = "/v1"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


class RetryConfig(StrictModel):
    """Bounded retries: never more than ``max_attempts`` tries nor ``total_deadline`` seconds."""

    max_attempts: int = Field(default=6, ge=1, le=100)
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    total_deadline: float = Field(default=900.0, gt=0)


class HealthConfig(StrictModel):
    """How replicas are probed, at start and periodically."""

    path: str = "/models"
    """Probed relative to the replica's base URL (``/v1/models`` for ``.../v1``)."""
    interval: float = Field(default=15.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)
    """Failed calls within ``failure_window`` needed (with ``failure_ratio``) to open a breaker."""
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    """Share of a replica's calls within ``failure_window`` (calls still in flight count as not
    failed) that must have failed to open its breaker. A rate, not a streak: a few failures among
    many concurrent calls never take a replica out, even when they come back before the rest."""
    failure_window: float = Field(default=10.0, gt=0)
    """Seconds of recent calls the breaker looks at."""
    cooldown: float = Field(default=10.0, gt=0)
    """Longest wait between probes of an open replica (they start at 50 ms and double); a probe
    that answers admits one trial call."""
    check_at_start: bool = True


class LaunchConfig(StrictModel):
    """A model server proctor starts (or reuses) for the run and stops afterwards."""

    kind: Literal["llama-cpp", "vllm", "sglang", "command"]
    model_path: str | None = None
    """GGUF file / HF directory to serve; relative paths are relative to the spec file."""
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    gpus: str | None = None
    """Value for ``CUDA_VISIBLE_DEVICES``."""
    extra_args: list[str] = Field(default_factory=list)
    argv: list[str] | None = None
    """For kind ``command``: argv template with ``{port}``, ``{host}``, ``{model_path}``, ``{model}``."""
    env: dict[str, str] = Field(default_factory=dict)
    health_deadline: float = Field(default=600.0, gt=0)
    replicas: int = Field(default=1, ge=1, le=256)
    """Data-parallel copies: replica i listens on ``port + i``; the role's pool is all of them."""
    gpus_per_replica: int | None = Field(default=None, ge=1)
    """GPUs each replica gets: replica i sees GPUs ``i*g .. i*g+g-1`` (of ``gpus`` when given)."""
    stagger: float = Field(default=5.0, ge=0)
    """Seconds between starting one replica and the next, so they do not all load at once."""

    @model_validator(mode="after")
    def _command_needs_argv(self) -> LaunchConfig:
        if self.kind == "command" and not self.argv:
            raise ValueError("launch kind 'command' needs 'argv' (a list: program and arguments)")
        if self.port + self.replicas - 1 > 65535:
            raise ValueError(f"{self.replicas} replicas from port {self.port} go past port 65535")
        if self.gpus_per_replica is not None and self.gpus is not None:
            have = len([g for g in self.gpus.split(",") if g.strip()])
            if have < self.replicas * self.gpus_per_replica:
                raise ValueError(
                    f"gpus lists {have} device(s); {self.replicas} replicas x {self.gpus_per_replica} need more"
                )
        return self


class ModelConfig(StrictModel):
    """One model role: a pool of replicas of the same model, and how to call it."""

    model: str = ""
    """Model name sent in requests (``model`` field of the OpenAI API). May be left out when
    ``launch`` starts the server: the served name is then used."""
    base_url: str | None = None
    replicas: list[str | ReplicaAddress] = Field(default_factory=list)
    """Several replicas of the same model: base URLs or ``{host, port}`` entries."""
    pool_file: str | None = None
    """Model-config JSON: ``{"model-name": [{"ip_addr": "node1", "port": 1800}, ...]}``."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key; the key itself never goes in a file."""
    request_timeout: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=4096, ge=1)
    """Connection cap per replica (and the start of its adaptive limit). The run's concurrency
    already bounds requests in flight; lower this to protect a server shared by several roles."""
    adaptive_concurrency: bool = True
    retry: RetryConfig = Field(default_factory=RetryConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    launch: LaunchConfig | None = None
    params: GenerateParams = Field(default_factory=GenerateParams)
    """Per-role sampling defaults (e.g. a judge at temperature 0)."""
    supports_images: bool = False
    transport: Literal["http", "tunnel"] = "http"
    """``tunnel``: ``base_url`` is a proctor server's private-model facade, and calls go over one
    WebSocket to its hub instead of an HTTP request each. A server's jobs get it for their private
    roles from a run option (``proctor.models.private``); there is no reason to write it in a spec."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        sources = [self.base_url is not None, bool(self.replicas), self.pool_file is not None]
        if sum(sources) > 1:
            raise ValueError("give only one of 'base_url', 'replicas' or 'pool_file'")
        if sum(sources) == 0 and self.launch is None:
            raise ValueError("give one of 'base_url', 'replicas', 'pool_file' or 'launch'")
        if not self.model and self.launch is None:
            raise ValueError("'model' (the model name sent in requests) is required")
        if self.transport == "tunnel" and self.base_url is None:
            raise ValueError("transport 'tunnel' needs 'base_url' (the server's private-model facade)")
        return self
