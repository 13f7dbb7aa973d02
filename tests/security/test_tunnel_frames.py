"""Malformed tunnel frames against a real ``proctor serve`` child process: each is refused with a
close code and one log line, never a traceback in the server's log (issue 17, "a bad HELLO").

A stranger can send a first message without any credentials; a submitter (who holds a token and
a tunnel secret) can send anything after it. Both are tried here, as the attack itself.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path

import aiohttp
import pytest
from helpers import create_token, start_server, stop_process, write_spec
from security.tunnel_kit import closed_with, next_requests, raw_agent, running_hub, ws_url
from tunnel.tunnelkit import HubServer

from proctor.client import Client
from proctor.models.transport.channel import channel_url
from proctor.tunnel import protocol
from proctor.tunnel.protocol import Kind


def _raw(kind: int, meta: bytes, body: bytes = b"", rid: int = 0, flags: int = protocol.FIN) -> bytes:
    """An envelope with ``meta`` as given bytes, not necessarily JSON, let alone an object."""
    return struct.pack("!BBIII", kind, flags, rid, len(meta), len(body)) + meta + body


BAD_HELLOS = [
    protocol.encode(Kind.HELLO, 0, {"token": ["x"], "secret": "s"}),  # the issue's own example
    protocol.encode(Kind.HELLO, 0, {"token": "t", "secret": {"a": 1}}),
    _raw(Kind.HELLO, b'["token", "secret"]'),  # meta not an object
    _raw(Kind.HELLO, b"7"),
    _raw(Kind.HELLO, b"{not json"),
    _raw(Kind.HELLO, b"\xff\xfe"),  # not UTF-8
    _raw(Kind.HELLO, b'{"token": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),  # nesting bomb
    _raw(Kind.HELLO, b'{"token": "t"}')[:-3],  # truncated
    b"",
]


async def _send_hello(url: str, message: bytes) -> int | None:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(url, "no-such-job")) as ws:
        await ws.send_bytes(message)
        return await closed_with(ws)


def test_a_malformed_hello_is_refused_in_one_log_line(tmp_path: Path) -> None:
    log = tmp_path / "server.err"
    proc, url = start_server(tmp_path / "data", log)
    try:
        codes = [asyncio.run(_send_hello(url, message)) for message in BAD_HELLOS]
        # The server still answers everyone else.
        assert Client(url, "nobody").health()["ok"] is True
    finally:
        stop_process(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert codes == [protocol.CLOSE_MALFORMED] * len(BAD_HELLOS), codes
    assert text.count("tunnel HELLO refused") == len(BAD_HELLOS), text[-3000:]


BAD_ANSWERS = [
    protocol.encode(Kind.RESPONSE, 0, {"s": "200", "h": {}}, b"{}"),  # status not an int
    protocol.encode(Kind.RESPONSE, 0, {"s": 99999, "h": {}}, b"{}"),
    protocol.encode(Kind.RESPONSE, 0, {"s": True, "h": {}}, b"{}"),
    protocol.encode(Kind.RESPONSE, 0, {"s": 200, "h": {"x-a": ["list"]}}, b"{}"),
    protocol.encode(Kind.RESPONSE, 0, {"s": 200, "h": {"x-a": "v\r\nset-cookie: a=b"}}, b"{}"),
    protocol.encode(Kind.RESPONSE, 0, {"s": 200, "h": {"bad name": "v"}}, b"{}"),
    protocol.encode(Kind.RESPONSE, 0, {"s": 200, "h": "text"}, b"{}"),
    protocol.encode(Kind.RESPONSE, 0, {"s": 200, "h": {}, "stream": "yes"}, b"{}"),
    _raw(Kind.RESPONSE, b"[200]", b"{}"),
    _raw(Kind.DATA, b"[1]", b"x", flags=0),
    _raw(Kind.PONG, b"1"),
]


def _with_rid(envelope: bytes, rid: int) -> bytes:
    kind, flags, _rid, meta_len, body_len = struct.unpack_from("!BBIII", envelope)
    return struct.pack("!BBIII", kind, flags, rid, meta_len, body_len) + envelope[struct.calcsize("!BBIII") :]


async def _attack_answers(url: str, job_id: str, token: str, secret: str) -> list[int | None]:
    """Answer the job's (replayed) call with each malformed envelope on a fresh connection."""
    codes = []
    for envelope in BAD_ANSWERS:
        async with raw_agent(url, job_id, token, secret) as ws:
            (request,) = await next_requests(ws)
            await ws.send_bytes(_with_rid(envelope, request.rid))
            codes.append(await closed_with(ws))
    return codes


def test_malformed_answers_drop_the_agent_in_one_log_line(tmp_path: Path) -> None:
    log = tmp_path / "server.err"
    data = tmp_path / "data"
    data.mkdir()
    token = create_token(data, "alice")
    proc, url = start_server(data, log, "--tunnel-grace", "0.2")
    try:
        with Client(url, token) as client:
            answer = client.submit(write_spec(tmp_path, "http://127.0.0.1:9/v1", n=2, concurrency=1), private=True)
            job_id, secret = answer["job"]["id"], answer["tunnel_secret"]
            try:
                codes = asyncio.run(_attack_answers(url, job_id, token, secret))
                assert client.status(job_id)["state"] in ("running", "waiting_for_tunnel")
            finally:
                client.cancel(job_id)
    finally:
        stop_process(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert codes == [protocol.CLOSE_MALFORMED] * len(BAD_ANSWERS), codes
    assert text.count("malformed message") == len(BAD_ANSWERS), text[-3000:]


BAD_JOB_MESSAGES = [
    _raw(Kind.REQUEST, b'["POST", "/chat/completions"]', b"{}"),
    _raw(Kind.REQUEST, b"{not json", b"{}"),
    _raw(Kind.DATA, b"3", b"x", rid=1, flags=0),
    _raw(Kind.CANCEL, b'{"a": 1}', rid=1)[:-4],  # truncated
]


async def _attack_channel(server: HubServer, internal: str) -> list[int | None]:
    """A job process (or anything holding the job's internal token) sending malformed messages."""
    codes = []
    async with aiohttp.ClientSession() as http:
        for message in BAD_JOB_MESSAGES:
            headers = {"Authorization": f"Bearer {internal}"}
            async with http.ws_connect(channel_url(server.facade("job-m")), headers=headers) as ws:
                await ws.send_bytes(message)
                codes.append(await closed_with(ws))
    return codes


def test_malformed_job_channel_messages_close_it_in_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with running_hub() as server:
        _, internal = server.hub.register_job("job-m", owner="alice")
        with caplog.at_level(logging.INFO):
            codes = asyncio.run(_attack_channel(server, internal))
    assert codes == [protocol.CLOSE_MALFORMED] * len(BAD_JOB_MESSAGES), codes
    assert [r for r in caplog.records if r.exc_info] == []
    assert sum("malformed message" in r.getMessage() for r in caplog.records) == len(BAD_JOB_MESSAGES)
