"""Replica pools without traffic: sources, selection, slots, breaker counting, AIMD arithmetic."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from proctor.errors import InfraError, SpecError
from proctor.models.config import HealthConfig, ModelConfig
from proctor.models.pool import Replica, ReplicaPool, replica_urls


def make_pool(n: int = 3, *, cap: int = 8, adaptive: bool = True, threshold: int = 3) -> ReplicaPool:
    urls = [f"http://10.0.0.{i}:8000/v1" for i in range(n)]
    return ReplicaPool(
        "subject", urls, max_connections=cap, health=HealthConfig(failure_threshold=threshold), adaptive=adaptive
    )


# -- sources -----------------------------------------------------------------------------------


def test_replica_sources() -> None:
    cfg = ModelConfig(model="m", base_url="http://a:1/v1/")
    assert replica_urls(cfg) == ["http://a:1/v1"]
    cfg = ModelConfig.model_validate(
        {"model": "m", "replicas": ["http://a:1/v1", {"host": "b", "port": 2}, {"host": "c", "port": 3, "path": "/x"}]}
    )
    assert replica_urls(cfg) == ["http://a:1/v1", "http://b:2/v1", "http://c:3/x"]
    cfg = ModelConfig.model_validate({"model": "m", "launch": {"kind": "llama-cpp", "port": 8081}})
    assert replica_urls(cfg) == ["http://127.0.0.1:8081/v1"]
    with pytest.raises(SpecError, match="listed twice"):
        replica_urls(ModelConfig(model="m", replicas=["http://a:1/v1", "http://a:1/v1/"]))
    with pytest.raises(SpecError, match="not an http"):
        replica_urls(ModelConfig(model="m", base_url="ftp://a/v1"), role="judge")


def test_pool_file(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    path.write_text(
        json.dumps({"qwen": [{"ip_addr": "node1", "port": 1800}, {"ip_addr": "node2", "port": 1801}], "other": []})
    )
    cfg = ModelConfig(model="qwen", pool_file="pool.json")
    assert replica_urls(cfg, base_dir=tmp_path) == ["http://node1:1800/v1", "http://node2:1801/v1"]

    with pytest.raises(SpecError, match=r"no entry for model 'llama'.*'other', 'qwen'"):
        replica_urls(ModelConfig(model="llama", pool_file=str(path)))
    with pytest.raises(SpecError, match="does not exist"):
        replica_urls(ModelConfig(model="qwen", pool_file="missing.json"), base_dir=tmp_path)
    path.write_text('{"qwen": [')
    with pytest.raises(SpecError, match="not valid JSON.*line 1"):
        replica_urls(cfg, base_dir=tmp_path)
    path.write_text('{"qwen": [{"ip_addr": "node1"}]}')
    with pytest.raises(SpecError, match=r"qwen\[0\] needs 'port'"):
        replica_urls(cfg, base_dir=tmp_path)
    path.write_text('[["qwen"]]')
    with pytest.raises(SpecError, match="JSON object"):
        replica_urls(cfg, base_dir=tmp_path)


# -- selection ---------------------------------------------------------------------------------


def test_least_outstanding_wins() -> None:
    pool = make_pool(3)
    a, b, c = pool.replicas
    a.in_flight, b.in_flight, c.in_flight = 5, 1, 3
    for _ in range(6):  # whatever the round-robin position, the least loaded replica is chosen
        assert pool._select(None) is b


def test_outstanding_requests_are_weighted_by_latency() -> None:
    """A fast replica with a few calls in flight beats an idle one five times slower."""
    pool = make_pool(2, cap=64)
    fast, slow = pool.replicas
    fast.latency, slow.latency = 0.02, 0.1
    fast.in_flight = 5  # sqrt(5 + 1) * 0.02 = 0.049 < sqrt(0 + 1) * 0.1
    assert pool._select(None) is fast
    fast.in_flight = 23  # sqrt(23 + 1) * 0.02 = 0.098 < 0.1: still the fast one
    assert pool._select(None) is fast
    fast.in_flight = 25  # sqrt(25 + 1) * 0.02 = 0.102 > 0.1: now the slow one is expected first
    assert pool._select(None) is slow
    count_only = make_pool(2)
    count_only.strategy = "least_outstanding"
    count_only.replicas[0].latency, count_only.replicas[1].latency = 0.02, 0.1
    count_only.replicas[0].in_flight = 3
    assert count_only._select(None) is count_only.replicas[1]


def test_ties_round_robin() -> None:
    pool = make_pool(4)
    chosen = []
    for _ in range(8):
        r = pool.try_acquire()
        assert r is not None
        chosen.append(r.base_url)
        pool.release(r)
    assert chosen[:4] == [r.base_url for r in pool.replicas] and chosen[4:] == chosen[:4]


def test_unhealthy_full_and_avoided_replicas() -> None:
    pool = make_pool(3, cap=2)
    a, b, c = pool.replicas
    a.healthy = False
    b.in_flight = 2  # full
    assert pool._select(None) is c
    assert pool._select(c) is c  # avoided, but the only one left: still used
    c.in_flight = 2
    assert pool.try_acquire() is None


def test_call_waits_for_a_slot_instead_of_failing() -> None:
    async def main() -> None:
        pool = make_pool(1, cap=1)
        first = pool.try_acquire()
        assert first is not None
        waiter = asyncio.ensure_future(pool.acquire(None, deadline=asyncio.get_running_loop().time() + 60))
        await asyncio.sleep(0)
        assert not waiter.done()
        pool.release(first)
        second = await waiter
        assert second is first and first.in_flight == 1

    asyncio.run(main())


def test_waiting_is_bounded_by_the_deadline() -> None:
    async def main() -> None:
        pool = make_pool(1, cap=1)
        assert pool.try_acquire() is not None
        with pytest.raises(InfraError) as info:
            await pool.acquire(None, deadline=0.0)  # already past
        assert info.value.error_class == "timeout"
        pool.replicas[0].healthy = False
        with pytest.raises(InfraError) as info:
            await pool.acquire(None, deadline=0.0)
        assert info.value.error_class == "connection" and "10.0.0.0" in str(info.value)

    asyncio.run(main())


# -- breaker counting and AIMD -----------------------------------------------------------------


def test_breaker_counts_distinct_calls_only() -> None:
    pool = make_pool(2, threshold=3)
    r = pool.replicas[0]
    poison = object()
    for _ in range(10):  # one call failing again and again is one failure
        pool.on_failure(r, "HTTP 500", poison)
    assert r.healthy and r.consecutive_failures == 1
    pool.on_success(r, 0.01)
    for _ in range(3):
        pool.on_failure(r, "HTTP 500", object())
    assert not r.healthy
    assert pool.describe()[0]["healthy"] is False


def test_breaker_opens_on_a_failure_rate_not_on_a_streak() -> None:
    pool = make_pool(2, threshold=20)
    r = pool.replicas[0]
    for _ in range(120):
        pool.on_success(r, 0.02)
    for _ in range(25):  # 25 failed calls in a row among 120 successes: 17% of the window
        pool.on_failure(r, "HTTP 500", object())
    assert r.healthy and pool.describe()[0]["healthy"] is True
    other = pool.replicas[1]
    for _ in range(19):  # too few calls for a rate yet, even at 100%
        pool.on_failure(other, "connection refused", object())
    assert other.healthy
    pool.on_failure(other, "connection refused", object())
    assert not other.healthy


def test_scattered_429s_leave_the_limit_alone() -> None:
    pool = make_pool(1, cap=64)
    r = pool.replicas[0]
    for i in range(5000):  # one attempt in 13 is a 429, spread out: not the server's limit
        if i % 13 == 0:
            r.last_decrease = -1e9  # only the share may keep the limit where it is
            pool.on_rate_limited(r)
        else:
            pool.on_success(r, 0.02)
    assert r.cap == 64 and r.rate_limited == 385


def congest(pool: ReplicaPool, r: Replica) -> None:
    """429s to nearly every attempt, as a server far over its limit answers (no decrease yet)."""
    decrease = r.last_decrease
    for _ in range(40):
        pool.on_rate_limited(r)
    r.last_decrease = decrease
    r.cap = r.max_cap


def test_aimd_decrease_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(1, cap=64)
    r = pool.replicas[0]
    with caplog.at_level(logging.INFO, logger="proctor.models"):
        congest(pool, r)
        pool.on_rate_limited(r)
        assert r.cap == 44
        pool.on_rate_limited(r)  # same window: one burst of 429s is one signal
        assert r.cap == 44
        r.last_decrease -= 10
        pool.on_rate_limited(r)
        assert r.cap == 30
        for _ in range(100):  # 429s just now: no growth yet
            pool.on_success(r, 0.01)
        assert r.cap == 30
        r.last_rate_limited -= 5  # quiet for a while, but 429s are recent: one step per quiet period
        for _ in range(100):
            pool.on_success(r, 0.01)
        assert r.cap == 31
        r.last_increase -= 5
        for _ in range(100):
            pool.on_success(r, 0.01)
        assert r.cap == 32
        r.last_rate_limited -= 1000  # long without 429s: one step per limit's worth of successes
        for _ in range(10_000):
            pool.on_success(r, 0.01)
        assert r.cap == 64
    assert "concurrency 64 -> 44 after 429" in caplog.text
    assert "concurrency 30 -> 31" in caplog.text and "concurrency 63 -> 64" in caplog.text


def test_aimd_floor_and_disabled() -> None:
    pool = make_pool(1, cap=2)
    r = pool.replicas[0]
    congest(pool, r)
    for _ in range(5):
        r.last_decrease = -1e9
        pool.on_rate_limited(r)
    assert r.cap == 1
    fixed = make_pool(1, cap=8, adaptive=False)
    fixed.on_rate_limited(fixed.replicas[0])
    assert fixed.replicas[0].cap == 8


def test_an_open_pool_admits_one_trial_at_a_time_and_any_answer_closes_it() -> None:
    pool = make_pool(2, threshold=1)
    a, b = pool.replicas
    pool.on_failure(a, "connection refused", object())
    pool.on_failure(b, "connection refused", object())
    assert not a.healthy and not b.healthy
    assert pool.try_acquire() is None  # open: no calls until a probe answers
    a.half_open = b.half_open = True  # as after each one's probe answered
    first = pool.try_acquire()
    second = pool.try_acquire(avoid=first)
    assert {first, second} == {a, b} and a.trial and b.trial
    assert pool.try_acquire() is None  # one trial per replica at a time
    assert first is not None and second is not None
    pool.release(first)
    pool.on_failure(first, "connection refused", object())
    assert not first.healthy and not first.trial  # a failed trial leaves it open, free for the next
    pool.release(second)
    pool.on_rate_limited(second)  # a 429 is an answer: the server is up
    assert second.healthy and pool.try_acquire() is second


def test_only_a_trial_closes_an_open_breaker() -> None:
    pool = make_pool(2, threshold=1)
    r = pool.replicas[0]
    pool.on_failure(r, "HTTP 500", object())
    assert not r.healthy
    pool.on_success(r, 3600.0)  # a call sent an hour ago, before the breaker opened
    assert not r.healthy
    pool.on_success(r, 0.0)  # a call sent since it opened: only a trial can have been
    assert r.healthy


def test_calls_in_flight_count_as_not_failed() -> None:
    pool = make_pool(2, threshold=3)
    busy, idle = pool.replicas
    busy.in_flight = 60  # 64 sent at once, the four failures came back first
    for _ in range(4):
        pool.on_failure(busy, "HTTP 500", object())
    assert busy.healthy
    for _ in range(3):  # nothing else in flight or answered: three failed calls are all it did
        pool.on_failure(idle, "HTTP 500", object())
    assert not idle.healthy
