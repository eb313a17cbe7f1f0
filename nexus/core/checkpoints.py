"""The checkpoint store: every run's durable record, in PostgreSQL (the only asyncpg user).

Guarantees:

* **Durable before acknowledged.** :meth:`CheckpointStore.insert` returns only after the row
  is committed, so a read right after it (on any pod) finds the run.
* **Group commit.** Inserts and transitions from any number of concurrent callers are
  written as one ``INSERT … SELECT FROM unnest(…)`` / ``UPDATE … FROM unnest(…)`` per batch
  (see :mod:`nexus.core.grouping`): one round trip for hundreds of runs.
* **Transitions are enforced in SQL.** An update matches only rows whose current stage may
  move to the target (the ``run_transitions`` table), and a trigger refuses anything else,
  so two writers racing on one run can never move a terminal run.
* **Idempotency keys.** The same ``(caller, Idempotency-Key)`` names one run for 24 hours;
  a second insert returns the first run's id and creates nothing.
* **Migrations** are versioned SQL files applied at start-up under an advisory lock, in one
  transaction, so several pods starting at once apply each exactly once. Where a migration
  Job applies them instead, a service starts only once the schema is at the version its
  code needs (or newer), and fails start-up when that does not happen in time.

Connection, protocol and timeout errors surface as :class:`StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar
from uuid import UUID

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from nexus.core import statements as sql
from nexus.core.config import PostgresSettings
from nexus.core.errors import CheckpointRejected, StoreNotReached, StoreUnavailable
from nexus.core.grouping import GroupCommitter
from nexus.core.runs import Checkpoint, NewRun, RunKey, RunResult, Stage, Transition

log = logging.getLogger(__name__)
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

IDEMPOTENCY_WINDOW = timedelta(hours=24)
"""How long an Idempotency-Key names its first run (DESIGN §2)."""

_MIGRATION_LOCK = 0x6E657875  # "nexu": one advisory lock id for every migrating process
MAX_TAG_RESULTS = 1000
"""The most runs the results-by-tag route answers with: the newest of them."""
MIGRATION_LOCK_WAIT = 120.0
"""Seconds a migration waits for its locks before start-up fails (see apply_migrations)."""
TABLE_LOCK_WAIT = 5.0
"""Seconds a schema change waits for its table at a time (see apply_migrations)."""
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
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

if TYPE_CHECKING:
    Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    Connection = PoolConnectionProxy


# -- migrations ----------------------------------------------------------------------------


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package, in order."""
    found = []
    for entry in importlib.resources.files("nexus.core").joinpath("sql").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, found {versions}")
    return found


async def apply_migrations(
    dsn: str, lock_wait: float = MIGRATION_LOCK_WAIT, table_wait: float = TABLE_LOCK_WAIT
) -> int:
    """Bring the schema at ``dsn`` up to date; return its version. Safe to run concurrently.

    Every wait for a lock is bounded. The migration lock (another process migrating) is
    waited for up to ``lock_wait`` seconds. A table a schema change needs is waited for
    only ``table_wait`` seconds at a time, since every query on that table queues behind
    the waiting change: the attempt is then given up (queries flow again) and made anew,
    until ``lock_wait`` has passed. Then :class:`StoreUnavailable` says why, and start-up
    fails instead of hanging. The statements themselves are not limited: building an
    index on a large table takes long.
    """
    deadline = time.monotonic() + lock_wait
    try:
        conn = await asyncpg.connect(dsn)
    except _CONNECTION_ERRORS as exc:
        raise StoreUnavailable(f"cannot connect to the checkpoint store: {exc}") from exc
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await _migrate(conn, max(remaining, 0.001), table_wait)
            except asyncpg.LockNotAvailableError as exc:
                if time.monotonic() + table_wait >= deadline:
                    raise StoreUnavailable(
                        f"the schema could not be locked for migration within {lock_wait:g} s"
                        f" (another process migrating, or a long transaction on its tables):"
                        f" {exc}"
                    ) from exc
                await asyncio.sleep(min(1.0, table_wait))
    finally:
        await conn.close()


