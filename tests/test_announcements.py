"""What PostgreSQL announces when a run finishes (the trigger of migrations 0010 and 0012),
heard on a LISTEN connection as a scheduler pod hears it: the run, its tag and its answer
when that fits, once per run that finishes, never for a move that does not finish one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from support.rawruns import insert_run_at

from nexus.core.announcements import CHANNEL, Finished, announced, answer_of, parse
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings
from nexus.core.runs import ALLOWED, TERMINAL, NewRun, RunKey, RunResult, Stage, Transition


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=4))
    yield store
    await store.close()


@pytest.fixture
async def heard(postgres_dsn: str) -> AsyncIterator[asyncio.Queue[str]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    connection = await asyncpg.connect(postgres_dsn)
    await connection.add_listener(CHANNEL, lambda *args: queue.put_nowait(args[3]))
    yield queue
    await connection.close()


async def stored(store: CheckpointStore, tag: str | None = None) -> NewRun:
    run = NewRun(
        algorithm="echo",
        id=uuid.uuid4(),
        stage=Stage.BUFFERED,
        caller="tester",
        received_by_host="test-host",
        applied_configuration={"image": "echo:1"},
        payload_valid_for=timedelta(hours=24),
        payload_inline=b"{}",
        tag=tag,
    )
    assert (await store.insert(run)).created
    return run


async def test_a_finished_run_is_announced_once_with_its_answer(
    store: CheckpointStore, heard: asyncio.Queue[str]
) -> None:
    run = await stored(store, tag="batch-7")
    assert await store.transition(Transition(run.algorithm, run.id, Stage.RUNNING))
    completed = Transition(run.algorithm, run.id, Stage.COMPLETED, result_inline=b'{"a": 1}')
    assert await store.transition(completed)
    assert not await store.transition(completed)  # finished already: no second announcement
    payload = await asyncio.wait_for(heard.get(), 5)
    finished = parse(payload)
    assert finished is not None and finished.run == announced(run.key)
    assert finished.tag == "batch-7" and finished.answer is not None
    assert answer_of(finished.run, finished.answer) == RunResult(
        "echo", run.id, Stage.COMPLETED, None, None, None, has_inline_result=True
    )
    await asyncio.sleep(0.2)
    assert heard.empty()  # neither the move to RUNNING nor the refused one was announced

    failed = await stored(store)
    change = Transition("echo", failed.id, Stage.FAILED, cause="boom", details='\t"x"\n\\')
    assert await store.transition(change)
    finished = parse(await asyncio.wait_for(heard.get(), 5))
    assert finished is not None and finished.tag is None and finished.answer is not None
    assert answer_of(finished.run, finished.answer) == RunResult(
        "echo", failed.id, Stage.FAILED, None, "boom", '\t"x"\n\\'
    )


async def test_runs_finished_together_are_each_announced_once(
    store: CheckpointStore, heard: asyncio.Queue[str]
) -> None:
    runs = [await stored(store, tag="together") for _ in range(20)]
    changes = [
        Transition("echo", run.id, Stage.COMPLETED, result_uri=f"s3://bucket/{run.id}")
        for run in runs
    ]
    assert all(await asyncio.gather(*(store.transition(change) for change in changes)))
    payloads = [await asyncio.wait_for(heard.get(), 5) for _ in runs]
    await asyncio.sleep(0.2)
    assert heard.empty()
    finished = [parse(payload) for payload in payloads]
    assert sorted(f.run for f in finished if f) == sorted(announced(r.key) for r in runs)
    for one in finished:
        assert one is not None and one.tag == "together" and one.answer is not None
        result = answer_of(one.run, one.answer)
        assert result is not None and result.stage == Stage.COMPLETED
        assert result.result_uri == f"s3://bucket/{result.id}"


async def test_an_answer_too_long_for_a_notification_is_left_out(
    store: CheckpointStore, heard: asyncio.Queue[str]
) -> None:
    run = await stored(store, tag="long")
    change = Transition("echo", run.id, Stage.FAILED, cause="boom", details="é" * 5000)
    assert await store.transition(change)
    assert parse(await asyncio.wait_for(heard.get(), 5)) == Finished(announced(run.key), "long")


def test_an_answer_that_is_not_one_is_no_answer() -> None:
    run = f"echo\t{uuid.uuid4()}"
    assert answer_of(run, '["CANCELLED", false, null, "why", null]') is not None
    for bad in (
        "not json",
        "[]",
        '{"stage": "COMPLETED"}',
        '["RUNNING", false, null, null, null]',  # not finished
        '["NOPE", false, null, null, null]',
        '["COMPLETED", 1, null, null, null]',
        '["COMPLETED", false, 5, null, null]',
        '["COMPLETED", false, null, null, null, null]',
        '[["COMPLETED"], false, null, null, null]',
    ):
        assert answer_of(run, bad) is None, bad
    assert answer_of("echo\tnot-a-uuid", '["COMPLETED", false, null, null, null]') is None


async def test_exactly_the_moves_that_finish_a_run_are_announced(
    postgres_dsn: str, heard: asyncio.Queue[str]
) -> None:
    """Every allowed move, made by raw SQL as any writer may: announced when and only when
    it takes an unfinished run to a finished stage."""
    conn = await asyncpg.connect(postgres_dsn)
    expected: set[str] = set()
    try:
        for before, after in sorted(ALLOWED):
            run_id = uuid.uuid4()
            await insert_run_at(conn, run_id, before.value)
            await conn.execute(
                "UPDATE runs SET lifecycle_stage = $2, result_uri = 'r' WHERE id = $1",
                run_id,
                after.value,
            )
            if before not in TERMINAL and after in TERMINAL:
                expected.add(announced(RunKey("echo", run_id)))
    finally:
        await conn.close()
    heard_runs: set[str] = set()
    while len(heard_runs) < len(expected):
        finished = parse(await asyncio.wait_for(heard.get(), 5))
        assert finished is not None
        heard_runs.add(finished.run)
    await asyncio.sleep(0.2)
    assert heard.empty()
    assert heard_runs == expected
