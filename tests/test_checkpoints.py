"""The checkpoint store against a real PostgreSQL: migrations, the state machine enforced in
SQL under concurrent writers, group commit with read-your-writes, idempotency keys."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import product

import asyncpg
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from support.rawruns import insert_run_at
from support.system import SIGNING_KEY

from nexus.core import statements as sql
from nexus.core.checkpoints import (
    MAX_SHAPES,
    PLAN_SETTINGS,
    Admission,
    CheckpointStore,
    _insert_arguments,
)
from nexus.core.config import PostgresSettings, SigningSettings
from nexus.core.errors import CheckpointRejected, StoreNotReached, StoreUnavailable
from nexus.core.listings import Listings, TagPosition
from nexus.core.migrations import (
    _MIGRATION_LOCK,
    apply_migrations,
    migrations,
    prepare_schema,
    wait_for_schema,
)
from nexus.core.runs import ALLOWED, TERMINAL, Kept, NewRun, RunKey, Stage, Transition
from nexus.core.visibility import SYSTEM, Viewer
from receiver.app import create_app as create_receiver
from receiver.settings import ReceiverSettings


def new_run(
    algorithm: str = "echo",
    *,
    caller: str = "tester",
    key: str | None = None,
    tag: str | None = None,
    configuration: dict[str, object] | None = None,
    stage: Stage = Stage.BUFFERED,
) -> NewRun:
    return NewRun(
        algorithm=algorithm,
        id=uuid.uuid4(),
        stage=stage,
        caller=caller,
        received_by_host="test-host",
        applied_configuration=configuration or {"image": "echo:1"},
        payload_valid_for=timedelta(hours=24),
        payload_inline=b'{"x": 1}',
        idempotency_key=key,
        tag=tag,
    )


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=8))
    yield store
    await store.close()


def batch_stats(writer: str) -> tuple[float, float]:
    """(batches, rows) written so far by ``writer``, from its metrics."""
    count = REGISTRY.get_sample_value("nexus_group_commit_batch_size_count", {"writer": writer})
    total = REGISTRY.get_sample_value("nexus_group_commit_batch_size_sum", {"writer": writer})
    return count or 0.0, total or 0.0


# -- migrations ----------------------------------------------------------------------------


async def test_migrations_twice_are_a_no_op(postgres_dsn: str) -> None:
    latest = len(migrations())
    assert await apply_migrations(postgres_dsn) == latest
    assert await apply_migrations(postgres_dsn) == latest
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == list(range(1, latest + 1))


async def test_a_migration_waits_for_its_locks_only_so_long(empty_database_dsn: str) -> None:
    holder = await asyncpg.connect(empty_database_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)  # migrating
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="could not be locked for migration"):
            await apply_migrations(empty_database_dsn, lock_wait=0.5)
        assert time.monotonic() - started < 5
        await holder.execute("SELECT pg_advisory_unlock_all()")
        assert await apply_migrations(empty_database_dsn, lock_wait=0.5) == len(migrations())
        # a long transaction holds a table the migration needs: each attempt gives up
        # soon (so queries queued behind it flow again), and one after it ends goes through
        async with holder.transaction():
            await holder.execute("LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable, match="long transaction"):
                await apply_migrations(empty_database_dsn, lock_wait=0.6, table_wait=0.2)
            waiting = asyncio.create_task(
                apply_migrations(empty_database_dsn, lock_wait=10, table_wait=0.2)
            )
            await asyncio.sleep(1.0)
            assert not waiting.done()
        assert await waiting == len(migrations())
    finally:
        await holder.close()


async def test_concurrent_migrations_apply_each_version_once(empty_database_dsn: str) -> None:
    versions = await asyncio.gather(*(apply_migrations(empty_database_dsn) for _ in range(6)))
    assert set(versions) == {len(migrations())}
    conn = await asyncpg.connect(empty_database_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations")
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'runs'")
    finally:
        await conn.close()
    assert sorted(r["version"] for r in rows) == list(range(1, len(migrations()) + 1))
    assert tables == 1


async def test_with_migrating_off_a_service_waits_for_the_schema_and_changes_nothing(
    empty_database_dsn: str,
) -> None:
    settings = PostgresSettings(dsn=empty_database_dsn, migrate_at_start=False, schema_wait=0.3)
    with pytest.raises(StoreUnavailable, match=r"schema is at version 0.*nexus migrate"):
        await prepare_schema(settings, poll=0.05)
    conn = await asyncpg.connect(empty_database_dsn)
    try:  # it only looked: no table was made
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()
    # a migration (the Job) while it waits lets it start
    waiting = asyncio.create_task(prepare_schema(replace(settings, schema_wait=30), poll=0.05))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert await apply_migrations(empty_database_dsn) == len(migrations())
    assert await waiting == len(migrations())


async def test_a_service_told_not_to_migrate_does_not_start_on_an_old_schema(
    empty_database_dsn: str,
) -> None:
    postgres = PostgresSettings(dsn=empty_database_dsn, migrate_at_start=False, schema_wait=0.2)
    settings = ReceiverSettings(postgres=postgres, signing=SigningSettings(keys=(SIGNING_KEY,)))
    runner = web.AppRunner(await create_receiver(settings))
    try:
        with pytest.raises(StoreUnavailable, match="has `nexus migrate` run"):
            await runner.setup()
    finally:
        await runner.cleanup()


async def test_with_migrating_on_a_service_migrates(empty_database_dsn: str) -> None:
    settings = PostgresSettings(dsn=empty_database_dsn)
    assert settings.migrate_at_start
    assert await prepare_schema(settings) == len(migrations())
    assert await wait_for_schema(empty_database_dsn, 1) == len(migrations())


async def test_waiting_for_the_schema_outlasts_an_unreachable_store_only_so_long() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dsn = f"postgresql://nexus@127.0.0.1:{unused.getsockname()[1]}/nexus"
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            await wait_for_schema(dsn, 0.3, poll=0.05)


async def test_sql_transition_table_matches_the_model(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch("SELECT from_stage, to_stage FROM run_transitions")
        terminal = await conn.fetch("SELECT stage FROM run_stages WHERE terminal")
        stages = await conn.fetch("SELECT stage FROM run_stages")
        check = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'runs_lifecycle_stage_known'"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host,"
                " applied_configuration, payload_valid_for, api_version)"
                " VALUES ('echo', gen_random_uuid(), 'LOST', 'c', 'h', '{}', '1 hour', 'v1.2')"
            )
    finally:
        await conn.close()
    assert {(Stage(r["from_stage"]), Stage(r["to_stage"])) for r in rows} == ALLOWED
    assert {Stage(r["stage"]) for r in terminal} == TERMINAL
    assert {Stage(r["stage"]) for r in stages} == set(Stage)
    assert set(re.findall(r"'([A-Z_]+)'", check)) == {stage.value for stage in Stage}


async def test_the_guard_trigger_allows_exactly_the_moves_of_the_model(
    postgres_dsn: str,
) -> None:
    """The trigger lists the allowed moves itself (its function judges the moves its WHEN
    clause lets through); any writer, raw SQL too, is refused every other move, and
    allowed every listed one."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        refused: set[tuple[Stage, Stage, str]] = set()
        for before, after in product(Stage, Stage):
            run_id = uuid.uuid4()
            await insert_run_at(conn, run_id, before.value)
            try:  # a move to the same stage counts when the outcome changes
                await conn.execute(
                    "UPDATE runs SET lifecycle_stage = $2, result_uri = 'r' WHERE id = $1",
                    run_id,
                    after.value,
                )
            except asyncpg.CheckViolationError as exc:
                refused.add((before, after, str(exc)))
    finally:
        await conn.close()
    assert {(before, after) for before, after, _ in refused} == set(product(Stage, Stage)) - ALLOWED
    for before, after, message in refused:
        assert f"may not move from {before.value} to {after.value}" in message


