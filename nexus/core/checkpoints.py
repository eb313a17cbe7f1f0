"""The checkpoint store: every run's durable record, in PostgreSQL (with its migrations,
the only asyncpg user).

Guarantees:

* **Durable before acknowledged.** :meth:`CheckpointStore.insert` returns only after the row
  is committed, so a read right after it (on any pod) finds the run.
* **Grouped inline reads.** Inline inputs and results, fetched one GET at a time by
  algorithms and clients, are read together when they arrive together: one statement per
  batch, no delay added.
* **Group commit.** Inserts and transitions from any number of concurrent callers are
  written as one ``INSERT … SELECT FROM unnest(…)`` / ``UPDATE … FROM unnest(…)`` per batch
  (see :mod:`nexus.core.grouping`): one round trip for hundreds of runs.
* **Transitions are enforced in SQL.** An update matches only rows whose current stage may
  move to the target (the ``run_transitions`` table), and a trigger refuses anything else,
  so two writers racing on one run can never move a terminal run.
* **Counted.** Every transition to a finished stage that applied is observed, once, in
  ``nexus_run_duration_seconds{stage}``: the time from the run's receipt to that write, by
  the database's clock, in whichever process wrote it.
* **A reader finds only what it may see.** The reads that answer clients take a
  :class:`~nexus.core.visibility.Viewer` and filter by its caller in the same statement:
  another caller's run reads as ``None``, exactly as a run that does not exist.
* **Idempotency keys.** The same ``(caller, Idempotency-Key)`` names one run for 24 hours;
  a second insert returns the first run's id and creates nothing, and names the fields in
  which it asked for something else (:attr:`Admission.conflicts`).

The schema it needs is made, or waited for, by :mod:`nexus.core.migrations`; the
maintainer's sweeps read it through :mod:`nexus.core.sweeps`.

Connection, protocol and timeout errors, and those of a server that cannot do the work
now (in recovery, a standby during a fail-over: :data:`NOT_READY_STATES`), surface as
:class:`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from nexus.core import statements as sql
from nexus.core.config import PostgresSettings
from nexus.core.errors import CheckpointRejected, StoreNotReached, StoreUnavailable
from nexus.core.grouping import GroupCommitter
from nexus.core.meters import LoopHistogram
from nexus.core.outages import Outage
from nexus.core.retrying import AttemptRecord
from nexus.core.runs import (
    Checkpoint,
    Kept,
    NewRun,
    RunKey,
    RunResult,
    Stage,
    Transition,
    record,
)
from nexus.core.templates import AppliedConfiguration
from nexus.core.visibility import Viewer

log = logging.getLogger(__name__)
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

MAX_SHARED_CONFIGURATIONS = 256
"""Applied configurations kept decoded for shared reads; past it, all are dropped (a few
templates' runs share a handful; runs with overrides each have their own)."""

IDEMPOTENCY_WINDOW = timedelta(hours=24)
"""How long an Idempotency-Key names its first run (DESIGN §2)."""

MAX_DESCENDANT_DEPTH = 32
"""How many generations below a run its cancellation reaches."""

MAX_TAG_RESULTS = 1000
"""The most runs the Go v1 tag route (across algorithms) answers; over it, it refuses
(the v1.2 route lists every run, :mod:`nexus.core.listings`)."""

CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection broken mid-operation
    asyncpg.PostgresConnectionError,  # class 08: the connection failed
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, out of memory
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, cancelled
)
"""Errors that say the store cannot be had now, not that a statement is wrong: answered
503 with ``Retry-After`` (callers try again), and said once per outage in the log."""
NOT_READY_STATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: connected to a standby, a fail-over under way
        "55000",  # object_not_in_prerequisite_state: "recovery is in progress" and the like
        "55006",  # object_in_use: held by another session (maintenance) for now
        "55P03",  # lock_not_available: a lock wait ran out
        "58030",  # io_error: the server could not read or write its disk
    }
)
"""SQLSTATEs of a server that answers but cannot do the work *now*: the same statement
succeeds once a fail-over or a recovery has ended, or a lock is let go. Counted as the
store being unavailable, like :data:`CONNECTION_ERRORS`. Left out on purpose: the rest
of class 55 (55P02, a setting that cannot change now; 55P04, an enum value used too
soon) and class 58 (a missing file), which no waiting mends, and class 40 (a deadlock,
a serialization failure), which says nothing about the store's health."""
RECONNECT_STATES = frozenset({"25006", "55000"})
"""Of :data:`NOT_READY_STATES`, those that say this connection reached a server in
recovery or a standby: the connection is closed rather than pooled again, so that the
next one is made anew, to the primary once a fail-over has moved the address."""


def not_ready(exc: BaseException) -> bool:
    """Whether ``exc`` says that the store cannot be had now (see :data:`CONNECTION_ERRORS`
    and :data:`NOT_READY_STATES`), not that the statement is wrong."""
    return isinstance(exc, CONNECTION_ERRORS) or (
        isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in NOT_READY_STATES
    )


# A value PostgreSQL cannot hold (e.g. NUL in a string): the item's fault, not the batch's.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
_DEADLOCK_RETRIES = 3

