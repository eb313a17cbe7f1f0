"""The ticks of schedules in the checkpoint store: which run each tick started.

A companion of :mod:`nexus.core.checkpoints` (through :meth:`CheckpointStore.connection`).
A tick is *claimed* before its run is submitted: one row per (schedule, tick), naming the
run's request id, so that whoever claims it second (another scheduler pod, or this one
after a restart) gets the same request id — and submitting a run whose id exists creates
nothing. Exactly one run per tick, durably, whatever crashes in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from nexus.core.checkpoints import CheckpointStore

CLAIM = """
INSERT INTO schedule_ticks (schedule, tick, algorithm, request_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (schedule, tick) DO UPDATE SET request_id = schedule_ticks.request_id
RETURNING request_id, outcome
"""
"""One row, always: the new claim, or the first claim's row as committed. A claim racing
another's uncommitted insert of the tick waits for it, then locks and answers that row.
(``DO NOTHING`` plus a read of the table in the same statement answers nothing in that
race: the read sees the statement's snapshot, taken before the other claim committed.)
The update writes nothing new: the first claim's request id and outcome stay."""

OUTCOME = "UPDATE schedule_ticks SET outcome = $3 WHERE schedule = $1 AND tick = $2"

LAST = """
SELECT DISTINCT ON (schedule) schedule, tick, algorithm, request_id, outcome
FROM schedule_ticks WHERE schedule = ANY($1::text[])
ORDER BY schedule, tick DESC
"""


@dataclass(frozen=True, slots=True)
class Tick:
    """A claimed tick: the run it started (or was to start), and what came of it."""

    schedule: str
    tick: datetime
    algorithm: str
    request_id: UUID
    outcome: str | None
    """``None`` until its submission was answered: submitted, or why not."""


async def claim(
    store: CheckpointStore, schedule: str, tick: datetime, algorithm: str, request_id: UUID
) -> Tick:
    """The tick's row: this claim's if it is the first, else the first claim's."""
    async with store.connection() as conn:
        row = await conn.fetchrow(CLAIM, schedule, tick, algorithm, request_id)
    assert row is not None  # an upsert's RETURNING answers its one row
    return Tick(schedule, tick, algorithm, row["request_id"], row["outcome"])


async def record(store: CheckpointStore, schedule: str, tick: datetime, outcome: str) -> None:
    async with store.connection() as conn:
        await conn.execute(OUTCOME, schedule, tick, outcome)


async def last_ticks(store: CheckpointStore, schedules: Sequence[str]) -> dict[str, Tick]:
    """The latest claimed tick of each schedule that has one."""
    if not schedules:
        return {}
    async with store.connection() as conn:
        rows = await conn.fetch(LAST, list(schedules))
    return {
        r["schedule"]: Tick(r["schedule"], r["tick"], r["algorithm"], r["request_id"], r["outcome"])
        for r in rows
    }