async def _migrate(conn: asyncpg.Connection, lock_wait: float, table_wait: float) -> int:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_wait * 1000))}")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(f"SET LOCAL lock_timeout = {max(1, int(table_wait * 1000))}")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        version = max(applied, default=0)
        for version, name, sql in migrations():
            if version in applied:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            log.info("applied migration", extra={"migration": name})
        return version


SCHEMA_POLL = 1.0
"""Seconds between looks at the schema version while waiting for a migration Job."""


async def prepare_schema(settings: PostgresSettings, poll: float = SCHEMA_POLL) -> int:
    """The schema at the version this code needs, before a service uses the store.

    Applies pending migrations, or, with ``migrate_at_start`` off, waits for another
    process (``nexus migrate``) to apply them. Returns the schema version."""
    if settings.migrate_at_start:
        return await apply_migrations(settings.dsn)
    return await wait_for_schema(settings.dsn, settings.schema_wait, poll)


async def wait_for_schema(dsn: str, wait: float, poll: float = SCHEMA_POLL) -> int:
    """Wait until the schema at ``dsn`` is at least the newest version shipped here; return it.

    Reads ``schema_migrations`` only, so a user without DDL rights can wait. An unreachable
    store is waited for like a schema that is behind. After ``wait`` seconds,
    :class:`StoreUnavailable` says what was last seen."""
    needed = len(migrations())
    deadline = time.monotonic() + wait
    logged = False
    while True:
        try:
            version = await _schema_version(dsn, max(0.1, min(poll * 5, wait)))
        except _CONNECTION_ERRORS as exc:
            seen = f"the checkpoint store cannot be reached: {exc}"
        else:
            if version >= needed:
                return version
            seen = f"the schema is at version {version}, this code needs {needed}"
        if not logged:
            log.info("waiting for the schema migration", extra={"reason": seen, "wait": wait})
            logged = True
        if time.monotonic() + poll > deadline:
            raise StoreUnavailable(
                f"the schema did not reach version {needed} within {wait:g} s ({seen});"
                " has `nexus migrate` run?"
            )
        await asyncio.sleep(poll)


async def _schema_version(dsn: str, timeout: float) -> int:
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return 0
        return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
    finally:
        await conn.close()


