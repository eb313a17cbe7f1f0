"""A checkpoint store that goes away and comes back, as the receiver lives it.

The receiver answers completions 503 with ``Retry-After`` while PostgreSQL is down (the
containers try again), never a reset or a 500; its pool recovers by itself when the
server is back; and the log says once that the store is down and once that it is back,
with no traceback, however many requests were refused meanwhile. A server that answers
but cannot do the work now (a standby during a fail-over, a recovery) counts as down too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web
from support.system import SIGNING_KEY, free_port

from nexus.core.checkpoints import CheckpointStore, not_ready
from nexus.core.config import HttpSettings, LogSettings, PostgresSettings, SigningSettings
from nexus.core.lifecycle import listen
from nexus.core.runs import NewRun, Stage, Transition
from nexus.core.signing import Signer
from nexus_dev.servers.databases import LocalPostgres
from receiver.app import create_app
from receiver.settings import ReceiverSettings


@contextlib.asynccontextmanager
async def serving(dsn: str) -> AsyncIterator[str]:
    """A receiver on the store at ``dsn``; its base URL."""
    port = free_port()
    settings = ReceiverSettings(
        http=HttpSettings(host="127.0.0.1", port=port, drain_delay=0, shutdown_timeout=5),
        log=LogSettings(format="text"),
        postgres=PostgresSettings(dsn=dsn, pool_min_size=1, pool_max_size=4, connect_timeout=2),
        signing=SigningSettings(keys=(SIGNING_KEY,)),
    )
    runner = web.AppRunner(await create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    listener = await listen(runner, settings.http)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await listener.close()
        await runner.cleanup()


@pytest_asyncio.fixture
async def receiver(private_postgres: LocalPostgres) -> AsyncIterator[str]:
    async with serving(private_postgres.info.dsn) as base:
        yield base


async def complete(
    session: aiohttp.ClientSession, base: str, run: str | None = None
) -> tuple[int, str | None, str]:
    """A completion of ``run`` (default: a run that does not exist, 404 while the store
    answers); its status, ``Retry-After`` and error code (``""`` on success)."""
    run = run or str(uuid.uuid4())
    token = Signer([SIGNING_KEY]).run_token("echo", run)
    async with session.post(
        f"{base}/algorithm/v1.2/complete/echo/requests/{run}",
        json={"cause": None, "message": None, "sasUri": None},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body = await response.json()
        return response.status, response.headers.get("Retry-After"), body.get("error", "")


@pytest.mark.slow
async def test_a_store_down_is_answered_503_and_said_once_and_its_return_once(
    receiver: str, private_postgres: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        assert (await complete(session, receiver))[0] == 404
        await asyncio.to_thread(private_postgres.kill)
        answers = [await complete(session, receiver) for _ in range(12)]
        assert {(status, error) for status, _, error in answers} == {(503, "unavailable")}
        assert all(after is not None and float(after) > 0 for _, after, _ in answers)
        await asyncio.to_thread(private_postgres.restart)
        for _ in range(100):  # the pool makes new connections by itself
            status, _, _ = await complete(session, receiver)
            if status == 404:
                break
            assert status == 503
            await asyncio.sleep(0.1)
        assert status == 404
        assert (await complete(session, receiver))[0] == 404
    store = [r for r in caplog.records if r.levelno >= logging.INFO]
    said = [r.getMessage() for r in store]
    assert len([m for m in said if m.startswith("the checkpoint store is unavailable")]) == 1
    assert len([m for m in said if m.startswith("the checkpoint store is back")]) == 1
    assert [r for r in store if r.exc_info] == []
    assert all(r.levelno < logging.ERROR for r in store), said


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (asyncpg.ReadOnlySQLTransactionError("cannot execute UPDATE in a read-only transaction"), True),
        (asyncpg.ObjectNotInPrerequisiteStateError("recovery is in progress"), True),
        (asyncpg.LockNotAvailableError("canceling statement due to lock timeout"), True),
        (asyncpg.ObjectInUseError("database is being accessed by other users"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.UnsafeNewEnumValueUsageError("unsafe use of new value"), False),
        (asyncpg.CantChangeRuntimeParamError("cannot be changed now"), False),
        (asyncpg.UndefinedTableError("relation does not exist"), False),
        (asyncpg.DeadlockDetectedError("deadlock detected"), False),
    ],
    ids=lambda v: v.sqlstate if isinstance(v, asyncpg.PostgresError) else str(v),
)  # fmt: skip
def test_a_server_not_ready_for_the_work_counts_as_unavailable_a_wrong_statement_does_not(
    error: asyncpg.PostgresError, unavailable: bool
) -> None:
    assert not_ready(error) is unavailable


@pytest.mark.slow
async def test_a_store_turned_read_only_is_answered_503_and_its_connections_made_anew(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fail-over as a client sees it: the server at the store's address turns into a
    standby (read-only, its connections cut), then a primary again. Completions meanwhile
    are answered 503 with ``Retry-After``, and once it is writable the next one lands:
    no connection made to the standby is kept."""
    caplog.set_level(logging.INFO)
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    run = NewRun(
        algorithm="echo", id=uuid.uuid4(), stage=Stage.BUFFERED, caller="tester",
        received_by_host="test", applied_configuration={}, payload_valid_for=timedelta(hours=1),
        payload_inline=b"{}",
    )  # fmt: skip
    try:
        await store.insert(run)
        assert await store.transition(Transition("echo", run.id, Stage.RUNNING))
    finally:
        await store.close()
    admin = await asyncpg.connect(postgres_dsn)
    database = await admin.fetchval("SELECT current_database()")
    cut = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    try:
        async with serving(postgres_dsn) as base, aiohttp.ClientSession() as session:
            await admin.execute(
                f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
            )
            await admin.execute(cut, database)
            await asyncio.sleep(0.2)  # the receiver's pool has seen its connections go
            answers = [await complete(session, base, str(run.id)) for _ in range(5)]
            assert {(status, error) for status, _, error in answers} == {(503, "unavailable")}
            assert all(after is not None and float(after) > 0 for _, after, _ in answers)
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            assert (await complete(session, base, str(run.id)))[:1] == (200,)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()
    said = [r.getMessage() for r in caplog.records if r.name.startswith("nexus")]
    down = [m for m in said if m.startswith("the checkpoint store is unavailable")]
    assert len(down) == 1 and "read-only transaction" in down[0], said
    assert len([m for m in said if m.startswith("the checkpoint store is back")]) == 1
