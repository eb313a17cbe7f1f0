"""No wait without a deadline on the way to a store.

Object storage that accepts connections but does not answer (SeaweedFS while it starts,
a frozen host) once held submissions, and the maintainer's sweeps, for as long as its
clients' own timeouts allowed (three tries of 30 s); a checkpoint store whose pool is
busy made callers queue for a connection without end. Each now fails within its
configured timeout, as the store being unavailable (answered 503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from harness import S3Bucket

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, StorageSettings
from nexus.core.errors import StorageUnavailable, StoreNotReached
from nexus.core.storage import PayloadStore

TIMEOUT = 0.5
"""The stores' timeouts in these tests, in seconds."""
PATIENCE = 10.0
"""How long the test waits before it calls the store hung (a generous multiple)."""


@pytest_asyncio.fixture
async def silent_endpoint() -> AsyncIterator[str]:
    """A server that takes connections and never answers a byte."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_storage_that_never_answers_fails_within_its_timeout(
    silent_endpoint: str, s3: S3Bucket
) -> None:
    settings = StorageSettings(
        endpoint_url=silent_endpoint,
        region=s3.region,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        bucket=s3.bucket,
        request_timeout=TIMEOUT,
    )
    store = await PayloadStore.open(settings)
    try:
        async with asyncio.timeout(PATIENCE):
            with pytest.raises(StorageUnavailable):
                await store.put("inputs/x", b"{}")
            with pytest.raises(StorageUnavailable):
                await store.get("inputs/x")
            with pytest.raises(StorageUnavailable):
                await store.exists("results/x")
        assert store.outage.is_down
    finally:
        await store.close()


async def test_a_busy_checkpoint_pool_refuses_after_its_acquire_timeout(
    postgres_dsn: str,
) -> None:
    settings = PostgresSettings(
        dsn=postgres_dsn, pool_min_size=1, pool_max_size=2, acquire_timeout=TIMEOUT
    )
    store = await CheckpointStore.open(settings)
    try:
        async with store.connection(), store.connection():  # every connection taken
            async with asyncio.timeout(PATIENCE):
                with pytest.raises(StoreNotReached):
                    async with store.connection():
                        pass
        async with store.connection() as conn:  # given back: served again
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await store.close()
