"""Back-pressure: each signal refuses runs with its answer, and lifts when it clears."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from support.standin import refused_address

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.httpapi import ApiError
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import RunKey
from nexus.scheduler.backpressure import BackPressure, measure_depth


@pytest_asyncio.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    try:
        yield store
    finally:
        await store.close()


def refusal(pressure: BackPressure, shard: str) -> tuple[int, str, str] | None:
    try:
        pressure.refuse_if_overloaded(shard)
    except ApiError as exc:
        return exc.status, exc.code, exc.headers["Retry-After"]
    return None


async def test_a_queue_that_stopped_answering_refuses_runs_until_it_answers(
    store: CheckpointStore,
) -> None:
    pressure = BackPressure(store, max_queue_depth=10)
    assert refusal(pressure, "shard-0") is None
    pressure.queue_failed()
    assert not pressure.queue_reachable
    assert refusal(pressure, "shard-0") == (503, "unavailable", "5")
    assert refusal(pressure, "shard-1") == (503, "unavailable", "5")  # every shard's runs
    pressure.queue_answered()
    assert refusal(pressure, "shard-0") is None


async def test_a_full_queue_refuses_the_runs_of_its_shard_only(
    store: CheckpointStore, redis_url: str, redis_prefix: str
) -> None:
    backend = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    queue = backend.queue("pod-a")
    await queue.push(
        [QueuedRun("shard-0", RunKey("echo", uuid.uuid4()), time.time() * 1000) for _ in range(3)]
    )
    pressure = BackPressure(store, max_queue_depth=3)
    stopping = asyncio.Event()
    measuring = asyncio.create_task(
        measure_depth(queue, pressure, ["shard-0", "shard-1"], stopping)
    )
    try:
        for _ in range(100):
            if refusal(pressure, "shard-0") is not None:
                break
            await asyncio.sleep(0.02)
        assert refusal(pressure, "shard-0") == (429, "overloaded", "10")
        assert refusal(pressure, "shard-1") is None
    finally:
        stopping.set()
        await measuring
        await backend.close()


@pytest.mark.looptime
async def test_depths_redis_does_not_give_keep_their_last_value() -> None:
    """Measuring goes on while Redis does not answer (the heartbeat reports that), and
    what was measured last still holds."""
    down = refused_address()
    store = await CheckpointStore.open(
        PostgresSettings(dsn=f"postgresql://nexus@{down}/nexus", pool_min_size=0)
    )
    backend = QueueBackend.connect(RedisSettings(url=f"redis://{down}/0"))
    pressure = BackPressure(store, max_queue_depth=5)
    pressure.depth_measured("shard-0", 7)
    stopping = asyncio.Event()
    measuring = asyncio.create_task(
        measure_depth(backend.queue("p"), pressure, ["shard-0"], stopping)
    )
    await asyncio.sleep(3600)  # an hour of failed readings, once a second
    assert not measuring.done()
    assert refusal(pressure, "shard-0") == (429, "overloaded", "10")
    stopping.set()
    await measuring
    await backend.close()
    await store.close()