# Every statement of the store finds runs through an index: by key, by a small array of
# keys joined to the table, or by one of the partial indexes. Those plans are right
# whatever the table's statistics say, so each statement is planned once per connection
# (a generic plan), which halves PostgreSQL's work per transition against planning every
# execution. The planner must not pick a plan that only suits a nearly empty table (a
# sequential scan, a hash join) when the first plan is made on a fresh database, and keep
# it while the table grows: with those methods disabled it takes the index plan there too.
PLAN_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}

FINISHED_SECONDS = LoopHistogram(
    "nexus_run_duration_seconds",
    "Time from a run's receipt to its finished stage being written, by that stage (the"
    " _count is the number of runs finished).",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 86400),
)
_FINISHED = {stage: FINISHED_SECONDS.labels(stage.value) for stage in Stage if stage.terminal}


def _observe_finished(change: Transition, age: float | None) -> None:
    """Time a change that applied, if it finished its run."""
    child = _FINISHED.get(change.to)
    if child is not None and age is not None:
        child.observe(max(0.0, age))


if TYPE_CHECKING:
    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = PoolConnectionProxy


# -- the store -----------------------------------------------------------------------------


@record
class Admission:
    """Outcome of an insert: the run's id and algorithm, and whether this call created it.

    An idempotency key names one run per caller, whatever its algorithm: a repeat for
    another algorithm finds the first run, whose ``algorithm`` then differs. A repeat that
    asked for anything else than the first run did names what differs in ``conflicts``
    (the request's field names), so that it is refused rather than silently answered with
    a run it did not ask for."""

    id: UUID
    created: bool
    algorithm: str
    conflicts: tuple[str, ...] = ()


def _conflicts(run: NewRun, first: asyncpg.Record) -> tuple[str, ...]:
    """The request fields in which ``run`` differs from the ``first`` run of its key."""
    differs = {
        "algorithmName": run.algorithm != first["algorithm"],
        "algorithmParameters": run.content_hash != first["content_hash"],
        "customConfiguration": (run.configuration_overrides or None)
        != (first["configuration_overrides"] or None),
        "tag": run.tag != first["tag"],
        "parentRequest": run.parent != first["parent"],
        "payloadValidFor": run.payload_valid_for != first["payload_valid_for"],
    }
    return tuple(name for name, different in differs.items() if different)


_STAGES = {stage.value: stage for stage in Stage}
"""Stages by their stored name: a dictionary look-up, not an Enum call, per row read."""


def result_of(row: asyncpg.Record) -> RunResult:
    """A run's result as :data:`sql.RESULT_COLUMNS` read it (for companion modules too)."""
    return RunResult(
        algorithm=row["algorithm"],
        id=row["id"],
        stage=_STAGES[row["lifecycle_stage"]],
        result_uri=row["result_uri"],
        failure_cause=row["algorithm_failure_cause"],
        failure_details=row["algorithm_failure_details"],
        has_inline_result=row["has_inline_result"],
    )


_RENAMED = {
    "lifecycle_stage": "stage",
    "has_inline": "has_inline_payload",
    "algorithm_failure_cause": "failure_cause",
    "algorithm_failure_details": "failure_details",
    "run_attempt": "attempt",
}
"""The columns of :data:`sql.COLUMNS` named otherwise in :class:`Checkpoint`."""


def _in_field_order(columns: str) -> None:
    """Refuse to start unless ``columns`` read a checkpoint's fields in their order (what
    :func:`_checkpoint` relies on)."""
    names = [_RENAMED.get(name, name) for name in (c.split()[-1] for c in columns.split(","))]
    expected = [f.name for f in dataclasses.fields(Checkpoint)]
    if names != expected:
        raise RuntimeError(f"sql.COLUMNS reads {names}, not the fields of Checkpoint {expected}")


_in_field_order(sql.COLUMNS)
_in_field_order(sql.COLUMNS_SHARED)
_STAGE, _APPLIED = 2, 7
"""Where a row of :data:`sql.COLUMNS` has the stage and the applied configuration."""


