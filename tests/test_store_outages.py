"""A checkpoint store that goes away and comes back, as the receiver lives it.

The receiver answers completions 503 with ``Retry-After`` while PostgreSQL is down (the
containers try again), never a reset or a 500; its pool recovers by itself when the
server is back; and the log says once that the store is down and once that it is back,
with no traceback, however many requests were refused meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from support.system import SIGNING_KEY, free_port

from nexus.core.config import HttpSettings, LogSettings, PostgresSettings, SigningSettings
from nexus.core.signing import Signer
from nexus_dev.servers.databases import LocalPostgres
from receiver.app import create_app
from receiver.settings import ReceiverSettings


@pytest_asyncio.fixture
async def receiver(private_postgres: LocalPostgres) -> AsyncIterator[str]:
    port = free_port()
    settings = ReceiverSettings(
        http=HttpSettings(host="127.0.0.1", port=port, drain_delay=0, shutdown_timeout=5),
        log=LogSettings(format="text"),
        postgres=PostgresSettings(
            dsn=private_postgres.info.dsn, pool_min_size=1, pool_max_size=4, connect_timeout=2
        ),
        signing=SigningSettings(keys=(SIGNING_KEY,)),
    )
    runner = web.AppRunner(await create_app(settings), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def complete(session: aiohttp.ClientSession, base: str) -> tuple[int, str | None, str]:
    """A completion of a run that does not exist: 404 while the store answers."""
    run = str(uuid.uuid4())
    token = Signer([SIGNING_KEY]).run_token("echo", run)
    async with session.post(
        f"{base}/algorithm/v1.2/complete/echo/requests/{run}",
        json={"cause": None, "message": None, "sasUri": None},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body = await response.json()
        return response.status, response.headers.get("Retry-After"), body["error"]


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
