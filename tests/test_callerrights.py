"""The rights of callers known by their JWTs, kept in PostgreSQL for their runs'
credentials: the latest written wins, each pod writes a change once, reads are cached for
their time, and a name the store cannot hold is not stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nexus.core import callerrights
from nexus.core.callerrights import NONE, CallerRights, Rights
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=4))
    yield store
    await store.close()


async def test_the_latest_rights_written_by_any_pod_are_read(store: CheckpointStore) -> None:
    one, other = CallerRights(store, ttl=0), CallerRights(store, ttl=0)
    assert await one.of("jwt-caller") == NONE
    await one.remember("jwt-caller", Rights(frozenset({"a", "b"}), 2.0))
    assert await other.of("jwt-caller") == Rights(frozenset({"a", "b"}), 2.0)
    await other.remember("jwt-caller", Rights(frozenset({"a"})))  # narrower, from a new JWT
    assert await one.of("jwt-caller") == Rights(frozenset({"a"}))
    assert await one.of("someone-else") == NONE


async def test_a_pod_writes_a_change_once_and_reads_within_the_ttl_from_memory(
    store: CheckpointStore,
) -> None:
    rights = CallerRights(store, ttl=3600)
    for _ in range(3):
        await rights.remember("steady", Rights(frozenset({"a"})))
    async with store.connection() as conn:
        stamp = await conn.fetchval("SELECT updated_at FROM caller_rights WHERE caller = 'steady'")
    await rights.remember("steady", Rights(frozenset({"a"})))
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT updated_at FROM caller_rights WHERE caller = 'steady'") == stamp  # fmt: skip
        assert await rights.of("steady") == Rights(frozenset({"a"}))
        await conn.execute("UPDATE caller_rights SET algorithms = '{}' WHERE caller = 'steady'")
    assert await rights.of("steady") == Rights(frozenset({"a"}))  # cached for its ttl
    assert await CallerRights(store, ttl=0).of("steady") == Rights(frozenset())


async def test_a_name_the_store_cannot_hold_is_not_stored(store: CheckpointStore) -> None:
    rights = CallerRights(store, ttl=0)
    await rights.remember("a\0b", Rights(frozenset({"a"})))
    await rights.remember("fine", Rights(frozenset({"a\0"})))
    await rights.remember("\ud800", Rights(frozenset({"a"})))
    assert await rights.of("a\0b") == NONE and await rights.of("fine") == NONE
    assert await rights.of("\ud800") == NONE


async def test_a_pod_remembers_a_bounded_number_of_callers(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callerrights, "REMEMBERED", 2)
    rights = CallerRights(store, ttl=3600)
    for caller in ("first", "second", "third"):
        await rights.remember(caller, Rights(frozenset({"a"})))
        assert await rights.of(caller) == Rights(frozenset({"a"}))
    assert set(rights._written) == set(rights._read) == {"second", "third"}
    assert await rights.of("first") == Rights(frozenset({"a"}))  # read again from the store
