"""The maintainer's sweeps of the checkpoint store: keyset pages of unfinished runs,
retention (finished runs and old idempotency keys), and which runs exist (for the inputs
crawl, :mod:`maintainer.orphans`).

:class:`Sweeps` reads through the store's connections (:meth:`CheckpointStore.connection`)
with the statements of :mod:`nexus.core.statements`. Guarantees:

* **Bounded and resumable.** A page is at most ``limit`` rows in keyset order
  (``last_modified, algorithm, id``); its last row's :attr:`SweepRow.cursor` is where the
  next page starts, so a sweep of any backlog is done a page at a time, each an index scan.
* **By the database's clock.** "Not modified for ``older_than``" is measured against
  ``now()`` in PostgreSQL, so a maintainer whose clock is off judges no run early.
* **Narrow rows.** A sweep reads what it decides on, never inputs or configurations.
* **Only finished runs are deleted**, whatever keys are asked for: the statement itself
  checks the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol
from uuid import UUID

from nexus.core import statements as sql
from nexus.core.checkpoints import CheckpointStore
from nexus.core.retrying import job_name
from nexus.core.runs import RunKey, Stage


class _Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class SweepCursor:
    """Where a sweep stopped: the keyset (last_modified, algorithm, id) of its last row."""

    last_modified: datetime
    algorithm: str
    id: UUID

    START: ClassVar[SweepCursor]


SweepCursor.START = SweepCursor(datetime.min.replace(tzinfo=UTC), "", UUID(int=0))


@dataclass(frozen=True, slots=True)
class SweepRow:
    """What a sweep needs to know about an unfinished run (no payloads, no configuration)."""

    algorithm: str
    id: UUID
    stage: Stage
    received_at: datetime
    last_modified: datetime
    sent_at: datetime | None
    shard: str | None
    """The shard the run was sent to, or else the one its configuration names."""
    deadline_seconds: float | None
    attempts: int
    job_uid: str | None
    payload_uri: str | None
    has_inline_payload: bool
    attempt: int = 1
    """The current attempt (:mod:`nexus.core.retrying`): its Job is the run's Job now."""

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)

    @property
    def job(self) -> str:
        """The name of the current attempt's Job."""
        return job_name(self.id, self.attempt)

    @property
    def cursor(self) -> SweepCursor:
        return SweepCursor(self.last_modified, self.algorithm, self.id)


@dataclass(frozen=True, slots=True)
class ExpiredRun:
    """A finished run past retention, with the objects stored for it."""

    algorithm: str
    id: UUID
    payload_uri: str | None
    result_uri: str | None

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)


class Sweeps:
    """The sweeps' queries on one checkpoint store."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store

    async def page(
        self, stage: Stage, older_than: timedelta, after: SweepCursor | None, limit: int
    ) -> list[SweepRow]:
        """Runs in unfinished ``stage`` not modified for ``older_than`` (by the database's
        clock), oldest first, after the keyset cursor ``after``; at most ``limit``."""
        if stage.terminal:
            raise ValueError(f"sweeps look at unfinished runs, not {stage}")
        cursor = after or SweepCursor.START
        async with self._store.connection() as conn:
            rows = await conn.fetch(
                sql.SWEEP_PAGE,
                stage.value,
                older_than,
                cursor.last_modified,
                cursor.algorithm,
                cursor.id,
                limit,
            )
        return [_sweep_row(row) for row in rows]

    async def count_unfinished(self) -> dict[Stage, int]:
        """How many runs are in each unfinished stage now (every one of them, zero too)."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(sql.COUNT_UNFINISHED)
        counts = dict.fromkeys((Stage.NEW, Stage.BUFFERED, Stage.RUNNING), 0)
        counts.update({Stage(r["lifecycle_stage"]): int(r["runs"]) for r in rows})
        return counts

    async def children_of_cancelled(
        self, older_than: timedelta, limit: int
    ) -> list[tuple[SweepRow, RunKey, str | None]]:
        """Unfinished runs not modified for ``older_than`` whose parent run is
        ``CANCELLED``, oldest change first, at most ``limit``: each with its parent and
        the parent's cancellation details."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(sql.CHILDREN_OF_CANCELLED, older_than, limit)
        return [
            (_sweep_row(r), RunKey(r["parent_algorithm"], r["parent_id"]), r["parent_details"])
            for r in rows
        ]

    async def expired_runs(self, older_than: timedelta, limit: int) -> list[ExpiredRun]:
        """Finished runs received more than ``older_than`` ago, at most ``limit``."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(sql.EXPIRED_RUNS, older_than, limit)
        return [
            ExpiredRun(r["algorithm"], r["id"], r["payload_uri"], r["result_uri"]) for r in rows
        ]

    async def existing(self, keys: Sequence[RunKey]) -> set[RunKey]:
        """Those of ``keys`` that have a checkpoint, in any stage."""
        if not keys:
            return set()
        async with self._store.connection() as conn:
            rows = await conn.fetch(
                sql.EXISTING_RUNS, [k.algorithm for k in keys], [k.id for k in keys]
            )
        return {RunKey(r["algorithm"], r["id"]) for r in rows}

    async def delete_finished(self, keys: Sequence[RunKey]) -> int:
        """Delete the checkpoints of ``keys`` that are finished; how many were deleted."""
        if not keys:
            return 0
        async with self._store.connection() as conn:
            rows = await conn.fetch(
                sql.DELETE_FINISHED, [k.algorithm for k in keys], [k.id for k in keys]
            )
        return len(rows)

    async def clear_idempotency_keys(self, older_than: timedelta, limit: int) -> int:
        """Forget the idempotency keys of up to ``limit`` runs received more than
        ``older_than`` ago; how many were cleared."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(sql.CLEAR_KEYS, older_than, limit)
        return len(rows)


def _sweep_row(row: _Row) -> SweepRow:
    return SweepRow(
        algorithm=row["algorithm"],
        id=row["id"],
        stage=Stage(row["lifecycle_stage"]),
        received_at=row["received_at"],
        last_modified=row["last_modified"],
        sent_at=row["sent_at"],
        shard=row["shard"],
        deadline_seconds=row["deadline_seconds"],
        attempts=row["attempts"],
        job_uid=row["job_uid"],
        payload_uri=row["payload_uri"],
        has_inline_payload=row["has_inline"],
        attempt=row["run_attempt"],
    )