def _checkpoint(row: asyncpg.Record, applied: AppliedConfiguration | None = None) -> Checkpoint:
    """A row of :data:`sql.COLUMNS` (or ``COLUMNS_SHARED``, with its configuration decoded
    as ``applied``) as a checkpoint: its values in order, as positional arguments, not
    each looked up in the row by its name and matched to its parameter by keyword (28 of
    each for every run dispatched)."""
    values = list(row)
    values[_STAGE] = _STAGES[values[_STAGE]]
    if applied is not None:
        values[_APPLIED] = applied
    return Checkpoint(*values)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
        format="text",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Undo on release only what the store can leave behind: a transaction interrupted by
    a cancellation. It takes no advisory locks, listens to nothing and changes no session
    setting, so asyncpg's default reset (four statements and a round trip on every
    release) would be pure overhead."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class CheckpointStore:
    """Reads and group-committed writes of run checkpoints."""

    def __init__(self, pool: asyncpg.Pool, settings: PostgresSettings) -> None:
        self._pool = pool
        self._acquire_timeout = settings.acquire_timeout
        self.outage = Outage("postgres", "the checkpoint store")
        self.max_pending_writes = settings.max_pending
        self._batch_max = settings.batch_max_size
        options: dict[str, Any] = {
            "overloaded": lambda: StoreNotReached("too many checkpoint writes are waiting"),
            "max_batch": settings.batch_max_size,
            "max_delay": settings.batch_max_delay,
            "max_in_flight": max(1, settings.pool_max_size // 4),
            "max_pending": settings.max_pending,
            "min_batch": settings.batch_min_size,
        }
        self._configurations: dict[str, AppliedConfiguration] = {}
        """Applied configurations by their JSON text, for ``get_many(shared=True)``."""
        self._inserts: GroupCommitter[NewRun, Admission] = GroupCommitter(
            "checkpoint-insert", self._write_inserts, **options
        )
        self._transitions: GroupCommitter[Transition, bool | Kept] = GroupCommitter(
            "checkpoint-transition",
            self._write_transitions,
            **{
                **options,
                "max_delay": settings.transition_max_delay,
                "min_batch": settings.transition_min_size,
            },
        )

        # Inline inputs and results are read by their algorithms and clients one GET at a
        # time: reads that arrive together share one statement (no delay is added: a read
        # goes at once, with whatever arrived while the previous one was out).
        reads: dict[str, Any] = {
            "overloaded": lambda: StoreNotReached("too many inline reads are waiting"),
            "max_batch": settings.batch_max_size,
            "max_delay": 0.0,
            "max_in_flight": 2,
            "max_pending": settings.max_pending,
        }
        self._inline_reads: dict[str, GroupCommitter[RunKey, bytes | None]] = {
            column: GroupCommitter(
                f"inline-read-{column}", partial(self._read_inline, column), **reads
            )
            for column in ("payload_inline", "result_inline")
        }

    @classmethod
    async def open(cls, settings: PostgresSettings) -> CheckpointStore:
        """Connect a pool to the store (the schema must be migrated already)."""
        _quiet_pool_floor()
        try:
            pool = await asyncpg.create_pool(
                settings.dsn,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                command_timeout=settings.command_timeout,
                timeout=settings.connect_timeout,
                init=_init_connection,
                reset=_keep_session,
                server_settings=PLAN_SETTINGS,
            )
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"cannot connect to the checkpoint store: {exc}") from exc
        return cls(pool, settings)

    async def close(self) -> None:
        """Write what is waiting, then close every connection."""
        await self._inserts.close()
        await self._transitions.close()
        for reads in self._inline_reads.values():
            await reads.close()
        await self._pool.close()

    @property
    def pending_writes(self) -> int:
        return self._inserts.pending + self._transitions.pending

    # -- writes --------------------------------------------------------------------------

    async def insert(self, run: NewRun) -> Admission:
        """Record a new run; with an idempotency key already used, return the first run."""
        return await self._inserts.submit(run)

    async def insert_many(self, runs: Sequence[NewRun]) -> list[Admission | Exception]:
        """Record ``runs`` in one group-committed batch (see :meth:`insert`): each run's
        admission, or the error that run alone failed with."""
        return await self._inserts.submit_many(runs)

    async def transition(self, change: Transition) -> bool | Kept:
        """Apply ``change`` if the run's current stage allows it; return whether it did (a
        change that keeps its Job's facts and did not apply may be answered with
        :class:`Kept`, which is false)."""
        return await self._transitions.submit(change)

    async def transition_many(self, changes: Sequence[Transition]) -> list[bool | Kept | Exception]:
        """Apply ``changes`` together (see :meth:`transition`), with no task per change:
        whether each was applied, or the error that change failed with."""
        return await self._transitions.submit_many(changes)

    async def _write_inserts(self, runs: Sequence[NewRun]) -> Sequence[Admission | Exception]:
        try:
            return await self._insert_batch(runs)
        except _DATA_ERRORS as exc:
            if len(runs) == 1:
                return [_rejected("the run", runs[0].id, exc)]
        return await _each_alone(self._write_inserts, runs)  # one bad run fails alone

    async def _insert_batch(self, runs: Sequence[NewRun]) -> list[Admission | Exception]:
        statement, arguments = _insert_arguments(runs)
        async with self.connection() as conn:  # one statement: atomic on its own
            row = await conn.fetchrow(statement, *arguments, len(runs))
            results: list[Admission | Exception] = [
                Admission(run.id, True, run.algorithm) for run in runs
            ]
            assert row is not None  # an aggregate's one row
            if row["n"] == len(runs):  # every run inserted (all are new)
                return results
            inserted = set(row["ids"] or ())
            losers = [i for i, run in enumerate(runs) if run.id not in inserted]
            if losers:
                try:
                    await self._resolve_conflicts(conn, runs, losers, results)
                except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                    # The INSERT has committed: its runs are stored, only the others fail
                    # (whatever the error: a deadlock expiring keys, say). Not a data
                    # error for the caller either: written again run by run, the stored
                    # runs would read as duplicates of themselves.
                    for i in losers:
                        results[i] = StoreUnavailable(f"checkpoint store unavailable: {exc}")
        return results

    async def _resolve_conflicts(
        self,
        conn: Connection,
        runs: Sequence[NewRun],
        losers: list[int],
        results: list[Admission | Exception],
    ) -> None:
        """Point each idempotent duplicate at its first run; retry keys that have expired."""
        keyed = [i for i in losers if runs[i].idempotency_key is not None]
        for i in losers:
            if runs[i].idempotency_key is None:  # the same request id twice: it exists
                results[i] = Admission(runs[i].id, False, runs[i].algorithm)
        if not keyed:
            return
        callers = [runs[i].caller for i in keyed]
        keys = [runs[i].idempotency_key for i in keyed]
        rows = await conn.fetch(sql.IDEMPOTENT_MATCHES, callers, keys, IDEMPOTENCY_WINDOW)
        if any(row["expired"] for row in rows):
            await conn.execute(sql.EXPIRE_KEYS, callers, keys, IDEMPOTENCY_WINDOW)
            for i in keyed:  # rare: one statement each keeps this path simple
                await conn.fetch(sql.INSERT, *([value] for value in _insert_row(runs[i])), 1)
            rows = await conn.fetch(sql.IDEMPOTENT_MATCHES, callers, keys, IDEMPOTENCY_WINDOW)
        first = {(row["caller"], row["idempotency_key"]): row for row in rows}
        for i in keyed:
            run = runs[i]
            owner = first.get((run.caller, run.idempotency_key))
            if owner is None:  # the first run was deleted in between: nothing names the key
                # only this run fails: its neighbours are written, and must hear so
                results[i] = StoreUnavailable("idempotency key conflict unresolved; retry")
                continue
            created = owner["id"] == run.id
            conflicts = () if created else _conflicts(run, owner)
            results[i] = Admission(owner["id"], created, owner["algorithm"], conflicts)

    async def _write_transitions(
        self, changes: Sequence[Transition]
    ) -> Sequence[bool | Kept | Exception]:
        try:
            return await self._transition_waiting_for_held(changes)
        except (*_DATA_ERRORS, asyncpg.CheckViolationError) as exc:
            if len(changes) == 1:
                return [_rejected("the change", changes[0].id, exc)]
        return await _each_alone(self._write_transitions, changes)  # one bad change fails alone

    async def _transition_waiting_for_held(
        self, changes: Sequence[Transition]
    ) -> list[bool | Kept]:
        """Apply a group-committed batch, waiting for runs another transaction holds (the
        request paths must get an answer; :meth:`transition_skipping_held` is the other
        way); for each change, whether it applied, or :class:`Kept` when it did not but
        kept its Job's facts."""
        # An UPDATE … FROM touches a row once even if it is listed twice, so a run named
        # twice in one batch has its later changes applied in a following statement.
        # Runs are told apart by algorithm and the id's number: a tuple of a str and an
        # int is hashed, compared and sorted in C, a UUID in Python (uuid.UUID's __hash__,
        # __eq__ and __lt__ were 10 calls of Python per completion). The order is the
        # same: a UUID sorts by its number, as PostgreSQL sorts uuid.
        keys = [(change.algorithm, change.id.int) for change in changes]
        rounds: list[list[int]] = []
        seen: dict[tuple[str, int], int] = {}
        for index, key in enumerate(keys):
            depth = seen.get(key, 0)
            seen[key] = depth + 1
            if depth == len(rounds):
                rounds.append([])
            rounds[depth].append(index)
        for indices in rounds:
            indices.sort(key=keys.__getitem__)
        statements = [_transition_round([changes[i] for i in indices]) for indices in rounds]
        async with self.connection() as conn:
            answers = await self._update(conn, statements)
        applied: list[bool | Kept] = [False] * len(changes)
        for indices, rows in zip(rounds, answers, strict=True):
            for row in rows:  # the change's position in its round; moved, or kept facts
                i = indices[row[0] - 1]
                if row.get("moved", True):
                    applied[i] = True
                    _observe_finished(changes[i], row[1])
                else:
                    applied[i] = Kept(_STAGES[row[3]], row[4])
        return applied

    async def _update(
        self, conn: Connection, rounds: list[tuple[str, list[Any]]]
    ) -> list[list[asyncpg.Record]]:
        """The rows each round's UPDATE changed. Several rounds are one transaction: if a
        later one fails, none is kept, and the batch can be retried change by change."""
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                if len(rounds) == 1:  # one statement is atomic on its own
                    statement, columns = rounds[0]
                    return [await conn.fetch(statement, *columns)]
                async with conn.transaction():
                    return [await conn.fetch(statement, *columns) for statement, columns in rounds]
            except asyncpg.DeadlockDetectedError as exc:
                # Sorted batches do not deadlock each other; another writer may still.
                # What failed was rolled back as a whole, so trying again is safe.
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise StoreUnavailable(f"transitions kept deadlocking: {exc}") from exc
        raise AssertionError("unreachable")

    async def retry(
        self,
        run: RunKey,
        attempt: int,
        failed: AttemptRecord,
        *,
        memory: str | None = None,
        retry_at: datetime | None = None,
    ) -> str | None:
        """Start attempt ``attempt + 1`` of ``run`` if its current attempt is ``attempt`` and
        it is unfinished: back to ``BUFFERED``, ``failed`` appended to its retries, with
        ``memory`` as its memory limit from now on and dispatched no sooner than
        ``retry_at``. The shard it goes to when it did, ``None`` when it did not (another
        process did it first, or the run moved on); exactly one caller per attempt gets a
        shard, whoever asks and however often."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                sql.RETRY, run.algorithm, run.id, attempt, failed, memory, retry_at
            )
        return None if row is None else str(row["shard"] or "")

    # -- reads ---------------------------------------------------------------------------

    async def get(self, algorithm: str, run_id: UUID, viewer: Viewer) -> Checkpoint | None:
        """The run's checkpoint, or ``None`` when there is none that ``viewer`` may see."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {sql.COLUMNS} FROM runs WHERE algorithm = $1 AND id = $2{sql.SEEN_BY}",
                algorithm,
                run_id,
                viewer.owner(algorithm),
                viewer.parent,
            )
        return None if row is None else _checkpoint(row)

    async def get_many(
        self, keys: Iterable[RunKey], *, shared: bool = False
    ) -> dict[RunKey, Checkpoint]:
        """Checkpoints of ``keys`` in one round trip; missing runs are absent from the result.

        With ``shared``, runs whose applied configurations are equal (the runs of a
        template without overrides) share one object of it, decoded once and kept for
        the next reads: the caller reads it and must not change it. Dispatch reads every
        run's checkpoint, and decoding its configuration was a thirtieth of a Job's
        instructions."""
        keys = list(keys)
        if not keys:
            return {}
        columns = sql.COLUMNS_SHARED if shared else sql.COLUMNS
        # the keys as two texts, not arrays: no collections.abc check of each (see TRANSITION)
        names = [k.algorithm for k in keys]
        separator = _separator(names)
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {columns} FROM runs r JOIN unnest(string_to_array($1::text, $3::text),"
                " string_to_array($2::text, ',')::uuid[]) AS k(a, i)"
                " ON r.algorithm = k.a AND r.id = k.i",
                separator.join(names),
                ",".join([f"{k.id.int:032x}" for k in keys]),
                separator,
            )
        if not shared:
            return {c.key: c for c in map(_checkpoint, rows)}
        found = {}
        configurations = self._configurations
        for row in rows:
            text = row["applied_configuration"]
            applied = configurations.get(text)
            if applied is None:
                if len(configurations) >= MAX_SHARED_CONFIGURATIONS:
                    configurations.clear()
                applied = configurations[text] = orjson.loads(text)
            checkpoint = _checkpoint(row, applied)
            found[checkpoint.key] = checkpoint
        return found

    async def result(self, algorithm: str, run_id: UUID, viewer: Viewer) -> RunResult | None:
        """How the run stands, without reading its whole checkpoint; ``None`` when there is
        no run ``viewer`` may see."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {sql.RESULT_COLUMNS} FROM runs WHERE algorithm = $1 AND id = $2"
                f"{sql.SEEN_BY}",
                algorithm,
                run_id,
                viewer.owner(algorithm),
                viewer.parent,
            )
        return None if row is None else result_of(row)

    async def results_seen(
        self, wanted: Sequence[tuple[RunKey, str | None, str | None]]
    ) -> list[RunResult | None]:
        """How each run stands as its caller may see it (``(key, owner, parent)``, as
        :meth:`Viewer.owner` and :attr:`Viewer.parent` give them: ``None`` for any
        caller's, any parent's), in one statement: ``None`` for a run that does not exist
        or the caller may not see."""
        if not wanted:
            return []
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {sql.RESULT_COLUMNS}, k.n FROM runs r"
                " JOIN unnest($1::text[], $2::uuid[], $3::text[], $4::text[])"
                " WITH ORDINALITY AS k(a, i, o, p, n)"
                " ON r.algorithm = k.a AND r.id = k.i AND (k.o IS NULL OR r.caller = k.o)"
                " AND (k.p IS NULL OR r.parent = k.p::jsonb)",
                [key.algorithm for key, _, _ in wanted],
                [key.id for key, _, _ in wanted],
                [owner for _, owner, _ in wanted],
                [parent for _, _, parent in wanted],
            )
        found: list[RunResult | None] = [None] * len(wanted)
        for row in rows:
            found[row["n"] - 1] = result_of(row)
        return found

    async def results_many(self, keys: Sequence[RunKey]) -> dict[RunKey, RunResult]:
        """How the runs ``keys`` stand, in one round trip, whoever submitted them (for work
        that already knows its caller may see them); missing runs are absent."""
        if not keys:
            return {}
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {sql.RESULT_COLUMNS} FROM runs r JOIN unnest($1::text[], $2::uuid[])"
                " AS k(a, i) ON r.algorithm = k.a AND r.id = k.i",
                [k.algorithm for k in keys],
                [k.id for k in keys],
            )
        found = (result_of(row) for row in rows)
        return {RunKey(r.algorithm, r.id): r for r in found}

    async def results_by_tag_across(
        self, algorithms: Sequence[str], tag: str, viewer: Viewer, limit: int = MAX_TAG_RESULTS
    ) -> list[RunResult]:
        """How the runs carrying ``tag`` of any of ``algorithms`` that ``viewer`` may see
        stand, newest first, at most ``limit`` of them; one indexed scan of
        ``(algorithm, tag)`` per algorithm."""
        granted = [a for a in algorithms if viewer.owner(a) is None]
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {sql.RESULT_COLUMNS} FROM runs WHERE algorithm = ANY($1::text[])"
                " AND tag = $2 AND (caller = $4 OR algorithm = ANY($5::text[]))"
                " AND ($6::text IS NULL OR parent = $6::jsonb)"
                " ORDER BY received_at DESC LIMIT $3",
                list(algorithms),
                tag,
                limit,
                viewer.caller,
                granted,
                viewer.parent,
            )
        return [result_of(row) for row in rows]

    async def inline_result(self, algorithm: str, run_id: UUID) -> bytes | None:
        """The result document kept with the checkpoint, or ``None``."""
        return await self._inline_reads["result_inline"].submit(RunKey(algorithm, run_id))

    async def _read_inline(self, column: str, keys: Sequence[RunKey]) -> list[bytes | None]:
        """``column`` of each run of ``keys`` (``None`` for none), in one statement."""
        statement = sql.INLINE_PAYLOADS if column == "payload_inline" else sql.INLINE_RESULTS
        async with self.connection() as conn:
            rows = await conn.fetch(statement, [k.algorithm for k in keys], [k.id for k in keys])
        found = {(r["algorithm"], r["id"]): r["content"] for r in rows}
        return [
            None if (value := found.get((k.algorithm, k.id))) is None else bytes(value)
            for k in keys
        ]

    async def unfinished_descendants(
        self, algorithm: str, run_id: UUID, max_depth: int = MAX_DESCENDANT_DEPTH
    ) -> list[Checkpoint]:
        """Every unfinished run started below this one (its children, theirs, …), whoever
        submitted them: what cancelling it must cancel too."""
        async with self.connection() as conn:
            rows = await conn.fetch(sql.DESCENDANTS, algorithm, run_id, max_depth)
        return [_checkpoint(row) for row in rows]

    async def inline_payload(self, algorithm: str, run_id: UUID) -> bytes | None:
        """The input kept with the checkpoint, or ``None``."""
        return await self._inline_reads["payload_inline"].submit(RunKey(algorithm, run_id))

    # -- plumbing ------------------------------------------------------------------------

    def connection(self) -> _Connection:
        """``async with`` a pooled connection, for the store's own companion modules
        (:mod:`nexus.core.sweeps`): no connection to be had is :class:`StoreNotReached`,
        a connection failing while used :class:`StoreUnavailable`."""
        return _Connection(self._pool, self._acquire_timeout, self.outage)

    # -- the maintainer's writes ----------------------------------------------------------

    async def transition_skipping_held(self, changes: Sequence[Transition]) -> list[bool | None]:
        """Apply ``changes`` without waiting for any other writer; for each, ``True`` if it
        applied, ``False`` if the run's stage refuses it, ``None`` if another writer held
        the run at that moment (try again) or the store cannot hold the change (logged).

        For a background writer that already collects its changes (the maintainer): rows
        another transaction has locked are skipped, not waited for, so this writer never
        takes part in a lock cycle with the request paths' batches (which lock their rows
        in whatever order the join visits them). One round trip per ``batch_max_size``.
        """
        results: list[bool | None] = [False] * len(changes)
        rounds: list[list[int]] = []  # a run named twice is changed in a later statement
        depth: dict[RunKey, int] = {}
        for index, change in enumerate(changes):
            level = depth[change.key] = depth.get(change.key, -1) + 1
            if level == len(rounds):
                rounds.append([])
            rounds[level].append(index)
        async with self.connection() as conn:
            for indices in rounds:
                for start in range(0, len(indices), self._batch_max):
                    chunk = indices[start : start + self._batch_max]
                    found = await _skip_locked(conn, [changes[i] for i in chunk])
                    taken = {key: applied for key, applied, _ in found}
                    ages = {key: age for key, applied, age in found if applied}
                    for i in chunk:  # applied; held (or not holdable); or refused
                        key = changes[i].key
                        results[i] = (taken[key] or None) if key in taken else False
                        if key in ages:
                            _observe_finished(changes[i], ages[key])
        return results


_POOL_FLOOR = "Failed to restore the pool connection floor"


class _PoolFloor(logging.Filter):
    """asyncpg's pool logs a warning with a whole traceback at every failed try to make
    its ``min_size`` connections again (tries 1 s apart, doubling): a traceback per
    connection for as long as the server is away. The store's :class:`Outage` says once
    that it is down and once that it is back; those lines say nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_POOL_FLOOR))


