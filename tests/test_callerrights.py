"""The rights of callers known by their JWTs, kept in PostgreSQL for their runs'
credentials: the most recently issued JWT's win whichever pod writes last, each pod writes a
JWT's rights once, reads are cached for their time, and a name the store cannot hold is not
stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from nexus.core import callerrights
from nexus.core.callerrights import NONE, CallerRights, Rights
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings

ISSUED = 1_800_000_000.0
"""A JWT's issue time (Unix seconds); later JWTs are issued a few seconds after it."""


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=4))
    yield store
    await store.close()


async def test_the_latest_rights_written_by_any_pod_are_read(store: CheckpointStore) -> None:
    one, other = CallerRights(store, ttl=0), CallerRights(store, ttl=0)
    assert await one.of("jwt-caller") == NONE
    await one.remember("jwt-caller", Rights(frozenset({"a", "b"}), 2.0), ISSUED)
    assert await other.of("jwt-caller") == Rights(frozenset({"a", "b"}), 2.0)
    await other.remember("jwt-caller", Rights(frozenset({"a"})), ISSUED + 60)  # a newer JWT
    assert await one.of("jwt-caller") == Rights(frozenset({"a"}))
    assert await one.of("someone-else") == NONE


async def test_the_most_recently_issued_jwt_wins_whichever_pod_writes_last(
    store: CheckpointStore,
) -> None:
    """Pod A stores the narrower rights of a new JWT, pod B then those of an older JWT
    still valid: the new JWT's stay, and A, serving the new JWT again, has nothing to fix."""
    a, b, reader = CallerRights(store), CallerRights(store), CallerRights(store, ttl=0)
    narrow, wide = Rights(frozenset({"a"})), Rights(frozenset({"a", "b"}))
    await a.remember("caller", narrow, ISSUED + 60)
    await b.remember("caller", wide, ISSUED)
    assert await reader.of("caller") == narrow
    await a.remember("caller", narrow, ISSUED + 60)
    await b.remember("caller", wide, ISSUED)  # seen again later: still older
    assert await reader.of("caller") == narrow
    # B serves the new JWT, then the old one once more: the new one's rights stay
    await b.remember("caller", narrow, ISSUED + 60)
    await b.remember("caller", wide, ISSUED)
    assert await reader.of("caller") == narrow


async def test_a_newer_jwt_with_the_same_rights_moves_the_stored_issue_time_on(
    store: CheckpointStore,
) -> None:
    """A caller's JWTs are renewed with the same rights: each newer one is written once, so
    a JWT older than the newest, yet newer than the first, cannot bring wider rights back."""
    a, b, reader = CallerRights(store), CallerRights(store), CallerRights(store, ttl=0)
    narrow, wide = Rights(frozenset({"a"})), Rights(frozenset({"a", "b"}))
    await a.remember("caller", narrow, ISSUED)
    for renewed in (ISSUED + 60, ISSUED + 120):
        await a.remember("caller", narrow, renewed)
    async with store.connection() as conn:
        issued = await conn.fetchval("SELECT extract(epoch FROM issued) FROM caller_rights WHERE caller = 'caller'")  # fmt: skip
    assert float(issued) == ISSUED + 120
    await b.remember("caller", wide, ISSUED + 90)
    assert await reader.of("caller") == narrow
    # same issue time, other rights: the last written wins (nothing orders them)
    await b.remember("caller", wide, ISSUED + 120)
    assert await reader.of("caller") == wide


async def test_a_row_written_before_issue_times_were_kept_gives_way_to_any_jwt(
    store: CheckpointStore,
) -> None:
    async with store.connection() as conn:
        await conn.execute(
            "INSERT INTO caller_rights (caller, algorithms) VALUES ('legacy', '{a,b}')"
        )
    await CallerRights(store).remember("legacy", Rights(frozenset({"a"})), 0.0)
    assert await CallerRights(store, ttl=0).of("legacy") == Rights(frozenset({"a"}))


async def test_a_pod_writes_a_change_once_and_reads_within_the_ttl_from_memory(
    store: CheckpointStore,
) -> None:
    rights = CallerRights(store, ttl=3600)
    for _ in range(3):
        await rights.remember("steady", Rights(frozenset({"a"})), ISSUED)
    async with store.connection() as conn:
        stamp = await conn.fetchval("SELECT updated_at FROM caller_rights WHERE caller = 'steady'")
    await rights.remember("steady", Rights(frozenset({"a"})), ISSUED)
    async with store.connection() as conn:
        assert await conn.fetchval("SELECT updated_at FROM caller_rights WHERE caller = 'steady'") == stamp  # fmt: skip
        assert await rights.of("steady") == Rights(frozenset({"a"}))
        await conn.execute("UPDATE caller_rights SET algorithms = '{}' WHERE caller = 'steady'")
    assert await rights.of("steady") == Rights(frozenset({"a"}))  # cached for its ttl
    assert await CallerRights(store, ttl=0).of("steady") == Rights(frozenset())


async def test_a_name_the_store_cannot_hold_is_not_stored(store: CheckpointStore) -> None:
    rights = CallerRights(store, ttl=0)
    await rights.remember("a\0b", Rights(frozenset({"a"})), ISSUED)
    await rights.remember("fine", Rights(frozenset({"a\0"})), ISSUED)
    await rights.remember("\ud800", Rights(frozenset({"a"})), ISSUED)
    assert await rights.of("a\0b") == NONE and await rights.of("fine") == NONE
    assert await rights.of("\ud800") == NONE


async def test_a_pod_remembers_a_bounded_number_of_callers(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callerrights, "REMEMBERED", 2)
    rights = CallerRights(store, ttl=3600)
    for caller in ("first", "second", "third"):
        await rights.remember(caller, Rights(frozenset({"a"})), ISSUED)
        assert await rights.of(caller) == Rights(frozenset({"a"}))
    assert set(rights._written) == set(rights._read) == {"second", "third"}
    assert await rights.of("first") == Rights(frozenset({"a"}))  # read again from the store
