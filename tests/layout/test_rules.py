"""The request rules the facade and the job channel share, and the one bearer-token reader."""

from __future__ import annotations

import pytest

from proctor.server.bearer import parse_bearer
from proctor.server.tunnel.rules import call_timeout, header_seconds, local_caller


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer ", None),
        ("Basic abc", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_one_reader_for_bearer_tokens(header: str | None, token: str | None) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    ("host", "proxied", "allowed"),
    [
        ("127.0.0.1", False, True),
        ("127.8.9.1", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),
        ("127.0.0.1", True, False),  # came through a proxy
        ("10.0.0.2", False, False),
        ("", False, False),
        (None, False, False),
    ],
)
def test_only_the_servers_own_job_processes_are_callers(host: str | None, proxied: bool, allowed: bool) -> None:
    assert local_caller(host, proxied=proxied) is allowed


def test_a_caller_may_shorten_the_deadline_but_not_lengthen_it() -> None:
    assert call_timeout(900.0, 5) == 5.0
    assert call_timeout(900.0, 5000.0) == 900.0
    assert call_timeout(900.0, -3) == 0.0
    assert call_timeout(900.0, True) == 900.0  # not a number of seconds
    assert call_timeout(900.0, "5") == 900.0  # the channel's meta must hold a number
    assert call_timeout(900.0, header_seconds(b"2.5")) == 2.5
    assert call_timeout(900.0, header_seconds(b"soon")) == 900.0
    assert header_seconds(None) is None
