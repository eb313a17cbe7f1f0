"""Concurrency slots and parked runs on a real Redis."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio

from nexus.core.config import RedisSettings
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import RunKey
from nexus.core.slots import Limit, Slots

SHARD = "shard-a"
_IDS = itertools.count(1)
ALG, CALLER = Limit("algorithm", "algo", 2), Limit("caller", "team", 3)


def key() -> RunKey:
    return RunKey("algo", uuid.UUID(int=next(_IDS)))


@pytest_asyncio.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[QueueBackend]:
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        yield queues
    finally:
        await queues.close()


async def test_a_run_takes_all_its_slots_or_none(backend: QueueBackend) -> None:
    slots = Slots(backend)
    a, b, c = key(), key(), key()
    assert await slots.reserve([(a, [ALG, CALLER]), (b, [ALG, CALLER])]) == [None, None]
    assert await slots.reserve([(c, [CALLER, ALG])]) == [ALG]  # algorithm full
    assert await slots.taken("caller/team") == 2  # c took none of its slots
    assert await slots.reserve([(a, [ALG, CALLER])]) == [None]  # again: the same slot
    assert await slots.taken("algorithm/algo") == 2
    await slots.release([(a, [ALG, CALLER]), (c, [ALG, CALLER])])
    assert await slots.reserve([(c, [ALG, CALLER])]) == [None]
    assert set(await slots.holders("algorithm/algo")) == {b, c}
    assert await slots.slot_sets() == ["algorithm/algo", "caller/team"]


async def test_parked_runs_wait_held_by_their_pod_and_go_in_order(backend: QueueBackend) -> None:
    slots, queue = Slots(backend), backend.queue("pod-1")
    runs = [QueuedRun(SHARD, key(), float(i)) for i in range(4)]
    await queue.push(runs)
    taken = await queue.pop(SHARD, 4)
    assert await slots.park("pod-1", [(r, ALG) for r in taken[1:]]) == 3
    assert await queue.pop(SHARD, 10) == []  # parked runs are not popped
    assert await backend.missing(SHARD, [r.key for r in runs], ["pod-1"]) == set()
    waiting = await slots.waiting(runs[2].key, ["caller/team", "algorithm/algo"])
    assert waiting is not None and (waiting.label, waiting.position) == ("algorithm/algo", 1)
    assert await slots.limited() == ["algorithm/algo"]

    assert await slots.unpark("algorithm/algo", 2) == 2
    assert [r.key for r in await queue.pop(SHARD, 10)] == [runs[1].key, runs[2].key]
    assert await slots.unpark("algorithm/algo", 5) == 1
    assert await slots.limited() == []  # nobody waits any more
    assert [r.key for r in await queue.pop(SHARD, 10)] == [runs[3].key]


async def test_a_parked_run_of_a_dead_pod_is_adopted_and_only_forgotten_here(
    backend: QueueBackend,
) -> None:
    import asyncio

    slots = Slots(backend)
    dead, live = backend.queue("pod-dead"), backend.queue("pod-live")
    await dead.heartbeat(0.01)
    await live.heartbeat(30)
    run = QueuedRun(SHARD, key(), 1.0)
    await dead.push([run])
    await slots.park("pod-dead", [(r, ALG) for r in await dead.pop(SHARD, 1)])
    await asyncio.sleep(0.02)
    assert await backend.adopt("pod-dead", "pod-live") == 1
    assert [r.key for r in await live.pop(SHARD, 1)] == [run.key]  # queued, not lost
    assert await slots.unpark("algorithm/algo", 1) == 0  # the stale entry is dropped
    assert await slots.waiting(run.key, ["algorithm/algo"]) is None