# -- the store -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """Outcome of an insert: the run's id and algorithm, and whether this call created it.

    An idempotency key names one run per caller, whatever its algorithm: a repeat for
    another algorithm finds the first run, whose ``algorithm`` then differs."""

    id: UUID
    created: bool
    algorithm: str


def _result(row: asyncpg.Record) -> RunResult:
    return RunResult(
        algorithm=row["algorithm"],
        id=row["id"],
        stage=Stage(row["lifecycle_stage"]),
        result_uri=row["result_uri"],
        failure_cause=row["algorithm_failure_cause"],
        failure_details=row["algorithm_failure_details"],
    )


def _checkpoint(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(
        algorithm=row["algorithm"],
        id=row["id"],
        stage=Stage(row["lifecycle_stage"]),
        caller=row["caller"],
        received_by_host=row["received_by_host"],
        received_at=row["received_at"],
        last_modified=row["last_modified"],
        applied_configuration=row["applied_configuration"],
        payload_valid_for=row["payload_valid_for"],
        payload_uri=row["payload_uri"],
        has_inline_payload=row["has_inline"],
        result_uri=row["result_uri"],
        failure_cause=row["algorithm_failure_cause"],
        failure_details=row["algorithm_failure_details"],
        sent_at=row["sent_at"],
        configuration_overrides=row["configuration_overrides"],
        content_hash=row["content_hash"],
        tag=row["tag"],
        api_version=row["api_version"],
        job_uid=row["job_uid"],
        parent=row["parent"],
        shard=row["shard"],
        attempts=row["attempts"],
        idempotency_key=row["idempotency_key"],
    )


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
        self._inserts: GroupCommitter[NewRun, Admission] = GroupCommitter(
            "checkpoint-insert", self._write_inserts, **options
        )
        self._transitions: GroupCommitter[Transition, bool] = GroupCommitter(
            "checkpoint-transition",
            self._write_transitions,
            **{**options, "max_delay": settings.transition_max_delay},
        )

    @classmethod
    async def open(cls, settings: PostgresSettings) -> CheckpointStore:
        """Connect a pool to the store (the schema must be migrated already)."""
        try:
            pool = await asyncpg.create_pool(
                settings.dsn,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                command_timeout=settings.command_timeout,
                init=_init_connection,
                reset=_keep_session,
                server_settings=PLAN_SETTINGS,
            )
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"cannot connect to the checkpoint store: {exc}") from exc
        return cls(pool, settings)

    async def close(self) -> None:
        """Write what is waiting, then close every connection."""
        await self._inserts.close()
        await self._transitions.close()
        await self._pool.close()

    @property
    def pending_writes(self) -> int:
        return self._inserts.pending + self._transitions.pending

    # -- writes --------------------------------------------------------------------------

    async def insert(self, run: NewRun) -> Admission:
        """Record a new run; with an idempotency key already used, return the first run."""
        return await self._inserts.submit(run)

    async def transition(self, change: Transition) -> bool:
        """Apply ``change`` if the run's current stage allows it; return whether it did."""
        return await self._transitions.submit(change)

    async def _write_inserts(self, runs: Sequence[NewRun]) -> Sequence[Admission | Exception]:
        try:
            return await self._insert_batch(runs)
        except _DATA_ERRORS as exc:
            if len(runs) == 1:
                return [CheckpointRejected(f"the run cannot be stored: {exc}")]
        return await _each_alone(self._write_inserts, runs)  # one bad run fails alone

    async def _insert_batch(self, runs: Sequence[NewRun]) -> list[Admission | Exception]:
        columns: list[list[Any]] = [[] for _ in range(15)]
        for run in runs:
            for column, value in zip(columns, _insert_row(run), strict=True):
                column.append(value)
        async with self._connection() as conn:  # one statement: atomic on its own
            inserted = {row["id"] for row in await conn.fetch(sql.INSERT, *columns)}
            results: list[Admission | Exception] = [
                Admission(run.id, True, run.algorithm) for run in runs
            ]
            losers = [i for i, run in enumerate(runs) if run.id not in inserted]
            if losers:
                try:
                    await self._resolve_conflicts(conn, runs, losers, results)
                except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
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
                await conn.fetch(sql.INSERT, *([value] for value in _insert_row(runs[i])))
            rows = await conn.fetch(sql.IDEMPOTENT_MATCHES, callers, keys, IDEMPOTENCY_WINDOW)
        first = {(row["caller"], row["idempotency_key"]): row for row in rows}
        for i in keyed:
            run = runs[i]
            owner = first.get((run.caller, run.idempotency_key))
            if owner is None:  # the first run was deleted in between: nothing names the key
                # only this run fails: its neighbours are written, and must hear so
                results[i] = StoreUnavailable("idempotency key conflict unresolved; retry")
                continue
            results[i] = Admission(owner["id"], owner["id"] == run.id, owner["algorithm"])

    async def _write_transitions(self, changes: Sequence[Transition]) -> Sequence[bool | Exception]:
        try:
            return await self._transition_waiting_for_held(changes)
        except (*_DATA_ERRORS, asyncpg.CheckViolationError) as exc:
            if len(changes) == 1:
                return [CheckpointRejected(f"the change cannot be stored: {exc}")]
        return await _each_alone(self._write_transitions, changes)  # one bad change fails alone

    async def _transition_waiting_for_held(self, changes: Sequence[Transition]) -> list[bool]:
        """Apply a group-committed batch, waiting for runs another transaction holds (the
        request paths must get an answer; :meth:`transition_skipping_held` is the other
        way); for each change, whether it applied."""
        # An UPDATE … FROM touches a row once even if it is listed twice, so a run named
        # twice in one batch has its later changes applied in a following statement.
        rounds: list[list[int]] = []
        seen: dict[RunKey, int] = {}
        for index, change in enumerate(changes):
            depth = seen.get(change.key, 0)
            seen[change.key] = depth + 1
            if depth == len(rounds):
                rounds.append([])
            rounds[depth].append(index)
        for indices in rounds:
            indices.sort(key=lambda i: (changes[i].algorithm, changes[i].id))
        columns = [_transition_columns([changes[i] for i in indices]) for indices in rounds]
        async with self._connection() as conn:
            answers = await self._update(conn, columns)
        applied: list[bool] = [False] * len(changes)
        for indices, rows in zip(rounds, answers, strict=True):
            done = {(row["algorithm"], row["id"]) for row in rows}
            for i in indices:
                applied[i] = (changes[i].algorithm, changes[i].id) in done
        return applied

    async def _update(
        self, conn: Connection, rounds: list[list[list[Any]]]
    ) -> list[list[asyncpg.Record]]:
        """The rows each round's UPDATE changed. Several rounds are one transaction: if a
        later one fails, none is kept, and the batch can be retried change by change."""
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                if len(rounds) == 1:  # one statement is atomic on its own
                    return [await conn.fetch(sql.TRANSITION, *rounds[0])]
                async with conn.transaction():
                    return [await conn.fetch(sql.TRANSITION, *columns) for columns in rounds]
            except asyncpg.DeadlockDetectedError as exc:
                # Sorted batches do not deadlock each other; another writer may still.
                # What failed was rolled back as a whole, so trying again is safe.
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise StoreUnavailable(f"transitions kept deadlocking: {exc}") from exc
        raise AssertionError("unreachable")

    # -- reads ---------------------------------------------------------------------------

    async def get(self, algorithm: str, run_id: UUID) -> Checkpoint | None:
        """The run's checkpoint, or ``None`` when there is none."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {sql.COLUMNS} FROM runs WHERE algorithm = $1 AND id = $2",
                algorithm,
                run_id,
            )
        return None if row is None else _checkpoint(row)

    async def get_many(self, keys: Iterable[RunKey]) -> dict[RunKey, Checkpoint]:
        """Checkpoints of ``keys`` in one round trip; missing runs are absent from the result."""
        keys = list(keys)
        if not keys:
            return {}
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {sql.COLUMNS} FROM runs r JOIN unnest($1::text[], $2::uuid[]) AS k(a, i)"
                " ON r.algorithm = k.a AND r.id = k.i",
                [k.algorithm for k in keys],
                [k.id for k in keys],
            )
        found = (_checkpoint(row) for row in rows)
        return {c.key: c for c in found}

    async def result(self, algorithm: str, run_id: UUID) -> RunResult | None:
        """How the run stands, without reading its whole checkpoint."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {sql.RESULT_COLUMNS} FROM runs WHERE algorithm = $1 AND id = $2",
                algorithm,
                run_id,
            )
        return None if row is None else _result(row)

    async def results_by_tag(
        self, algorithm: str, tag: str, limit: int = MAX_TAG_RESULTS
    ) -> list[RunResult]:
        """How the runs of ``algorithm`` carrying ``tag`` stand, newest first, at most
        ``limit`` of them (an answer is built in memory: a tag is not a listing API)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {sql.RESULT_COLUMNS} FROM runs WHERE algorithm = $1 AND tag = $2"
                " ORDER BY received_at DESC LIMIT $3",
                algorithm,
                tag,
                limit,
            )
        return [_result(row) for row in rows]

    async def inline_payload(self, algorithm: str, run_id: UUID) -> bytes | None:
        """The input kept with the checkpoint, or ``None``."""
        async with self._connection() as conn:
            value = await conn.fetchval(
                "SELECT payload_inline FROM runs WHERE algorithm = $1 AND id = $2",
                algorithm,
                run_id,
            )
        return None if value is None else bytes(value)

    # -- plumbing ------------------------------------------------------------------------

    def _connection(self) -> _Connection:
        return _Connection(self._pool)

    # -- maintenance (the maintainer's sweeps) -------------------------------------------

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
        async with self._connection() as conn:
            for indices in rounds:
                for start in range(0, len(indices), self._batch_max):
                    chunk = indices[start : start + self._batch_max]
                    taken = dict(await _skip_locked(conn, [changes[i] for i in chunk]))
                    for i in chunk:  # applied; held (or not holdable); or refused
                        key = changes[i].key
                        results[i] = (taken[key] or None) if key in taken else False
        return results

    async def sweep_page(
        self, stage: Stage, older_than: timedelta, after: SweepCursor | None, limit: int
    ) -> list[SweepRow]:
        """Runs in unfinished ``stage`` not modified for ``older_than`` (by the database's
        clock), oldest first, after the keyset cursor ``after``; at most ``limit``."""
        if stage.terminal:
            raise ValueError(f"sweeps look at unfinished runs, not {stage}")
        cursor = after or SweepCursor.START
        async with self._connection() as conn:
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

    async def expired_runs(self, older_than: timedelta, limit: int) -> list[ExpiredRun]:
        """Finished runs received more than ``older_than`` ago, at most ``limit``."""
        async with self._connection() as conn:
            rows = await conn.fetch(sql.EXPIRED_RUNS, older_than, limit)
        return [
            ExpiredRun(r["algorithm"], r["id"], r["payload_uri"], r["result_uri"]) for r in rows
        ]

    async def delete_finished(self, keys: Sequence[RunKey]) -> int:
        """Delete the checkpoints of ``keys`` that are finished; how many were deleted."""
        if not keys:
            return 0
        async with self._connection() as conn:
            rows = await conn.fetch(
                sql.DELETE_FINISHED, [k.algorithm for k in keys], [k.id for k in keys]
            )
        return len(rows)

    async def clear_idempotency_keys(self, older_than: timedelta, limit: int) -> int:
        """Forget the idempotency keys of up to ``limit`` runs received more than
        ``older_than`` ago; how many were cleared."""
        async with self._connection() as conn:
            rows = await conn.fetch(sql.CLEAR_KEYS, older_than, limit)
        return len(rows)


def _insert_row(run: NewRun) -> tuple[Any, ...]:
    """The values of ``run`` in the column order of ``sql.INSERT``."""
    return (
        run.algorithm, run.id, run.stage.value, run.caller, run.received_by_host,
        run.applied_configuration, run.configuration_overrides, run.payload_valid_for,
        run.payload_uri, run.payload_inline, run.content_hash, run.tag, run.api_version,
        run.parent, run.idempotency_key,
    )  # fmt: skip


async def _skip_locked(conn: Connection, batch: Sequence[Transition]) -> list[tuple[RunKey, bool]]:
    """The runs :data:`sql.TRANSITION_SKIP_LOCKED` could take for ``batch``, and whether
    each change applied. A change the store cannot hold is answered as not applied (as
    for a run held: nothing is known of its stage); its neighbours are still written."""
    try:
        rows = await conn.fetch(sql.TRANSITION_SKIP_LOCKED, *_transition_columns(batch))
    except _DATA_ERRORS as exc:
        if len(batch) == 1:
            change = batch[0]
            log.error(
                "the store cannot hold this change: %s", exc, extra={"requestId": str(change.id)}
            )
            return [(change.key, False)]
        return [row for change in batch for row in await _skip_locked(conn, [change])]
    return [(RunKey(r["algorithm"], r["id"]), r["applied"]) for r in rows]


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


def _transition_columns(batch: Sequence[Transition]) -> list[list[Any]]:
    return [
        [c.algorithm for c in batch],
        [c.id for c in batch],
        [c.to.value for c in batch],
        [c.expect.value if c.expect else None for c in batch],
        [c.result_uri for c in batch],
        [_text(c.cause) for c in batch],
        [_text(c.details) for c in batch],
        [c.job_uid for c in batch],
        [c.shard for c in batch],
        [c.sent_at for c in batch],
        [c.attempts for c in batch],
    ]


class _Connection:
    """``async with`` a pooled connection. No connection to be had is StoreNotReached;
    connection-level failures while it is used become StoreUnavailable."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        try:
            conn = await self._pool.acquire()
        except _CONNECTION_ERRORS as exc:
            raise StoreNotReached(f"checkpoint store unavailable: {exc}") from exc
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        assert self._conn is not None
        await self._pool.release(self._conn)
        if isinstance(exc, _CONNECTION_ERRORS):
            raise StoreUnavailable(f"checkpoint store unavailable: {exc}") from exc


# -- maintenance -------------------------------------------------------------------------


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

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)

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


def _sweep_row(row: asyncpg.Record) -> SweepRow:
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
    )
