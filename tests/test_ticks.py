"""Claims of schedule ticks against a real PostgreSQL: exactly one run per tick, whoever
claims it and however the claims interleave.

The race these tests force: a claim whose insert waits on another claimer's uncommitted
insert of the same tick must still answer that claimer's row once it commits (a statement's
snapshot is taken before the wait, so a read in the same statement cannot see that row)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from nexus.core import ticks
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings

TICK = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=40))
    yield store
    await store.close()


async def waiting_on_a_lock(conn: asyncpg.Connection, count: int) -> None:
    """Until ``count`` other sessions wait on a lock (a claim blocked behind another's
    uncommitted insert of the same tick)."""
    async with asyncio.timeout(30):
        while True:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.02)


async def test_a_claim_waiting_on_an_uncommitted_claim_answers_that_claims_run(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    first = uuid.uuid4()
    holder = await asyncpg.connect(postgres_dsn)
    observer = await asyncpg.connect(postgres_dsn)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "INSERT INTO schedule_ticks (schedule, tick, algorithm, request_id)"
            " VALUES ($1, $2, $3, $4)",
            "nightly",
            TICK,
            "echo",
            first,
        )
        claims = [
            asyncio.create_task(ticks.claim(store, "nightly", TICK, "echo", uuid.uuid4()))
            for _ in range(5)
        ]
        await waiting_on_a_lock(observer, 5)
        await transaction.commit()
        claimed = await asyncio.gather(*claims)
    finally:
        await holder.close()
        await observer.close()
    assert {c.request_id for c in claimed} == {first}
    assert all(c.outcome is None for c in claimed)


async def test_many_concurrent_claims_of_each_tick_agree_on_one_run(
    store: CheckpointStore,
) -> None:
    schedules = [f"every-minute-{n}" for n in range(4)]
    offered = {s: [uuid.uuid4() for _ in range(30)] for s in schedules}
    claims = [
        ticks.claim(store, schedule, TICK, "echo", offered[schedule][n])
        for n in range(30)
        for schedule in schedules
    ]
    claimed = await asyncio.gather(*claims)
    for schedule in schedules:
        answers = {c.request_id for c in claimed if c.schedule == schedule}
        assert len(answers) == 1, answers
        assert answers <= set(offered[schedule])
    last = await ticks.last_ticks(store, schedules)
    assert {s: t.request_id for s, t in last.items()} == {
        s: next(c.request_id for c in claimed if c.schedule == s) for s in schedules
    }


async def test_a_claim_after_the_outcome_answers_the_first_run_and_its_outcome(
    store: CheckpointStore,
) -> None:
    first = await ticks.claim(store, "hourly", TICK, "echo", uuid.uuid4())
    await ticks.record(store, "hourly", TICK, "submitted")
    again = await ticks.claim(store, "hourly", TICK, "echo", uuid.uuid4())
    assert again.request_id == first.request_id
    assert again.outcome == "submitted"
