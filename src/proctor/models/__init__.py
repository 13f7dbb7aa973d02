"""Model access: the one HTTP layer between proctor and OpenAI-compatible models.

``ModelRouter`` maps each role to a pool of replicas and is the only thing the engine calls.
Launching local servers lives in ``proctor.models.launch`` and is imported on demand, not here,
so that importing the router stays cheap.
"""

from __future__ import annotations

from proctor.models.config import GenerateParams, HealthConfig, ModelConfig, ReplicaAddress, RetryConfig
from proctor.models.router import ModelRouter, Role
from proctor.models.types import ChatResult, EventSink

__all__ = [
    "ChatResult",
    "EventSink",
    "GenerateParams",
    "HealthConfig",
    "ModelConfig",
    "ModelRouter",
    "ReplicaAddress",
    "RetryConfig",
    "Role",
]
