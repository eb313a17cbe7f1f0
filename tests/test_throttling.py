"""The shared token bucket on a real Redis: aggregate rate, 429 pauses, halving, recovery.

Bounds are checked against Redis' own clock (``TIME``, the clock the bucket uses), never
against how fast this machine happens to be; lower bounds are generous.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from nexus.core.config import RedisSettings
from nexus.core.queues import QueueBackend
from nexus.scheduler.throttling import ShardThrottle

SHARD = "shard-t"


@pytest_asyncio.fixture
async def backends(redis_url: str, redis_prefix: str) -> AsyncIterator[list[QueueBackend]]:
    """Two clients on one key space, as two scheduler pods would have."""
    settings = RedisSettings(url=redis_url, key_prefix=redis_prefix)
    opened = [QueueBackend.connect(settings), QueueBackend.connect(settings)]
    try:
        yield opened
    finally:
        for backend in opened:
            await backend.close()


@pytest.fixture
def backend(backends: list[QueueBackend]) -> QueueBackend:
    return backends[0]


@pytest.fixture
def shard(redis_prefix: str) -> str:
    """A shard name of this test's own (the metrics are process-wide)."""
    return f"{SHARD}-{redis_prefix.rstrip(':')}"


async def redis_now(backend: QueueBackend) -> float:
    seconds, micros = await backend.client.time()
    return seconds + micros / 1e6


async def test_concurrent_takers_stay_under_rate_and_burst(
    backends: list[QueueBackend], shard: str
) -> None:
    rate, burst, takers, window = 40.0, 10.0, 16, 2.0
    throttles = [
        ShardThrottle(backends[i % 2], shard, rate, burst_seconds=burst / rate, recovery=0.1)
        for i in range(takers)
    ]
    stopping = asyncio.Event()
    granted: list[int] = []
    start = await redis_now(backends[0])

    async def taker(index: int) -> None:
        throttle = throttles[index]
        while not stopping.is_set():
            got = await throttle.acquire(1 + index % 4, stopping)
            if got:
                granted.append(got)

    tasks = [asyncio.create_task(taker(i)) for i in range(takers)]
    await asyncio.sleep(window)
    stopping.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    elapsed = await redis_now(backends[0]) - start
    total = sum(granted)
    # never more than the bucket allows over the time Redis saw (+1 for ms rounding)
    assert total <= rate * elapsed + burst + 1
    # and not far below it: the takers kept asking all along
    assert total >= 0.6 * (rate * window + burst)


async def test_grants_are_capped_by_burst_and_want(backend: QueueBackend, shard: str) -> None:
    granted, wait, factor = await backend.take_tokens(shard, 100, 10, 5, 0.1)
    assert (granted, wait, factor) == (5, 0, 1.0)
    granted, wait, _ = await backend.take_tokens(shard, 100, 10, 5, 0.1)
    assert granted == 0
    assert 0 < wait <= 0.1 + 0.001  # one token at 10/s
    await asyncio.sleep(wait + 0.01)
    granted, _, _ = await backend.take_tokens(shard, 100, 10, 5, 0.1)
    assert granted >= 1
    other = f"{shard}-b"
    assert (await backend.take_tokens(other, 2, 10, 5, 0.1))[0] == 2  # buckets are per shard


async def test_back_off_pauses_every_pod_and_halves_the_rate(
    backends: list[QueueBackend], shard: str
) -> None:
    first, second = backends
    assert (await first.take_tokens(shard, 1, 100, 10, 0.0))[0] == 1
    before = await redis_now(first)
    factor = await first.back_off(shard, 0.4, 0.05)
    assert factor == 0.5
    # the other pod is paused too, and told how long to wait
    granted, wait, factor = await second.take_tokens(shard, 5, 100, 10, 0.0)
    assert granted == 0
    assert 0.2 < wait <= 0.4
    assert factor == 0.5
    await asyncio.sleep(wait + 0.02)
    # after the pause the bucket starts empty and refills at half the rate
    stopping = asyncio.Event()
    throttle = ShardThrottle(second, shard, 100, burst_seconds=0.1, recovery=0.0)
    total = 0

    async def take_for(seconds: float) -> None:
        nonlocal total
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            total += await throttle.acquire(10, stopping)

    await asyncio.wait_for(take_for(0.5), 5)
    after_pause = await redis_now(second) - (before + 0.4)
    assert total <= 50 * after_pause + 1  # 50/s: half of 100/s, from an empty bucket
    assert total >= 10


async def test_one_halving_per_episode_and_never_below_the_floor(
    backend: QueueBackend, shard: str
) -> None:
    assert await backend.back_off(shard, 0.1, 0.2) == 0.5
    assert await backend.back_off(shard, 0.1, 0.2) == 0.5  # same burst of 429s
    await asyncio.sleep(0.12)
    assert await backend.back_off(shard, 0.1, 0.2) == 0.25  # a new episode
    await asyncio.sleep(0.12)
    assert await backend.back_off(shard, 0.1, 0.2) == 0.2  # the floor
    await asyncio.sleep(0.12)
    assert await backend.back_off(shard, 0.1, 0.2) == 0.2


