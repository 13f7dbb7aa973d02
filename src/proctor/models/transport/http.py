"""The HTTP transport: one POST per attempt on the router's shared aiohttp session."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from yarl import URL

from proctor.models.client import SAMPLE_ID_HEADER, post_chat
from proctor.models.types import ChatResult

__all__ = ["HttpTransport"]


class HttpTransport:
    """Calls to one replica's OpenAI-compatible base URL; ``headers`` carry its key, if any."""

    __slots__ = ("_api_key_env", "_chat_url", "_completions_url", "_endpoint", "_headers", "_model", "_session")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        *,
        model: str,
        api_key_env: str | None,
    ) -> None:
        self._session = session
        self._endpoint = base_url
        self._chat_url = URL(base_url + "/chat/completions")
        self._completions_url = URL(base_url + "/completions")
        self._headers = dict(headers)
        self._model = model
        self._api_key_env = api_key_env

    def __repr__(self) -> str:  # never show the key
        return f"<HttpTransport {self._endpoint}>"

    async def send(
        self, data: bytes, sample_id: str | None, timeout: aiohttp.ClientTimeout, *, stream: bool, completions: bool
    ) -> ChatResult:
        headers = self._headers if sample_id is None else {**self._headers, SAMPLE_ID_HEADER: sample_id}
        return await post_chat(
            self._session,
            self._completions_url if completions else self._chat_url,
            data,
            headers,
            timeout,
            stream=stream,
            endpoint=self._endpoint,
            model=self._model,
            api_key_env=self._api_key_env,
        )

    async def aclose(self) -> None:
        """Nothing of its own: the session belongs to the router."""