async def test_the_guard_is_not_called_for_updates_that_move_nothing(postgres_dsn: str) -> None:
    """Keeping a Job's facts on a finished run changes no stage or outcome: the guard's
    WHEN clause lets it through without calling its function (a PL/pgSQL call per run);
    a change of the outcome of a finished run still calls it, and is refused."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        run_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host,"
            " applied_configuration, payload_valid_for, payload_inline, api_version)"
            " VALUES ('echo', $1, 'COMPLETED', 'c', 'h', '{}', '1 hour', '\\x7b7d', 'v1.2')",
            run_id,
        )
        calls = (
            "SELECT COALESCE(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname = 'runs_refuse_move'"
        )
        async with conn.transaction():
            await conn.execute("SET LOCAL track_functions = 'pl'")
            await conn.execute("UPDATE runs SET job_uid = 'u', shard = 's' WHERE id = $1", run_id)
            assert await conn.fetchval(calls) == 0
        with pytest.raises(asyncpg.CheckViolationError, match="may not move from COMPLETED"):
            await conn.execute("UPDATE runs SET result_uri = 'x' WHERE id = $1", run_id)
    finally:
        await conn.close()


async def test_a_runs_transitions_are_written_on_its_own_page(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    """Pages of runs are filled to 70 % (0017): the versions a run's transitions write
    stay on its page, where the write that keeps a Job's facts on a finished run is a HOT
    update (no index entry). Packed full, the first page of a batch had no room, and
    every change of its runs went to another page."""
    runs = [new_run(tag="t") for _ in range(60)]
    await store.insert_many(runs)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        pages = "SELECT id, (ctid::text::point)[0]::int AS page FROM runs WHERE id = ANY($1)"
        first = {r["id"]: r["page"] for r in await conn.fetch(pages, [r.id for r in runs])}
        assert max(first.values()) >= 1  # the batch fills more than one page
        moved = [r for r in runs if first[r.id] == 0][:2]
        await store.transition_many([Transition(r.algorithm, r.id, Stage.RUNNING) for r in moved])
        await store.transition_many(
            [Transition(r.algorithm, r.id, Stage.COMPLETED, result_uri="s3://b/r") for r in moved]
        )
        after = {r["id"]: r["page"] for r in await conn.fetch(pages, [r.id for r in moved])}
        options = await conn.fetch(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1)",
            ["runs", "runs_pkey", "runs_by_tag_order", "runs_unfinished_by_age"],
        )
    finally:
        await conn.close()
    assert after == {r.id: 0 for r in moved}
    assert {r["relname"]: r["reloptions"] for r in options} == {
        name: ["fillfactor=70"]
        for name in ("runs", "runs_pkey", "runs_by_tag_order", "runs_unfinished_by_age")
    }


async def test_the_triggers_name_their_stages_as_array_constants(postgres_dsn: str) -> None:
    """A trigger's WHEN clause is read back and prepared for every statement that updates
    runs: a list of stages is stored as an array of constant nodes, read and folded again
    each time; an array constant is one node (0018)."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        clauses = await conn.fetch(
            "SELECT tgname, tgqual FROM pg_trigger"
            " WHERE tgrelid = 'runs'::regclass AND NOT tgisinternal"
        )
    finally:
        await conn.close()
    assert {r["tgname"] for r in clauses} == {"runs_guard", "runs_announce_finished"}
    for clause in clauses:
        assert "SCALARARRAYOPEXPR" in clause["tgqual"]
        assert "ARRAYEXPR" not in clause["tgqual"].replace("SCALARARRAYOPEXPR", ""), clause