def _quiet_pool_floor() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloor) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloor())


def _rejected(what: str, run_id: UUID, exc: Exception) -> CheckpointRejected:
    """The refusal a client hears: what could not be stored, never the store's own words
    (they name columns, encodings and statements), which are logged here instead."""
    log.warning("the store refused %s: %s", what, exc, extra={"requestId": str(run_id)})
    rejected = CheckpointRejected(
        f"{what} cannot be stored: one of its values is not one the checkpoint store can hold"
        " (text with a NUL character, say)"
    )
    rejected.__cause__ = exc
    return rejected


MAX_SHAPES = 16
"""The most shapes a batch is sent in by :data:`sql.INSERT_SHAPED`; a batch of more
(single submits of many callers, tags or parents) is sent row by row, :data:`sql.INSERT`."""


def _insert_arguments(runs: Sequence[NewRun]) -> tuple[str, list[Any]]:
    """The statement that inserts ``runs``, and its arguments.

    Runs that differ only in their id, input and idempotency key share a shape: the
    applied configuration (one object for the runs of a template without overrides),
    caller, tag, parent, … of many runs are then sent, encoded and parsed once. Encoding
    a run's columns is most of a submission's cost in asyncpg, and parsing its applied
    configuration's JSON much of PostgreSQL's. A batch of one shape (the usual one) sends
    the shape's columns as scalars (:data:`sql.INSERT_ONE_SHAPE`)."""
    shapes: dict[tuple[Any, ...], int] = {}
    indices: list[int] = []
    for run in runs:
        parent = run.parent
        shape = (
            run.algorithm, run.stage, run.caller, run.received_by_host,
            id(run.applied_configuration), id(run.configuration_overrides),
            run.payload_valid_for, run.tag, run.api_version,
            None if parent is None else (parent["requestId"], parent["algorithmName"]),
        )  # fmt: skip
        index = shapes.get(shape)
        if index is None:
            if len(shapes) == MAX_SHAPES:
                return sql.INSERT, _columns(runs)
            index = shapes[shape] = len(shapes) + 1
        indices.append(index)
    hashes = ",".join([run.content_hash or "" for run in runs])
    if hashes.count(",") != len(runs) - 1:  # a hash with a comma in it (none of ours)
        return sql.INSERT, _columns(runs)
    first: dict[int, NewRun] = {}
    for run, index in zip(runs, indices, strict=True):
        first.setdefault(index, run)
    shaped = list(first.values())
    inputs: list[bytes] = []
    starts: list[str] = []
    lengths: list[str] = []
    at = 1  # PostgreSQL's substr counts from 1
    for run in runs:
        payload = run.payload_inline
        if payload is None:
            starts.append("0")
            lengths.append("0")
        else:
            inputs.append(payload)
            starts.append(str(at))
            lengths.append(str(len(payload)))
            at += len(payload)
    if len(shaped) == 1:  # the shape's columns as scalars: no array to check
        (run,) = shaped
        shaped_columns: list[Any] = [
            run.algorithm, run.stage.value, run.caller, run.received_by_host,
            run.applied_configuration, run.configuration_overrides, run.payload_valid_for,
            run.tag, run.api_version, run.parent,
        ]  # fmt: skip
        statement = sql.INSERT_ONE_SHAPE
    else:
        shaped_columns = [
            [run.algorithm for run in shaped],
            [run.stage.value for run in shaped],
            [run.caller for run in shaped],
            [run.received_by_host for run in shaped],
            [run.applied_configuration for run in shaped],
            _array([run.configuration_overrides for run in shaped]),
            [run.payload_valid_for for run in shaped],
            _array([run.tag for run in shaped]),
            [run.api_version for run in shaped],
            _array([run.parent for run in shaped]),
        ]
        statement = sql.INSERT_SHAPED
    return statement, [
        b"".join([run.id.bytes for run in runs]),
        bytes(indices),
        _array([run.payload_uri for run in runs]),
        b"".join(inputs),
        ",".join(starts),
        ",".join(lengths),
        hashes,
        _array([run.idempotency_key for run in runs]),
        *shaped_columns,
    ]


