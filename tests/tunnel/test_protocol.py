"""The wire format: envelopes round-trip, big bodies are split, queued envelopes coalesce."""

from __future__ import annotations

import asyncio

import pytest

from proctor.tunnel import protocol
from proctor.tunnel.protocol import CHUNK, FrameWriter, Kind


def test_envelopes_round_trip_several_per_message() -> None:
    message = b"".join(
        [
            protocol.encode(Kind.REQUEST, 7, {"m": "POST", "p": "/chat/completions"}, b'{"x":1}'),
            protocol.encode(Kind.CANCEL, 8),
            protocol.encode(Kind.DATA, 9, None, b"\x00\xff", fin=False),
        ]
    )
    envs = list(protocol.decode(message))
    assert [(e.kind, e.rid, e.fin) for e in envs] == [
        (Kind.REQUEST, 7, True),
        (Kind.CANCEL, 8, True),
        (Kind.DATA, 9, False),
    ]
    assert envs[0].meta == {"m": "POST", "p": "/chat/completions"} and envs[0].body == b'{"x":1}'
    assert envs[1].meta is None and envs[1].body == b""
    assert envs[2].body == b"\x00\xff"


def test_large_body_is_split_into_bounded_pieces() -> None:
    body = bytes(range(256)) * (3 * CHUNK // 256 + 5)
    frames = protocol.encode_body(Kind.RESPONSE, 3, {"s": 200}, body)
    assert len(frames) == 4
    assert all(len(f) <= protocol.MAX_MESSAGE for f in frames)
    envs = [next(protocol.decode(f)) for f in frames]
    assert envs[0].kind == Kind.RESPONSE and envs[0].meta == {"s": 200} and not envs[0].fin
    assert [e.kind for e in envs[1:]] == [Kind.DATA] * 3
    assert [e.fin for e in envs] == [False, False, False, True]
    assert b"".join(e.body for e in envs) == body


def test_truncated_message_is_rejected() -> None:
    whole = protocol.encode(Kind.RESPONSE, 1, {"s": 200}, b"hello")
    for cut in (3, len(whole) - 1):
        with pytest.raises(ValueError):
            list(protocol.decode(whole[:cut]))


def test_writer_coalesces_what_queued_up_and_keeps_order() -> None:
    async def body() -> list[bytes]:
        sent: list[bytes] = []
        gate = asyncio.Event()

        async def send(message: bytes) -> None:
            sent.append(message)
            await gate.wait()  # the first send is slow: everything else queues behind it

        writer = FrameWriter(send)
        task = asyncio.create_task(writer.run())
        writer.put(protocol.encode(Kind.PING, 0, {"t": 0}))
        for _ in range(10_000):  # bounded: yield until the writer made its first send
            if sent:
                break
            await asyncio.sleep(0)
        assert sent
        for rid in range(1, 51):
            writer.put(protocol.encode(Kind.CANCEL, rid))
        gate.set()
        for _ in range(10_000):  # bounded: yield until the writer has sent every envelope
            if writer.envelopes >= 51:
                break
            await asyncio.sleep(0)
        assert writer.envelopes == 51
        writer.close()
        await task
        return sent

    sent = asyncio.run(body())
    assert len(sent) == 2  # one message for the first envelope, one for the 50 that waited
    rids = [e.rid for message in sent for e in protocol.decode(message)]
    assert rids == list(range(51))


def test_slots_are_fifo_and_survive_cancelled_waiters() -> None:
    from proctor.server.tunnel.hub import Slots

    async def body() -> list[str]:
        slots = Slots(1)
        order: list[str] = []
        assert slots.try_acquire()

        async def take(name: str) -> None:
            await slots.acquire()
            order.append(name)

        b = asyncio.create_task(take("b"))
        c = asyncio.create_task(take("c"))
        d = asyncio.create_task(take("d"))
        await asyncio.sleep(0)
        c.cancel()  # gives up while waiting: must not swallow a slot
        await asyncio.gather(c, return_exceptions=True)
        slots.release()  # a -> b
        await b
        slots.release()  # b -> d (c is skipped)
        await d
        slots.release()  # d -> free
        assert slots.try_acquire() and not slots.try_acquire()
        return order

    assert asyncio.run(body()) == ["b", "d"]
