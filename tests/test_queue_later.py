"""Runs accepted while Redis failed are queued by their scheduler as soon as it answers.

Their checkpoints are durable, so the maintainer's sweep would find them, but only after
its queue grace (a minute): the scheduler that accepted them keeps them and pushes them
again, with back-off, the moment Redis is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.errors import QueueUnavailable
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import RunKey
from nexus.scheduler.backpressure import BackPressure
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.settings import SchedulerSection
from nexus.scheduler.submission import QUEUE_LATER, Submitter
from nexus_dev.servers.databases import LocalRedis

SHARD = "shard-0"


@pytest.mark.slow
async def test_runs_accepted_while_redis_failed_are_pushed_once_it_answers(
    private_redis: LocalRedis, postgres_dsn: str
) -> None:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    backend = QueueBackend.connect(
        RedisSettings(url=private_redis.info.url, key_prefix="later", socket_timeout=1)
    )
    pushed: list[str] = []
    submitter = _submitter(store, backend, pushed, SchedulerSection(pod_name="pod-a"))
    stopping = asyncio.Event()
    pushing = asyncio.create_task(submitter.push_later(stopping))
    try:
        await asyncio.to_thread(private_redis.kill)
        runs = [
            QueuedRun(SHARD, RunKey("echo", uuid.uuid4()), time.time() * 1000) for _ in range(3)
        ]
        later = QUEUE_LATER._value.get()
        submitter.push_many(runs)  # accepted runs: their push fails, nothing raised
        for _ in range(100):  # sent after its delay, in the background
            if QUEUE_LATER._value.get() == later + 3:
                break
            await asyncio.sleep(0.02)
        assert QUEUE_LATER._value.get() == later + 3
        await asyncio.sleep(0.5)  # tried again meanwhile, and failed
        await asyncio.to_thread(private_redis.restart)
        for _ in range(300):  # the next try after Redis is back finds them all
            if not await _missing(backend, runs):
                break
            await asyncio.sleep(0.1)
        assert not await _missing(backend, runs)
        assert pushed == [SHARD]
    finally:
        stopping.set()
        await pushing
        await submitter.close()
        await backend.close()
        await store.close()


async def _missing(backend: QueueBackend, runs: list[QueuedRun]) -> set[RunKey]:
    try:
        return await backend.missing(SHARD, [r.key for r in runs], ["pod-a"])
    except QueueUnavailable:  # Redis still starting
        return {r.key for r in runs}


@pytest.mark.slow
async def test_an_accepted_runs_push_waits_for_company_and_nobody_waits_for_it(
    private_redis: LocalRedis, postgres_dsn: str
) -> None:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    backend = QueueBackend.connect(RedisSettings(url=private_redis.info.url, key_prefix="company"))
    pushed: list[str] = []
    submitter = _submitter(
        store, backend, pushed, SchedulerSection(pod_name="pod-a", queue_push_delay=0.3)
    )
    try:
        runs = [
            QueuedRun(SHARD, RunKey("echo", uuid.uuid4()), time.time() * 1000) for _ in range(4)
        ]
        submitter.push_many(runs[:1])  # returns at once: the run is answered meanwhile
        submitter.push_many(runs[1:])
        await asyncio.sleep(0.1)
        assert await _missing(backend, runs) == {r.key for r in runs}  # waiting for company
        assert pushed == []
        for _ in range(100):
            if not await _missing(backend, runs):
                break
            await asyncio.sleep(0.02)
        assert not await _missing(backend, runs)
        assert pushed == [SHARD]  # one push for them all
    finally:
        await submitter.close()
        await backend.close()
        await store.close()


def _submitter(
    store: CheckpointStore, backend: QueueBackend, pushed: list[str], settings: SchedulerSection
) -> Submitter:
    """A submitter of pod-a's queue whose pushes are noted in ``pushed``."""
    return Submitter(
        store=store,
        payloads=None,  # type: ignore[arg-type]  # nothing here reads or writes inputs
        queue=backend.queue("pod-a"),
        catalog=Catalog(),
        shards=frozenset({SHARD}),
        settings=settings,
        pressure=BackPressure(store, 1000),
        pushed=pushed.append,
    )
