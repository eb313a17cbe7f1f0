"""The maintainer makes the concurrency limits' slot sets agree with the checkpoints."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from maintainer.limits import SlotReconciler
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.queues import QueueBackend
from nexus.core.runs import NewRun, RunKey, Stage, Transition
from nexus.core.slots import Limit, Slots


def new_run(caller: str) -> NewRun:
    return NewRun(
        algorithm="echo",
        id=uuid.uuid4(),
        stage=Stage.BUFFERED,
        caller=caller,
        received_by_host="test-host",
        applied_configuration={"workgroup": "default"},  # type: ignore[typeddict-item]
        payload_valid_for=timedelta(hours=1),
        payload_inline=b"{}",
    )


async def test_finished_runs_give_their_slots_back_and_running_ones_take_theirs(
    postgres_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn))
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        runs = [new_run("team") for _ in range(5)]
        for run in runs:
            await store.insert(run)
        done, running, lost, waiting, other = runs
        for run in (done, running, lost):
            await store.transition(Transition(run.algorithm, run.id, Stage.RUNNING))
        await store.transition(Transition(done.algorithm, done.id, Stage.COMPLETED))
        slots = Slots(queues)
        limit = Limit("caller", "team", 3)
        # done finished holding its slot; lost's slot went with Redis data; waiting is between
        # its slot and its Job; a run deleted since (retention) still holds one
        gone = RunKey("echo", uuid.uuid4())
        assert await slots.reserve(
            [(done.key, [limit]), (running.key, [limit]), (waiting.key, [limit])]
        ) == [None, None, None]
        await slots.release([(waiting.key, [limit])])
        await slots.add("caller/team", [gone, waiting.key])

        await SlotReconciler(store, slots, 1.0, lambda: True).reconcile()

        assert set(await slots.holders("caller/team")) == {running.key, lost.key, waiting.key}
        assert other.key not in await slots.holders("caller/team")
        # and a second pass changes nothing
        await SlotReconciler(store, slots, 1.0, lambda: True).reconcile()
        assert await slots.taken("caller/team") == 3
        await asyncio.sleep(0)
    finally:
        await store.close()
        await queues.close()