async def test_both_transition_writers_stamp_last_modified(store: CheckpointStore) -> None:
    run = new_run()
    await store.insert(run)
    stamps = []
    for apply in (
        lambda: store.transition(Transition(run.algorithm, run.id, Stage.RUNNING)),
        lambda: store.transition_skipping_held(
            [Transition(run.algorithm, run.id, Stage.COMPLETED)]
        ),
    ):
        before = await store.get(run.algorithm, run.id, SYSTEM)
        assert before is not None
        await asyncio.sleep(0.01)
        assert await apply() in (True, [True])
        after = await store.get(run.algorithm, run.id, SYSTEM)
        assert after is not None
        stamps.append(after.last_modified > before.last_modified)
    assert stamps == [True, True]


@pytest.mark.parametrize(
    "name",
    [
        "TRANSITION",
        "TRANSITION_KEEPING_JOBS",
        "TRANSITION_SKIP_LOCKED",
        "IDEMPOTENT_MATCHES",
        "DELETE_FINISHED",
    ],
)
async def test_statements_joining_keys_probe_runs_by_key_even_on_an_empty_table(
    postgres_dsn: str, name: str
) -> None:
    """Each statement is planned once per connection, often while the table is empty; the
    plan made then must still look runs up by key when the table holds millions."""
    statement = getattr(sql, name)
    parameters = max(int(n) for n in re.findall(r"\$(\d+)", statement))
    conn = await asyncpg.connect(postgres_dsn, server_settings=PLAN_SETTINGS)
    try:
        await conn.execute(f"PREPARE probe AS {statement}")
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({', '.join(['NULL'] * parameters)})")
    finally:
        await conn.close()
    plan = "\n".join(row[0] for row in rows)
    assert "Seq Scan on runs" not in plan and "Hash" not in plan, plan
    assert re.search(r"Index Scan using runs_\w+ on runs", plan), plan


# -- state machine -------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), list(product(Stage, Stage)))
async def test_every_transition_is_enforced_in_sql(
    store: CheckpointStore, source: Stage, target: Stage
) -> None:
    if source == Stage.NEW:
        run = new_run(stage=Stage.NEW)
        await store.insert(run)
    else:
        run = new_run()
        await store.insert(run)
        path = {
            Stage.BUFFERED: [],
            Stage.RUNNING: [Stage.RUNNING],
        }.get(source, [source])
        for step in path:
            assert await store.transition(Transition(run.algorithm, run.id, step))
    applied = await store.transition(Transition(run.algorithm, run.id, target, cause="x"))
    assert applied == ((source, target) in ALLOWED)
    stored = await store.get(run.algorithm, run.id, SYSTEM)
    assert stored is not None
    assert stored.stage == (target if applied else source)


async def test_changes_of_any_algorithm_names_apply_together(store: CheckpointStore) -> None:
    """A batch sends its algorithms and stages as one text each, joined: a name holding
    the usual separator (no Kubernetes name does) still names its own run alone."""
    names = ["echo", "a,b", "a", "b", "\x01,", "echo"]
    runs = [new_run(name) for name in names]
    for run in runs:
        assert (await store.insert(run)).created
    changes = [Transition(r.algorithm, r.id, Stage.COMPLETED, result_uri=f"s3://b/{r.id}")
               for r in runs]  # fmt: skip
    assert all(await asyncio.gather(*(store.transition(change) for change in changes)))
    assert await store.transition_skipping_held(
        [Transition(r.algorithm, r.id, Stage.CANCELLED) for r in runs]
    ) == [False] * len(runs)  # finished already
    for run in runs:
        result = await store.result(run.algorithm, run.id, SYSTEM)
        assert result is not None and result.stage == Stage.COMPLETED
        assert result.result_uri == f"s3://b/{run.id}"


async def test_terminal_run_cannot_be_moved_even_by_raw_sql(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    run = new_run()
    await store.insert(run)
    assert await store.transition(Transition(run.algorithm, run.id, Stage.COMPLETED))
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="may not move from COMPLETED"):
            await conn.execute("UPDATE runs SET lifecycle_stage = 'FAILED' WHERE id = $1", run.id)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE runs SET result_uri = 'forged' WHERE id = $1", run.id)
        # bookkeeping that does not touch the outcome stays possible
        await conn.execute("UPDATE runs SET idempotency_key = NULL WHERE id = $1", run.id)
    finally:
        await conn.close()


async def test_concurrent_writers_racing_on_one_run_leave_one_winner(
    postgres_dsn: str,
) -> None:
    settings = PostgresSettings(dsn=postgres_dsn, pool_max_size=4, transition_max_delay=0)
    stores = [await CheckpointStore.open(settings) for _ in range(4)]
    try:
        for _ in range(10):
            run = new_run()
            await stores[0].insert(run)
            targets = [Stage.COMPLETED, Stage.FAILED, Stage.CANCELLED, Stage.DEADLINE_EXCEEDED]
            changes = [
                Transition(run.algorithm, run.id, target, cause=f"writer-{i}")
                for i, target in enumerate(targets * 5)
            ]
            results = await asyncio.gather(
                *(stores[i % 4].transition(change) for i, change in enumerate(changes))
            )
            assert sum(results) == 1
            winner = changes[results.index(True)]
            stored = await stores[1].get(run.algorithm, run.id, SYSTEM)
            assert stored is not None
            assert stored.stage == winner.to
            assert stored.failure_cause == winner.cause
    finally:
        for s in stores:
            await s.close()