def _columns(runs: Sequence[NewRun]) -> list[list[Any] | None]:
    """The arguments of :data:`sql.INSERT`: each column of ``runs`` an array."""
    columns: list[list[Any]] = [[] for _ in range(15)]
    for run in runs:
        for column, value in zip(columns, _insert_row(run), strict=True):
            column.append(value)
    return [_array(column) for column in columns]


def _insert_row(run: NewRun) -> tuple[Any, ...]:
    """The values of ``run`` in the column order of ``sql.INSERT``."""
    return (
        run.algorithm, run.id, run.stage.value, run.caller, run.received_by_host,
        run.applied_configuration, run.configuration_overrides, run.payload_valid_for,
        run.payload_uri, run.payload_inline, run.content_hash, run.tag, run.api_version,
        run.parent, run.idempotency_key,
    )  # fmt: skip


async def _skip_locked(
    conn: Connection, batch: Sequence[Transition]
) -> list[tuple[RunKey, bool, float | None]]:
    """The runs :data:`sql.TRANSITION_SKIP_LOCKED` could take for ``batch``, whether each
    change applied and, if it did, the run's age. A change the store cannot hold is
    answered as not applied (as for a run held: nothing is known of its stage); its
    neighbours are still written."""
    try:
        rows = await conn.fetch(sql.TRANSITION_SKIP_LOCKED, *_transition_columns(batch))
    except _DATA_ERRORS as exc:
        if len(batch) == 1:
            change = batch[0]
            log.error(
                "the store cannot hold this change: %s", exc, extra={"requestId": str(change.id)}
            )
            return [(change.key, False, None)]
        return [row for change in batch for row in await _skip_locked(conn, [change])]
    return [(RunKey(r["algorithm"], r["id"]), r["applied"], r["age"]) for r in rows]


