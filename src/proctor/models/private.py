"""Private roles as a typed run option: where a server job's private roles send their calls.

A proctor server runs a private-mode job with its private roles reaching the submitter's model
through the server's tunnel: their calls go to the server's facade URL for that job, over the
job channel (one WebSocket, ``proctor.models.transport.channel``). That is a fact about *this
run on this server* (the port may differ after a restart), not about the evaluation, so it is
not written into the user's spec: the server passes it to the job in the environment variable
:data:`ENV` as a :class:`PrivateEndpoints` value, and ``proctor run`` applies it to the parsed
spec. The waiting settings a private role needs (``request_timeout`` and friends) stay in the
spec copy, where the server sets them (``proctor.server.jobs.set_private_waits``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ConfigDict, ValidationError

from proctor._validation import StrictModel
from proctor.errors import InputError
from proctor.models.config import ModelConfig

__all__ = ["ENV", "PrivateEndpoints"]

ENV = "PROCTOR_PRIVATE_ENDPOINTS"
"""The environment variable that carries a job's :class:`PrivateEndpoints` as JSON."""


class PrivateEndpoints(StrictModel):
    """The private roles of a server job and the facade base URL of each."""

    model_config = ConfigDict(frozen=True)

    roles: dict[str, str]
    """Role name -> the server's facade base URL for this job (``.../internal/jobs/<id>/v1``)."""

    def to_env(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> PrivateEndpoints | None:
        """The value in ``environ``, None when there is none; a malformed one is a one-line error."""
        text = environ.get(ENV)
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise InputError(f"{ENV} is not a valid private-endpoints value ({exc.error_count()} problem(s))") from None

    def apply(self, models: Mapping[str, ModelConfig]) -> dict[str, ModelConfig]:
        """``models`` with each private role sent to its facade URL over the job channel."""
        out = dict(models)
        for role, base_url in self.roles.items():
            current = out.get(role)
            if current is None:
                raise InputError(f"{ENV} names role {role!r}, which the spec does not define")
            data = current.model_dump(exclude={"base_url", "replicas", "pool_file", "launch", "transport"})
            out[role] = ModelConfig.model_validate({**data, "base_url": base_url, "transport": "tunnel"})
        return out
