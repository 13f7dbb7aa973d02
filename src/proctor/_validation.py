"""The one strict pydantic base model and the one short rendering of validation errors.

Every typed boundary that reads outside input (task specs, launch blocks, server settings, request
bodies) rejects unknown keys, so a typo is an error and not a silently ignored option; and the
server and the retrieval service answer a bad request body in the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel", "problems"]


class StrictModel(BaseModel):
    """Rejects unknown keys so a typo in a spec is an error, not a silently ignored option."""

    model_config = ConfigDict(extra="forbid")


def problems(errors: Iterable[Mapping[str, Any]]) -> str:
    """``loc.path: message; ...`` for pydantic errors; never echoes the input values (keys, queries)."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)