async def _each_alone(
    write: Callable[[Sequence[_Item]], Awaitable[Sequence[_Result | Exception]]],
    items: Sequence[_Item],
) -> list[_Result | Exception]:
    """``items`` written one at a time, after their batch was refused for one item's data:
    each gets its own answer. A store failure on the way is that item's alone: those
    written before it are, and are told so."""
    results: list[_Result | Exception] = []
    for item in items:
        try:
            (result,) = await write([item])
        except StoreUnavailable as exc:
            result = exc
        results.append(result)
    return results


def _text(message: str | None) -> str | None:
    """A failure's free text as PostgreSQL can hold it: whatever a container or a cluster
    wrote, a NUL (which ``text`` refuses) becomes U+FFFD and the rest is kept."""
    return message.replace("\x00", "\ufffd") if message and "\x00" in message else message


def _array(values: list[Any]) -> list[Any] | None:
    """``values`` as an array parameter, or NULL when every one is ``None``.

    asyncpg checks each element of an array it sends against two ``collections.abc``
    classes, about 2,400 instructions a check, and most columns of a write are unset for
    most runs (a completion's cause, Job and shard; a submission's tag and parent...).
    Every write's multi-argument ``unnest`` pads a NULL array with NULLs: the rows are
    those the array of NULLs gives."""
    return None if values.count(None) == len(values) else values


