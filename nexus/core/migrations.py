"""The checkpoint store's schema: versioned SQL migrations, applied at start-up or waited for.

Migrations are the files ``nexus/core/sql/NNNN_*.sql``, numbered 1..n without gaps, each
recorded in ``schema_migrations`` once applied. Before a service uses the store,
:func:`prepare_schema` applies what is pending, or (``migrate_at_start`` off, where a
migration Job runs ``nexus migrate``) waits for the schema to reach the version the code
needs. Guarantees:

* **Each exactly once, in order, also concurrently.** All pending migrations are applied in
  one transaction under an advisory lock, so several pods starting at once apply each
  exactly once, and every one of them starts on the whole schema.
* **Bounded.** Every wait (for a lock, for a migration Job) has a deadline: start-up fails
  with :class:`StoreUnavailable`, saying what was last seen, instead of hanging.
* **No DDL rights needed to wait.** Waiting reads ``schema_migrations`` only.

Like :mod:`nexus.core.checkpoints`, it is the store's own: the only other module allowed
to talk to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import re
import time

import asyncpg

from nexus.core.checkpoints import CONNECTION_ERRORS
from nexus.core.config import PostgresSettings
from nexus.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

MIGRATION_LOCK_WAIT = 120.0
"""Seconds a migration waits for its locks before start-up fails (see apply_migrations)."""
TABLE_LOCK_WAIT = 5.0
"""Seconds a schema change waits for its table at a time (see apply_migrations)."""
_MIGRATION_LOCK = 0x6E657875  # "nexu": one advisory lock id for every migrating process
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


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
    except CONNECTION_ERRORS as exc:
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
        except CONNECTION_ERRORS as exc:
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