async def test_a_change_waiting_for_another_writer_is_judged_by_the_stage_it_left(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    """A cancel that waits for the lock of a dispatcher writing RUNNING must then apply
    (RUNNING may be cancelled too). PostgreSQL rechecks a waiting UPDATE against the new
    row, and, were the allowed-moves lookup a join, against the move it first matched
    (BUFFERED to CANCELLED): the cancel was dropped, and answered 409."""
    holder = await asyncpg.connect(postgres_dsn)
    try:
        run = new_run()
        await store.insert(run)
        async with holder.transaction():
            await holder.execute(
                "UPDATE runs SET lifecycle_stage = 'RUNNING' WHERE algorithm = $1 AND id = $2",
                run.algorithm,
                run.id,
            )
            cancel = asyncio.create_task(
                store.transition(Transition(run.algorithm, run.id, Stage.CANCELLED, cause="c"))
            )
            for _ in range(100):  # until the cancel waits for the row's lock
                waiting = await holder.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting and not cancel.done()
        assert await cancel
        stored = await store.get(run.algorithm, run.id, SYSTEM)
        assert stored is not None and stored.stage == Stage.CANCELLED
    finally:
        await holder.close()


async def test_a_run_named_twice_in_one_batch_gets_both_changes(store: CheckpointStore) -> None:
    run = new_run()
    await store.insert(run)
    running, done = await asyncio.gather(
        store.transition(Transition(run.algorithm, run.id, Stage.RUNNING, job_uid="uid-1")),
        store.transition(Transition(run.algorithm, run.id, Stage.COMPLETED, result_uri="r")),
    )
    assert (running, done) == (True, True)
    stored = await store.get(run.algorithm, run.id, SYSTEM)
    assert stored is not None
    assert (stored.stage, stored.job_uid, stored.result_uri) == (Stage.COMPLETED, "uid-1", "r")


async def test_a_bad_change_in_a_later_round_keeps_no_part_of_its_batch(
    store: CheckpointStore,
) -> None:
    """Runs named twice take two statements; when the second fails, the first must not stay
    written under the change-by-change retry (which would refuse a change already made, or
    count an attempt twice)."""
    x, y = new_run(), new_run()
    for run in (x, y):
        await store.insert(run)
    results = await asyncio.gather(
        store.transition(Transition(x.algorithm, x.id, Stage.COMPLETED, result_uri="r")),
        store.transition(Transition(y.algorithm, y.id, Stage.BUFFERED, attempts=1)),
        store.transition(Transition(x.algorithm, x.id, Stage.FAILED, attempts=2**31)),
        store.transition(Transition(y.algorithm, y.id, Stage.RUNNING, job_uid="u")),
        return_exceptions=True,
    )
    assert results[0] is True and results[1] is True and results[3] is True
    assert isinstance(results[2], CheckpointRejected)
    stored_x = await store.get(x.algorithm, x.id, SYSTEM)
    stored_y = await store.get(y.algorithm, y.id, SYSTEM)
    assert stored_x is not None and stored_y is not None
    assert (stored_x.stage, stored_x.result_uri) == (Stage.COMPLETED, "r")
    assert (stored_y.stage, stored_y.attempts, stored_y.job_uid) == (Stage.RUNNING, 1, "u")


async def test_free_text_with_nul_is_kept_and_a_change_the_store_cannot_hold_fails_alone(
    store: CheckpointStore,
) -> None:
    """A NUL in a failure's cause or details (a container's termination message, say)
    is stored as U+FFFD, by either writer; the maintainer's batch leaves out a change the
    store cannot hold and writes its neighbours."""
    a, b, c = new_run(), new_run(), new_run()
    for run in (a, b, c):
        await store.insert(run)
    nul = Transition(a.algorithm, a.id, Stage.FAILED, cause="Error\x00", details="out\x00put")
    assert await store.transition(nul)
    batch = [
        Transition(b.algorithm, b.id, Stage.FAILED, cause="x\x00", details="\x00"),
        Transition(c.algorithm, c.id, Stage.BUFFERED, attempts=2**31),  # beyond its column
    ]
    assert await store.transition_skipping_held(batch) == [True, None]  # the second: cannot be held
    stored = [await store.get(r.algorithm, r.id, SYSTEM) for r in (a, b, c)]
    assert [(s.stage, s.failure_cause, s.failure_details) for s in stored if s] == [
        (Stage.FAILED, "Error\ufffd", "out\ufffdput"),
        (Stage.FAILED, "x\ufffd", "\ufffd"),
        (Stage.BUFFERED, None, None),
    ]


async def test_expected_stage_narrows_a_transition(store: CheckpointStore) -> None:
    run = new_run()
    await store.insert(run)
    assert await store.transition(Transition(run.algorithm, run.id, Stage.RUNNING))
    # the watch marks RUNNING only what is still BUFFERED
    again = Transition(run.algorithm, run.id, Stage.RUNNING, expect=Stage.BUFFERED, attempts=1)
    assert not await store.transition(again)
    stored = await store.get(run.algorithm, run.id, SYSTEM)
    assert stored is not None
    assert stored.attempts == 0


async def test_a_refused_dispatch_keeps_its_jobs_facts_in_the_same_write(
    store: CheckpointStore,
) -> None:
    """A RUNNING write that keeps its Job's facts (the dispatcher's), refused because the
    run finished or failed meanwhile, leaves its stage, outcome and last_modified as they
    are, and fills in only the facts it lacks; in the same batch a run still waiting moves,
    a change without the flag and one of an attempt that is over keep nothing."""
    finished, failed, waiting, plain, late = (new_run() for _ in range(5))
    for run in (finished, failed, waiting, plain, late):
        await store.insert(run)
    done = Transition(finished.algorithm, finished.id, Stage.COMPLETED, result_uri="s3://b/r")
    assert await store.transition(done)
    known = Transition(failed.algorithm, failed.id, Stage.FAILED, cause="x", shard="known")
    assert await store.transition(known)
    for run in (plain, late):
        assert await store.transition(Transition(run.algorithm, run.id, Stage.CANCELLED))
    before = {r.id: await store.get(r.algorithm, r.id, SYSTEM) for r in (finished, failed)}
    sent = datetime.now(UTC)

    def dispatched(run: NewRun, keep: bool = True, attempt: int = 1) -> Transition:
        return Transition(run.algorithm, run.id, Stage.RUNNING, job_uid=f"uid-{run.id}",
                          shard="s1", sent_at=sent, at_attempt=attempt, keep_job=keep)  # fmt: skip

    changes = [dispatched(finished), dispatched(failed), dispatched(waiting),
               dispatched(plain, keep=False), dispatched(late, attempt=2)]  # fmt: skip
    assert await store.transition_many(changes) == [
        Kept(Stage.COMPLETED, 1),  # false: not applied, but kept, and where the run stands
        Kept(Stage.FAILED, 1),
        True,
        False,
        False,
    ]
    stored = {r.id: await store.get(r.algorithm, r.id, SYSTEM) for r in (finished, failed, waiting,
              plain, late)}  # fmt: skip
    facts = {
        i: (s.stage, s.job_uid, s.shard, s.sent_at is not None) for i, s in stored.items() if s
    }
    assert facts == {
        finished.id: (Stage.COMPLETED, f"uid-{finished.id}", "s1", True),
        failed.id: (Stage.FAILED, f"uid-{failed.id}", "known", True),  # what it knew stays
        waiting.id: (Stage.RUNNING, f"uid-{waiting.id}", "s1", True),
        plain.id: (Stage.CANCELLED, None, None, False),
        late.id: (Stage.CANCELLED, None, None, False),
    }
    for run_id, earlier in before.items():
        now = stored[run_id]
        assert earlier is not None and now is not None
        assert (now.last_modified, now.result_uri, now.failure_cause, now.attempts) == (
            earlier.last_modified,
            earlier.result_uri,
            earlier.failure_cause,
            earlier.attempts,
        )
    # a second refused write changes nothing more: the facts are there
    assert await store.transition_many([replace(dispatched(finished), job_uid="other")]) == [False]
    kept = await store.get(finished.algorithm, finished.id, SYSTEM)
    assert kept is not None and kept.job_uid == f"uid-{finished.id}"


async def test_a_background_batch_applies_refuses_or_skips_what_another_writer_holds(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    """The maintainer's writes: applied (True), refused by the stage (False), or skipped
    because another transaction holds the run (None), each in one statement."""
    fresh, finished, held = new_run(), new_run(), new_run()
    for run in (fresh, finished, held):
        await store.insert(run)
    assert await store.transition(Transition(finished.algorithm, finished.id, Stage.FAILED))
    changes = [
        Transition(r.algorithm, r.id, Stage.RUNNING, job_uid="u") for r in (fresh, finished, held)
    ]
    changes.append(Transition(fresh.algorithm, fresh.id, Stage.COMPLETED, result_uri="r"))
    other = await asyncpg.connect(postgres_dsn)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", held.id)
            assert await store.transition_skipping_held(changes) == [True, False, None, True]
        assert await store.transition_skipping_held(changes[2:3]) == [True]
    finally:
        await other.close()
    stored = [await store.get(r.algorithm, r.id, SYSTEM) for r in (fresh, finished, held)]
    assert [c.stage if c else None for c in stored] == [
        Stage.COMPLETED,
        Stage.FAILED,
        Stage.RUNNING,
    ]


# -- group commit --------------------------------------------------------------------------


async def test_group_commit_every_caller_sees_its_own_row(store: CheckpointStore) -> None:
    batches_before, rows_before = batch_stats("checkpoint-insert")

    async def submit_and_read(run: NewRun) -> bool:
        admission = await store.insert(run)
        stored = await store.get(run.algorithm, run.id, SYSTEM)  # read-your-writes
        return admission.created and stored is not None and stored.id == run.id

    runs = [new_run(configuration={"n": i}) for i in range(2000)]
    assert all(await asyncio.gather(*(submit_and_read(r) for r in runs)))
    batches_after, rows_after = batch_stats("checkpoint-insert")
    assert rows_after - rows_before == 2000
    assert batches_after - batches_before < 2000 / 5  # many runs per round trip
    found = await store.get_many(RunKey(r.algorithm, r.id) for r in runs)
    assert {k.id for k in found} == {r.id for r in runs}
    assert found[runs[7].key].applied_configuration == {"n": 7}


async def test_shared_reads_decode_each_applied_configuration_once(
    store: CheckpointStore,
) -> None:
    template = {"image": "echo:1", "env": {"MODE": "fast"}, "args": ["--a", "--b"]}
    plain = [new_run(configuration=template) for _ in range(3)]
    other = new_run(configuration={**template, "image": "echo:2"})
    await store.insert_many([*plain, other])
    keys = [r.key for r in [*plain, other]]
    found = await store.get_many(keys, shared=True)
    assert [found[k].applied_configuration for k in keys] == [template] * 3 + [
        other.applied_configuration
    ]
    first = found[plain[0].key].applied_configuration
    assert all(found[r.key].applied_configuration is first for r in plain)
    assert found[other.key].applied_configuration is not first
    again = await store.get_many(keys[:1], shared=True)  # a later read: the same object
    assert again[plain[0].key].applied_configuration is first
    alone = await store.get_many(keys)  # an ordinary read: each run its own
    assert alone[plain[0].key].applied_configuration == template
    assert (
        alone[plain[0].key].applied_configuration is not alone[plain[1].key].applied_configuration
    )
    assert alone == found  # every other field read alike


async def test_one_bad_run_does_not_fail_its_batch(store: CheckpointStore) -> None:
    good = [new_run() for _ in range(20)]
    bad = new_run(configuration={"text": "nul \u0000 inside"})
    results = await asyncio.gather(
        *(store.insert(r) for r in [*good[:10], bad, *good[10:]]), return_exceptions=True
    )
    assert isinstance(results[10], CheckpointRejected)
    assert all(
        not isinstance(r, BaseException) and r.created for i, r in enumerate(results) if i != 10
    )
    assert await store.get(bad.algorithm, bad.id, SYSTEM) is None


@pytest.mark.parametrize("tags", [3, MAX_SHAPES + 1], ids=["few-shapes", "many-shapes"])
async def test_a_batch_stores_each_runs_own_columns_whatever_it_shares(
    store: CheckpointStore, tags: int
) -> None:
    shared = {"image": "echo:1", "shard": "shard-0"}  # one object, as runs without overrides
    parent = {"requestId": str(uuid.uuid4()), "algorithmName": "echo"}
    runs = [
        replace(
            new_run(configuration=shared, tag=f"t{i % tags}", key=f"k{i}" if i % 4 == 0 else None),
            caller=f"caller-{i % 2}",
            parent={**parent} if i % 3 == 0 else None,
            configuration_overrides={"cpuLimit": "2"} if i % 5 == 0 else None,
            payload_inline=None if i % 6 == 0 else f'{{"i": {i}}}'.encode(),
            payload_uri=f"s3://bucket/inputs/{i}" if i % 6 == 0 else None,
            content_hash=f"hash-{i}",
            payload_valid_for=timedelta(hours=1 + i % 2),
        )
        for i in range(40)
    ]
    statement, _ = _insert_arguments(runs)
    assert statement == (sql.INSERT_SHAPED if tags <= MAX_SHAPES else sql.INSERT)
    admissions = await store.insert_many(runs)
    assert all(isinstance(a, Admission) and a.created for a in admissions)
    found = await store.get_many(r.key for r in runs)
    for i, run in enumerate(runs):
        stored = found[run.key]
        assert (stored.caller, stored.tag, stored.idempotency_key) == (
            run.caller, run.tag, run.idempotency_key
        ), i  # fmt: skip
        assert (stored.parent, stored.configuration_overrides) == (
            run.parent, run.configuration_overrides
        ), i  # fmt: skip
        assert (stored.payload_uri, stored.has_inline_payload, stored.content_hash) == (
            run.payload_uri, run.payload_inline is not None, run.content_hash
        ), i  # fmt: skip
        assert stored.payload_valid_for == run.payload_valid_for, i
        assert stored.applied_configuration == shared
        if run.payload_inline is not None:
            assert await store.inline_payload(run.algorithm, run.id) == run.payload_inline


@pytest.mark.parametrize(
    "inputs",
    [[None], [b""], [b"{}", None, b'{"a": "\\u0000"}', b"", b"[1]"]],
    ids=["one-in-s3", "one-empty", "mixed"],
)
async def test_a_batch_of_one_shape_stores_each_runs_input_and_hash(
    store: CheckpointStore, inputs: list[bytes | None]
) -> None:
    shared = {"image": "echo:1", "shard": "shard-0"}
    runs = [
        replace(
            new_run(configuration=shared),
            payload_inline=payload,
            payload_uri="s3://bucket/inputs/x" if payload is None else None,
            content_hash=None if i % 2 else f"{i:064x}",
        )
        for i, payload in enumerate(inputs)
    ]
    assert _insert_arguments(runs)[0] == sql.INSERT_ONE_SHAPE
    admissions = await store.insert_many(runs)
    assert [a.id for a in admissions if isinstance(a, Admission)] == [r.id for r in runs]
    found = await store.get_many(r.key for r in runs)
    for run in runs:
        stored = found[run.key]
        assert (stored.content_hash, stored.payload_uri) == (run.content_hash, run.payload_uri)
        assert await store.inline_payload(run.algorithm, run.id) == run.payload_inline


@pytest.mark.parametrize("optional", [False, True], ids=["nulls", "every-column"])
async def test_a_batch_of_one_shape_stores_the_shapes_columns(
    store: CheckpointStore, optional: bool
) -> None:
    shared = {"image": "echo:1", "shard": "shard-0"}
    parent = {"requestId": str(uuid.uuid4()), "algorithmName": "planner"}
    runs = [
        replace(
            new_run(configuration=shared, tag="nightly" if optional else None),
            parent=parent if optional else None,
            configuration_overrides={"cpuLimit": "2"} if optional else None,
            payload_valid_for=timedelta(minutes=90),
            api_version="v1",
            received_by_host="pod-7",
        )
        for _ in range(3)
    ]
    runs = [replace(r, parent=parent, configuration_overrides=runs[0].configuration_overrides)
            if optional else r for r in runs]  # fmt: skip
    assert _insert_arguments(runs)[0] == sql.INSERT_ONE_SHAPE
    await store.insert_many(runs)
    found = await store.get_many(r.key for r in runs)
    for run in runs:
        stored = found[run.key]
        assert (stored.algorithm, stored.stage, stored.caller, stored.received_by_host) == (
            run.algorithm, run.stage, run.caller, "pod-7"
        )  # fmt: skip
        assert (stored.applied_configuration, stored.payload_valid_for) == (
            shared, timedelta(minutes=90)
        )  # fmt: skip
        assert (stored.tag, stored.parent, stored.configuration_overrides) == (
            run.tag, run.parent, run.configuration_overrides
        )  # fmt: skip
        assert stored.api_version == "v1"


async def test_a_hash_with_a_comma_is_stored_as_given(store: CheckpointStore) -> None:
    runs = [replace(new_run(), content_hash=h) for h in ("a,b", "c")]
    assert _insert_arguments(runs)[0] == sql.INSERT
    await store.insert_many(runs)
    found = await store.get_many(r.key for r in runs)
    assert [found[r.key].content_hash for r in runs] == ["a,b", "c"]


async def test_transitions_are_group_committed(store: CheckpointStore) -> None:
    runs = [new_run() for _ in range(500)]
    await asyncio.gather(*(store.insert(r) for r in runs))
    batches_before, _ = batch_stats("checkpoint-transition")
    applied = await asyncio.gather(
        *(store.transition(Transition(r.algorithm, r.id, Stage.RUNNING, shard="s")) for r in runs)
    )
    assert all(applied)
    batches_after, _ = batch_stats("checkpoint-transition")
    assert batches_after - batches_before < 100


async def test_transitions_arriving_one_by_one_wait_for_company_past_the_inserts_minimum(
    postgres_dsn: str,
) -> None:
    """Transitions go out at transition_min_size waiting (64), not at the inserts'
    batch_min_size (16): 40 completions arriving a millisecond apart within the delay are
    one statement (PostgreSQL's cost per statement is most of a small batch's)."""
    settings = PostgresSettings(dsn=postgres_dsn, pool_max_size=2, transition_max_delay=2.0)
    store = await CheckpointStore.open(settings)
    try:
        runs = [new_run() for _ in range(40)]
        assert all(a.created for a in await store.insert_many(runs))  # type: ignore[union-attr]
        batches_before, _ = batch_stats("checkpoint-transition")
        pending = []
        for run in runs:
            change = Transition(run.algorithm, run.id, Stage.COMPLETED, result_uri="s3://b/r")
            pending.append(asyncio.ensure_future(store.transition(change)))
            await asyncio.sleep(0.001)
        assert all(await asyncio.gather(*pending))
        batches_after, _ = batch_stats("checkpoint-transition")
        assert batches_after - batches_before == 1
    finally:
        await store.close()


# -- idempotency ---------------------------------------------------------------------------


async def test_idempotency_key_returns_the_first_run(store: CheckpointStore) -> None:
    first, *others = [new_run(key="order-17") for _ in range(5)]
    admitted = await store.insert(first)
    duplicates = await asyncio.gather(*(store.insert(r) for r in others))
    assert admitted.created
    assert all(d.id == first.id and not d.created for d in duplicates)
    for r in others:
        assert await store.get(r.algorithm, r.id, SYSTEM) is None
    # another caller's identical key is another run
    other_caller = new_run(key="order-17", caller="someone-else")
    assert (await store.insert(other_caller)).created
    # the same caller's key sent for another algorithm finds the first run, and says whose
    elsewhere = await store.insert(new_run("other", key="order-17"))
    assert (elsewhere.id, elsewhere.created, elsewhere.algorithm) == (first.id, False, "echo")


async def test_concurrent_duplicates_create_one_run(store: CheckpointStore) -> None:
    runs = [new_run(key="burst") for _ in range(50)]
    results = await asyncio.gather(*(store.insert(r) for r in runs))
    assert len({r.id for r in results}) == 1
    assert sum(r.created for r in results) == 1


async def test_a_key_whose_first_run_is_gone_fails_only_its_own_insert(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run of a key is deleted between a duplicate's insert and the look-up of
    its first run: that duplicate is told to retry; its batch neighbour is written."""
    first = new_run(key="vanishing")
    await store.insert(first)
    batches: list[int] = []
    resolve = store._resolve_conflicts

    async def first_deleted_meanwhile(conn, runs, losers, results):  # type: ignore[no-untyped-def]
        batches.append(len(runs))
        await conn.execute("DELETE FROM runs WHERE id = $1", first.id)
        await resolve(conn, runs, losers, results)

    monkeypatch.setattr(store, "_resolve_conflicts", first_deleted_meanwhile)
    neighbour, duplicate = new_run(), new_run(key="vanishing")
    answers = await asyncio.gather(
        store.insert(neighbour), store.insert(duplicate), return_exceptions=True
    )
    assert batches == [2]  # one batch
    assert answers[0] == Admission(neighbour.id, True, neighbour.algorithm)
    assert isinstance(answers[1], StoreUnavailable), answers[1]
    assert await store.get(neighbour.algorithm, neighbour.id, SYSTEM) is not None
    assert await store.get(duplicate.algorithm, duplicate.id, SYSTEM) is None


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionResetError("connection reset by peer"),
        asyncpg.DeadlockDetectedError("deadlock detected"),  # expiring keys, say
        asyncpg.DataError("a value the lookup cannot take"),
    ],
)
async def test_a_store_lost_after_the_insert_fails_only_the_duplicates(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """The store fails while a batch's duplicates are looked up, after its INSERT
    committed: the runs it inserted are answered as stored (they are), the duplicate is
    told to retry. (A data error must not send the batch to be written run by run: its
    runs, inserted already, would then read as duplicates of themselves.)"""
    await store.insert(new_run(key="twice"))

    async def fails(*args: object) -> None:
        raise failure

    monkeypatch.setattr(store, "_resolve_conflicts", fails)
    fresh, duplicate = new_run(), new_run(key="twice")
    answers = await asyncio.gather(
        store.insert(fresh), store.insert(duplicate), return_exceptions=True
    )
    assert answers[0] == Admission(fresh.id, True, fresh.algorithm)
    assert isinstance(answers[1], StoreUnavailable), answers[1]
    assert await store.get(fresh.algorithm, fresh.id, SYSTEM) is not None


async def test_a_store_lost_while_a_bad_batch_is_written_run_by_run_fails_that_run_alone(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding a run the store cannot hold is written run by run; when the store
    is lost on one of those writes, the runs written before it are answered as stored."""
    good, bad, last = new_run(), new_run(caller="nul\x00caller"), new_run()
    insert_batch = store._insert_batch

    async def lost_on_the_last(runs: list[NewRun]) -> list[Admission | Exception]:
        if [r.id for r in runs] == [last.id]:
            raise StoreNotReached("checkpoint store unavailable: connection refused")
        return await insert_batch(runs)

    monkeypatch.setattr(store, "_insert_batch", lost_on_the_last)
    answers = await asyncio.gather(
        *(store.insert(r) for r in (good, bad, last)), return_exceptions=True
    )
    assert answers[0] == Admission(good.id, True, good.algorithm)
    assert isinstance(answers[1], CheckpointRejected), answers[1]
    assert isinstance(answers[2], StoreNotReached), answers[2]
    assert await store.get(good.algorithm, good.id, SYSTEM) is not None


async def test_idempotency_key_expires_after_24_hours(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    first = new_run(key="daily")
    await store.insert(first)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            "UPDATE runs SET received_at = now() - interval '25 hours' WHERE id = $1", first.id
        )
    finally:
        await conn.close()
    second = new_run(key="daily")
    admitted = await store.insert(second)
    assert admitted == type(admitted)(second.id, True, second.algorithm)


async def test_by_tag_and_inline_payload(store: CheckpointStore) -> None:
    tagged = [new_run(tag="batch-1") for _ in range(3)]
    await asyncio.gather(*(store.insert(r) for r in [*tagged, new_run(tag="other")]))
    listings = Listings(store)
    found = [entry.run for entry in await listings.page("echo", "batch-1", SYSTEM, None, 10)]
    assert {c.id for c in found} == {r.id for r in tagged}
    assert {c.stage for c in found} == {Stage.BUFFERED}
    # pages of one, each after the last: every run once, in (received_at, id) order
    first = await listings.page("echo", "batch-1", SYSTEM, None, 1)
    second = await listings.page("echo", "batch-1", SYSTEM, first[0].position, 2)
    assert [e.run.id for e in [*first, *second]] == [c.id for c in found]
    assert await listings.page("echo", "batch-1", SYSTEM, second[-1].position, 5) == []
    assert TagPosition.decode(second[0].position.encode()) == second[0].position
    assert await listings.counts("echo", "batch-1", SYSTEM) == {Stage.BUFFERED: 3}
    assert await listings.counts("echo", "nothing", SYSTEM) == {}
    one = await store.result("echo", tagged[0].id, SYSTEM)
    assert one is not None
    assert (one.stage, one.result_uri, one.failure_cause) == (Stage.BUFFERED, None, None)
    assert await store.result("echo", uuid.uuid4(), SYSTEM) is None
    assert await store.inline_payload("echo", tagged[0].id) == b'{"x": 1}'
    assert await listings.page("echo", "nothing", SYSTEM, None, 10) == []


async def test_reads_find_only_what_the_viewer_may_see(store: CheckpointStore) -> None:
    mine = [new_run(caller="alice", tag="batch"), new_run("other", caller="alice", tag="batch")]
    theirs = new_run(caller="bob", tag="batch")
    await asyncio.gather(*(store.insert(r) for r in [*mine, theirs]))
    alice, bob = Viewer("alice"), Viewer("bob")
    # another caller's run reads exactly as one that does not exist
    assert await store.get("echo", theirs.id, alice) is None
    assert await store.result("echo", theirs.id, alice) is None
    assert await store.get("echo", mine[0].id, bob) is None
    assert (await store.get("echo", mine[0].id, alice)) is not None
    assert (await store.result("echo", theirs.id, bob)) is not None
    # tags are per caller
    listings = Listings(store)
    assert [e.run.id for e in await listings.page("echo", "batch", alice, None, 9)] == [mine[0].id]
    assert [e.run.id for e in await listings.page("echo", "batch", bob, None, 9)] == [theirs.id]
    assert await listings.counts("echo", "batch", alice) == {Stage.BUFFERED: 1}
    # a grant of one algorithm sees every caller's runs of it, and only of it
    support = Viewer("support", frozenset({"echo"}))
    assert {e.run.id for e in await listings.page("echo", "batch", support, None, 9)} == {
        mine[0].id,
        theirs.id,
    }
    assert await store.get("other", mine[1].id, support) is None
    assert await store.get("other", mine[1].id, Viewer("ops", frozenset({"*"}))) is not None