def _transition_round(batch: Sequence[Transition]) -> tuple[str, list[Any]]:
    """The statement that writes ``batch`` and its parameters: :data:`sql.TRANSITION`, or
    when a change keeps its Job's facts if refused, :data:`sql.TRANSITION_KEEPING_JOBS`
    with whether each does as a 15th, joined as the algorithms are."""
    columns = _transition_columns(batch)
    if not any([c.keep_job for c in batch]):
        return sql.TRANSITION, columns
    separator = columns[-1]
    columns.append(separator.join(["t" if c.keep_job else "f" for c in batch]))
    return sql.TRANSITION_KEEPING_JOBS, columns


def _transition_columns(batch: Sequence[Transition]) -> list[Any]:
    """The parameters of :data:`sql.TRANSITION` and :data:`sql.TRANSITION_SKIP_LOCKED`: the
    algorithms, target stages, Job uids and shards joined into one text each, the ids and
    the attempts expected joined by commas, the rest as arrays, then the separator that
    joins them."""
    # A Stage is a str (StrEnum), sent as its value; .value is a Python descriptor call.
    # A failure's text is looked at only when there is one (most changes have none). An id
    # is formatted from its number in C (str() of a UUID is a Python call).
    names = [c.algorithm for c in batch]
    stages: list[str] = [c.to for c in batch]
    uids = [c.job_uid for c in batch]
    shards = [c.shard for c in batch]
    job_uids = None if uids.count(None) == len(uids) else ["" if u is None else u for u in uids]
    on = None if shards.count(None) == len(shards) else ["" if s is None else s for s in shards]
    separator = _separator(names, stages, job_uids or [], on or [])
    attempts = [c.at_attempt for c in batch]
    return [
        separator.join(names),
        ",".join([f"{c.id.int:032x}" for c in batch]),
        separator.join(stages),
        _array([c.expect for c in batch]),
        _array([c.result_uri for c in batch]),
        _array([None if c.cause is None else _text(c.cause) for c in batch]),
        _array([None if c.details is None else _text(c.details) for c in batch]),
        None if job_uids is None else separator.join(job_uids),
        None if on is None else separator.join(on),
        _array([c.sent_at for c in batch]),
        _array([c.attempts or None for c in batch]),
        _array([c.result_inline for c in batch]),
        None
        if attempts.count(None) == len(attempts)
        else ",".join(["" if a is None else str(a) for a in attempts]),
        separator,
    ]


