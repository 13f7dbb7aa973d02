"""The one reader of ``Authorization: Bearer <token>`` headers on the server.

The API's authenticator, the tunnel's WebSocket, the private-model facade and the job channel
all read their caller's token with :func:`parse_bearer`, so a header is accepted or refused the
same way everywhere (scheme case-insensitive, surrounding blanks ignored, empty token = none).
"""

from __future__ import annotations

__all__ = ["parse_bearer"]


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization`` header value, or None if it carries no bearer token."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    token = value.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return None
