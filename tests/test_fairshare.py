"""Weighted fair share across callers, on a real Redis: the order the queues hand runs out."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest_asyncio

from nexus.core.config import RedisSettings
from nexus.core.queues import AHEAD, QueueBackend, QueuedRun, Share
from nexus.core.runs import RunKey
from nexus.scheduler.authentication import Principal
from nexus.scheduler.fairshare import FIRST_COME, FairShare
from nexus.scheduler.teamsettings import CallerPolicy, TeamSettings

SHARD = "shard-a"
_IDS = itertools.count(1)


def runs(caller: str, count: int, weight: float = 1.0, algorithm: str = "algo") -> list[QueuedRun]:
    share = Share("=" + caller, 1.0 / weight)
    return [
        QueuedRun(SHARD, RunKey(algorithm, uuid.UUID(int=next(_IDS))), 0.0, share)
        for _ in range(count)
    ]


@pytest_asyncio.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[QueueBackend]:
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        yield queues
    finally:
        await queues.close()


def owners(popped: list[QueuedRun], *groups: list[QueuedRun]) -> list[int]:
    """Which of ``groups`` each popped run came from."""
    where = {run.key: index for index, group in enumerate(groups) for run in group}
    return [where[run.key] for run in popped]


async def test_a_single_run_is_not_starved_by_another_callers_flood(
    backend: QueueBackend,
) -> None:
    queue = backend.queue("pod-1")
    flood = runs("a", 2000)
    await queue.push(flood)
    await queue.pop(SHARD, 100)  # dispatch is under way
    single = runs("b", 1)
    await queue.push(single)
    assert owners(await queue.pop(SHARD, 1), flood, single) == [1]


async def test_first_come_first_served_when_fair_share_is_off(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    flood = [QueuedRun(r.shard, r.key, 0.0, FIRST_COME) for r in runs("a", 300)]
    single = [QueuedRun(r.shard, r.key, 0.0, FIRST_COME) for r in runs("b", 1)]
    await queue.push(flood)
    await queue.push(single)
    popped = await queue.pop(SHARD, 301)
    assert [r.key for r in popped] == [r.key for r in [*flood, *single]]


async def test_waiting_callers_share_in_proportion_to_their_weights(
    backend: QueueBackend,
) -> None:
    queue = backend.queue("pod-1")
    heavy, light = runs("heavy", 1000, weight=3), runs("light", 1000, weight=1)
    for start in range(0, 1000, 100):  # submitted interleaved, in batches
        await queue.push(heavy[start : start + 100])
        await queue.push(light[start : start + 100])
    counts = Counter(owners(await queue.pop(SHARD, 400), heavy, light))
    assert counts == {0: 300, 1: 100}


async def test_a_callers_share_counts_what_it_queued_on_every_pod(
    backend: QueueBackend,
) -> None:
    one, two = backend.queue("pod-1"), backend.queue("pod-2")
    flood = runs("a", 500)
    await one.push(flood)  # all of it through pod 1
    others = runs("b", 50)
    await two.push(others)
    late = runs("a", 1)
    await two.push(late)  # a's next run, through pod 2: behind b's, a has 500 waiting
    popped = owners(await two.pop(SHARD, 51), others, late)
    assert popped == [0] * 50 + [1]
    # and a caller that queued nothing lately starts at the front of any pod
    fresh = runs("c", 1)
    await one.pop(SHARD, 10)
    await one.push(fresh)
    assert owners(await one.pop(SHARD, 1), flood, fresh) == [1]


async def test_an_idle_callers_share_goes_to_the_others(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    alone = runs("a", 100, weight=0.01)
    await queue.push(alone)
    assert len(await queue.pop(SHARD, 100)) == 100  # a tiny weight, and still everything


async def test_a_delayed_run_goes_ahead_of_its_callers_newer_ones(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    first = runs("a", 3)
    await queue.push(first)
    (taken,) = await queue.pop(SHARD, 1)
    await queue.delay(SHARD, [taken], 0)
    newer = runs("a", 2)
    await queue.push(newer)
    popped = await queue.pop(SHARD, 5)
    assert [r.key for r in popped] == [taken.key, first[1].key, first[2].key] + [
        r.key for r in newer
    ]


async def test_a_recovered_run_is_queued_ahead_of_everyone(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    flood = runs("a", 50)
    await queue.push(flood)
    await queue.pop(SHARD, 10)
    recovered = QueuedRun(SHARD, RunKey("algo", uuid.uuid4()), 0.0, AHEAD)
    await queue.push([recovered])
    assert [r.key for r in await queue.pop(SHARD, 1)] == [recovered.key]


async def test_adopted_runs_keep_their_order_ahead_of_the_live_pods_newer_ones(
    backend: QueueBackend,
) -> None:
    dead, live = backend.queue("pod-dead"), backend.queue("pod-live")
    await live.heartbeat(30)
    await dead.heartbeat(0.01)
    # the dead pod's tags run far ahead of the live pod's: a's flood went there
    dead_runs = runs("a", 200)
    await dead.push(dead_runs)
    await dead.pop(SHARD, 20)  # in flight when it died
    live_old = runs("b", 5)
    await live.push(live_old)
    await live.pop(SHARD, 5)
    live_new = runs("b", 5)
    await live.push(live_new)
    await asyncio.sleep(0.02)
    assert await backend.adopt("pod-dead", "pod-live") == 200
    popped = await live.pop(SHARD, 205)
    assert [r.key for r in popped] == [r.key for r in [*dead_runs, *live_new]]


def test_weights_come_from_settings_then_credentials_then_the_default() -> None:
    settings = TeamSettings(default_weight=2, callers={"ops": CallerPolicy(weight=5)})
    fair = FairShare(settings)
    assert fair.share(Principal("ops", frozenset({"*"}), weight=9)) == Share("=ops", 0.2)
    assert fair.share(Principal("team", frozenset({"*"}), weight=4)) == Share("=team", 0.25)
    assert fair.share(Principal("anyone", frozenset({"*"}))) == Share("=anyone", 0.5)
    assert fair.share(Principal("", frozenset({"*"}))).flow == "="  # never read as AHEAD
    off = FairShare(TeamSettings(fair_share=False))
    assert off.share(Principal("ops", frozenset({"*"}))) is FIRST_COME