def _separator(*columns: list[str]) -> str:
    """A character that no value of ``columns`` holds, to join each of them with: a comma
    (an algorithm is a Kubernetes name, a stage a capitalised word, a Job uid a UUID), else
    the first character that none holds."""
    joined = "".join("".join(column) for column in columns)
    if "," not in joined:
        return ","
    return next(c for c in map(chr, range(1, 0xD800)) if c not in joined)


class _Connection:
    """``async with`` a pooled connection. No connection to be had within the acquire
    timeout is StoreNotReached; connection-level failures while it is used, and a server
    not ready for the work (:func:`not_ready`), become StoreUnavailable. Either is
    reported to the store's :class:`Outage`, as is the first success after them."""

    def __init__(self, pool: asyncpg.Pool, timeout: float, outage: Outage) -> None:
        self._pool = pool
        self._timeout = timeout
        self._outage = outage
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        try:
            conn = await self._pool.acquire(timeout=self._timeout)
        except CONNECTION_ERRORS as exc:
            problem = str(exc) or "no connection within the acquire timeout"
            self._outage.down(problem)
            raise StoreNotReached(f"checkpoint store unavailable: {problem}") from exc
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        assert self._conn is not None
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in RECONNECT_STATES:
            self._conn.terminate()  # a standby's, or a recovering server's: never reused
        await self._pool.release(self._conn)
        if exc is not None and not_ready(exc):
            self._outage.down(str(exc) or type(exc).__name__)
            raise StoreUnavailable(f"checkpoint store unavailable: {exc}") from exc
        if exc is None:
            self._outage.up()
