"""Pure parsing and classification of single answers: no sockets needed."""

from __future__ import annotations

import email.utils
import time

import pytest

from proctor.errors import BadRequestError, ContextOverflowError, ModelAbortError
from proctor.models.client import AttemptFailure, classify_status, parse_completion, parse_retry_after


def classify(status: int, body: str = "{}", **kw: object) -> Exception:
    return classify_status(
        status,
        body,
        url="http://h:1/v1/chat/completions",
        model="m",
        api_key_env=kw.get("env"),
        retry_after=kw.get("ra"),
    )  # type: ignore[arg-type]


def test_retry_after_seconds_date_and_garbage() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < parse_retry_after(future) <= 121  # type: ignore[operator]
    past = email.utils.formatdate(time.time() - 120, usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_429_and_5xx_are_retryable_failures() -> None:
    f = classify(429, ra="1.5")
    assert isinstance(f, AttemptFailure) and f.error_class == "rate_limited" and f.retry_after == 1.5
    f = classify(503, "overloaded")
    assert isinstance(f, AttemptFailure) and f.error_class == "http_5xx" and f.status == 503


@pytest.mark.parametrize(
    "body",
    [
        '{"error": {"code": "context_length_exceeded", "message": "x"}}',
        "This model's maximum context length is 4096 tokens",
        "the request exceeds the available context size, try increasing it",
        "prompt is too long: 300000 tokens > 200000 maximum",
        "Too many tokens in the input",
    ],
)
def test_context_overflow_is_recognised(body: str) -> None:
    assert isinstance(classify(400, body), ContextOverflowError)


def test_auth_and_not_found_abort_with_names() -> None:
    e = classify(401, "bad key", env="MY_KEY")
    assert isinstance(e, ModelAbortError) and "MY_KEY" in str(e) and "refused" in str(e)
    e = classify(403, "forbidden")
    assert isinstance(e, ModelAbortError) and "api_key_env" in str(e)
    e = classify(404, '{"error": {"message": "model \'m\' does not exist"}}')
    assert isinstance(e, ModelAbortError) and "'m'" in str(e) and "http://h:1/v1" in str(e)
    e = classify(404, "Not Found")
    assert isinstance(e, ModelAbortError) and "base_url" in str(e)


def test_other_4xx_is_a_bad_request() -> None:
    e = classify(422, '{"error": "temperature must be <= 2"}')
    assert isinstance(e, BadRequestError) and e.status == 422 and "temperature" in str(e)


def test_completion_parsing_and_malformed_200() -> None:
    data = {
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    r = parse_completion(data, "http://e/v1")
    assert r.content is None and r.tool_calls[0]["id"] == "c1" and r.finish_reason == "tool_calls"
    assert (r.prompt_tokens, r.completion_tokens, r.endpoint) == (0, 0, "http://e/v1")
    with pytest.raises(AttemptFailure) as info:
        parse_completion({"error": {"message": "upstream died"}}, "http://e/v1")
    assert info.value.error_class == "http_5xx" and "upstream died" in info.value.message