async def test_a_longer_retry_after_extends_the_pause(backend: QueueBackend, shard: str) -> None:
    await backend.back_off(shard, 0.2, 0.05)
    await backend.back_off(shard, 2.0, 0.05)
    await backend.back_off(shard, 0.1, 0.05)  # a shorter one does not shorten it
    _, wait, _ = await backend.take_tokens(shard, 1, 100, 10, 0.0)
    assert 1.5 < wait <= 2.0


async def test_rate_recovers_after_the_pause_not_during_it(
    backend: QueueBackend, shard: str
) -> None:
    await backend.take_tokens(shard, 1, 100, 10, 1.0)  # recovery: the full rate in 1 s
    before = await redis_now(backend)
    assert await backend.back_off(shard, 0.6, 0.05) == 0.5
    await asyncio.sleep(0.62)
    _, _, factor = await backend.take_tokens(shard, 1, 100, 10, 1.0)
    since_pause = await redis_now(backend) - (before + 0.6)
    assert 0.5 <= factor <= 0.5 + 1.0 * since_pause + 0.001
    assert factor < 0.9  # had it recovered during the 0.6 s pause it would be 1.0
    await asyncio.sleep(0.25)
    _, _, later = await backend.take_tokens(shard, 1, 100, 10, 1.0)
    assert later > factor + 0.1
    await asyncio.sleep(0.6)
    assert (await backend.take_tokens(shard, 1, 100, 10, 1.0))[2] == 1.0  # fully recovered


async def test_halving_applies_to_the_recovered_rate(backend: QueueBackend, shard: str) -> None:
    await backend.take_tokens(shard, 1, 100, 10, 4.0)  # recovery: +4x the rate a second
    assert await backend.back_off(shard, 0.05, 0.05) == 0.5
    await asyncio.sleep(0.07)
    await backend.take_tokens(shard, 1, 100, 10, 4.0)
    await asyncio.sleep(0.3)  # recovered to 1.0 meanwhile, though nobody took tokens
    assert await backend.back_off(shard, 0.05, 0.05) == 0.5


async def test_no_tokens_pile_up_during_a_pause(backend: QueueBackend, shard: str) -> None:
    assert (await backend.take_tokens(shard, 10, 50, 10, 0.0))[0] == 10
    before = await redis_now(backend)
    await backend.back_off(shard, 0.5, 0.05)  # 25/s afterwards
    await asyncio.sleep(0.55)
    granted, _, _ = await backend.take_tokens(shard, 10, 50, 10, 0.0)
    since_pause = await redis_now(backend) - (before + 0.5)
    assert granted <= 25 * since_pause + 1  # not the 10 a pause-long refill would give


async def test_acquire_stops_promptly_while_paused(backend: QueueBackend, shard: str) -> None:
    throttle = ShardThrottle(backend, shard, 10, burst_seconds=1, recovery=0.1)
    await throttle.rejected(30)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(throttle.acquire(5, stopping))
    await asyncio.sleep(0.1)
    assert not task.done()
    began = loop.time()
    stopping.set()
    assert await asyncio.wait_for(task, 2) == 0
    assert loop.time() - began < 1
    assert await throttle.acquire(1, stopping) == 0  # already stopping: nothing granted


async def test_throttle_reports_rejections_and_rate_factor(
    backend: QueueBackend, shard: str
) -> None:
    throttle = ShardThrottle(backend, shard, 20, burst_seconds=0.5, recovery=0.1)
    assert throttle.burst == 10
    stopping = asyncio.Event()
    assert await throttle.acquire(100, stopping) == 10  # never more than a burst at once
    began = asyncio.get_running_loop().time()
    await throttle.rejected(0.01)  # below the floor of 0.1 s
    labels = {"shard": shard}
    assert REGISTRY.get_sample_value("nexus_throttle_rejections_total", labels) == 1
    assert REGISTRY.get_sample_value("nexus_throttle_rate_factor", labels) == 0.5
    _, wait, _ = await backend.take_tokens(shard, 1, 20, 10, 0.1)
    elapsed = asyncio.get_running_loop().time() - began
    assert 0.1 - elapsed - 0.01 < wait <= 0.1  # the floor, less the time gone since
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), wait + 0.02)
    assert await asyncio.wait_for(throttle.acquire(1, stopping), 2) == 1
    factor = REGISTRY.get_sample_value("nexus_throttle_rate_factor", labels)
    assert factor is not None
    assert 0.5 <= factor < 0.6


async def test_a_back_off_empties_the_bucket(backend: QueueBackend, shard: str) -> None:
    assert (await backend.take_tokens(shard, 4, 50, 10, 0.0))[0] == 4  # six are left
    before = await redis_now(backend)
    await backend.back_off(shard, 0.5, 0.05)  # 25/s afterwards
    await asyncio.sleep(0.55)  # nobody asks during the pause
    granted, _, _ = await backend.take_tokens(shard, 10, 50, 10, 0.0)
    since_pause = await redis_now(backend) - (before + 0.5)
    assert granted <= 25 * since_pause + 1  # not the six left before the 429
