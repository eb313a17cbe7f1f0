"""A pod's waiters (?wait) on a fake clock (looptime), with a stand-in store: woken by the
announcements of their runs, one read per burst, never a read for a run nobody waits for
here, everything read again after a gap, and every waiter answered at its S in any case."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from nexus.core.announcements import Finished, announced, parse, run_key
from nexus.core.checkpoints import CheckpointStore
from nexus.core.listings import Listings
from nexus.core.runs import RunKey, RunResult, Stage
from nexus.core.visibility import Viewer
from nexus.scheduler.waiters import Waiters, wait_for

pytestmark = pytest.mark.looptime


class Store:
    """Answers ``results_many`` from a dict, and remembers every read."""

    def __init__(self) -> None:
        self.stages: dict[RunKey, Stage] = {}
        self.reads: list[list[RunKey]] = []

    async def results_many(self, keys: Sequence[RunKey]) -> dict[RunKey, RunResult]:
        self.reads.append(list(keys))
        return {
            k: RunResult(k.algorithm, k.id, self.stages[k], None, None, None)
            for k in keys
            if k in self.stages
        }

    async def results_seen(self, reads: Sequence[Any]) -> list[RunResult | None]:
        raise AssertionError("not read here")  # the first read of a request, not tested here


def waiters_on(store: Store) -> Waiters:
    return Waiters(cast(CheckpointStore, store), cast(Listings, object()))


def new_key() -> RunKey:
    return RunKey("echo", uuid.uuid4())


def heard(*keys: RunKey, tag: str = "") -> list[Finished]:
    found = [parse(f"{announced(key)}\t{tag}") for key in keys]
    assert None not in found
    return cast(list[Finished], found)


def waits(outcome: str) -> float:
    return REGISTRY.get_sample_value("nexus_waits_total", {"outcome": outcome}) or 0.0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_announcement_names_its_run_and_tag_and_a_malformed_one_nothing() -> None:
    key = new_key()
    assert parse(f"{announced(key)}\tbatch-7") == Finished(announced(key), "batch-7")
    assert parse(f"{announced(key)}\t") == Finished(announced(key), None)
    assert run_key(announced(key)) == key
    assert announced(key) == f"echo\t{str(key.id).lower()}"  # as PostgreSQL writes a uuid
    for bad in ("", "echo", "echo\tnot-a-uuid"):
        assert parse(bad) is None or run_key(parse(bad).run) is None  # type: ignore[union-attr]


async def test_a_burst_wakes_every_waiter_of_its_runs_with_one_read(looptime: float) -> None:
    store = Store()
    waiters = waiters_on(store)
    first, second, idle = new_key(), new_key(), new_key()
    futures = [waiters.watch_run(first), waiters.watch_run(first), waiters.watch_run(second)]
    waiters.watch_run(idle)
    assert len(waiters) == 4
    finished = waits("finished")
    tasks = [asyncio.ensure_future(wait_for(f, 60)) for f in futures]
    store.stages.update({first: Stage.COMPLETED, second: Stage.FAILED})
    waiters.finished(heard(first, second))
    answers = await asyncio.gather(*tasks)
    assert [a.stage if a else None for a in answers] == [Stage.COMPLETED] * 2 + [Stage.FAILED]
    assert len(store.reads) == 1 and sorted(map(str, store.reads[0])) == sorted(
        map(str, (first, second))
    )
    assert waits("finished") == finished + 3 and looptime == 0
    for future, key in zip(futures, (first, first, second), strict=True):
        waiters.forget_run(key, future)
    assert len(waiters) == 1  # the one nothing announced still waits
    await waiters.close()


async def test_runs_nobody_here_waits_for_cost_no_read(looptime: float) -> None:
    store = Store()
    waiters = waiters_on(store)
    waited = new_key()
    future = waiters.watch_run(waited)
    waiters.finished(heard(*(new_key() for _ in range(100))))
    await settle()
    assert store.reads == [] and not future.done()
    waiters.forget_run(waited, future)
    await waiters.close()


async def test_a_run_announced_but_not_terminal_when_read_keeps_its_waiter(
    looptime: float,
) -> None:
    store = Store()
    waiters = waiters_on(store)
    key = new_key()
    future = waiters.watch_run(key)
    store.stages[key] = Stage.RUNNING
    waiters.finished(heard(key))
    await settle()
    assert len(store.reads) == 1 and not future.done()
    waiters.forget_run(key, future)
    await waiters.close()


async def test_a_waiter_nothing_wakes_is_answered_at_its_time_as_none(looptime: float) -> None:
    waiters = waiters_on(Store())
    key = new_key()
    future = waiters.watch_run(key)
    timed_out = waits("timed_out")
    assert await wait_for(future, 7) is None
    assert looptime == 7 and waits("timed_out") == timed_out + 1
    waiters.forget_run(key, future)
    assert len(waiters) == 0
    await waiters.close()


async def test_a_waiter_that_goes_away_is_never_answered_later(looptime: float) -> None:
    store = Store()
    waiters = waiters_on(store)
    key = new_key()
    future = waiters.watch_run(key)
    task = asyncio.ensure_future(wait_for(future, 60))
    await settle()
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    store.stages[key] = Stage.COMPLETED
    waiters.finished(heard(key))  # its future, cancelled, is not set again
    await settle()
    await asyncio.sleep(61)  # nor is it set by its timer, which is gone
    assert future.cancelled()
    waiters.forget_run(key, future)
    await waiters.close()


async def test_after_a_gap_every_run_waited_for_is_read_again(looptime: float) -> None:
    store = Store()
    waiters = waiters_on(store)
    keys = [new_key() for _ in range(3)]
    futures: list[asyncio.Future[Any]] = [waiters.watch_run(k) for k in keys]
    store.stages.update({keys[0]: Stage.CANCELLED, keys[1]: Stage.RUNNING})
    waiters.gap()  # announcements may have been lost: no announcement needed
    await settle()
    assert len(store.reads) == 1 and sorted(map(str, store.reads[0])) == sorted(map(str, keys))
    assert futures[0].result().stage is Stage.CANCELLED
    assert not futures[1].done() and not futures[2].done()
    for key, future in zip(keys, futures, strict=True):
        waiters.forget_run(key, future)
    await waiters.close()


async def test_runs_announced_with_their_answers_are_answered_without_a_read(
    looptime: float,
) -> None:
    store = Store()
    waiters = waiters_on(store)
    answered, unanswered, garbled = new_key(), new_key(), new_key()
    futures = [waiters.watch_run(k) for k in (answered, answered, unanswered, garbled)]
    store.stages.update({unanswered: Stage.COMPLETED, garbled: Stage.CANCELLED})
    waiters.finished(
        [
            Finished(announced(answered), None, '["FAILED", false, null, "boom", "it broke"]'),
            Finished(announced(unanswered), None),  # too long for a notification: read
            Finished(announced(garbled), None, "[not json"),  # read as well
        ]
    )
    for future in futures[:2]:  # at once: nothing to wait for
        assert future.result() == RunResult(
            "echo", answered.id, Stage.FAILED, None, "boom", "it broke"
        )
    await settle()
    assert [sorted(map(str, read)) for read in store.reads] == [
        sorted(map(str, (unanswered, garbled)))
    ]
    assert futures[2].result().stage is Stage.COMPLETED  # type: ignore[union-attr]
    assert futures[3].result().stage is Stage.CANCELLED  # type: ignore[union-attr]
    for key, future in zip((answered, answered, unanswered, garbled), futures, strict=True):
        waiters.forget_run(key, future)
    await waiters.close()


class Tags:
    """Stands in for :class:`Listings`: counts a tag's runs from a dict (as every caller's
    viewer sees them), remembers every count, and holds each count until ``hold`` is set."""

    def __init__(self) -> None:
        self.stages: dict[RunKey, Stage] = {}
        self.counted = 0
        self.hold = asyncio.Event()
        self.hold.set()

    async def counts(self, algorithm: str, tag: str, viewer: Any) -> dict[Stage, int]:
        self.counted += 1
        found: dict[Stage, int] = {}
        for stage in self.stages.values():  # read when sent, answered when let through
            found[stage] = found.get(stage, 0) + 1
        await self.hold.wait()
        return found


def tag_waiters(tags: Tags) -> Waiters:
    return Waiters(cast(CheckpointStore, Store()), cast(Listings, tags))


EVERYONE = Viewer("someone", frozenset("*"))


async def test_a_tag_is_counted_when_its_announcements_may_have_finished_it_not_per_burst(
    looptime: float,
) -> None:
    tags = Tags()
    waiters = tag_waiters(tags)
    keys = [new_key() for _ in range(20)]
    tags.stages.update(dict.fromkeys(keys, Stage.RUNNING))
    future = waiters.watch_tag("echo", "batch", EVERYONE)
    assert sum((await waiters.count("echo", "batch", EVERYONE)).values()) == 20
    for key in keys[:-1]:  # one burst each: 19 announcements, none may finish the tag
        tags.stages[key] = Stage.COMPLETED
        waiters.finished(heard(key, tag="batch"))
        await settle()
    assert tags.counted == 1 and not future.done()
    tags.stages[keys[-1]] = Stage.FAILED
    waiters.finished(heard(keys[-1], tag="batch"))
    await settle()
    assert tags.counted == 2
    assert future.result() == {Stage.COMPLETED: 19, Stage.FAILED: 1}
    waiters.forget_tag("echo", "batch", EVERYONE, future)
    assert len(waiters) == 0
    await waiters.close()


async def test_a_tag_finished_while_it_was_counted_is_counted_again(looptime: float) -> None:
    tags = Tags()
    waiters = tag_waiters(tags)
    keys = [new_key() for _ in range(3)]
    tags.stages.update(dict.fromkeys(keys, Stage.RUNNING))
    future = waiters.watch_tag("echo", "batch", EVERYONE)
    tags.hold.clear()
    first = asyncio.ensure_future(waiters.count("echo", "batch", EVERYONE))
    await settle()  # the count is sent: it sees three runs unfinished
    for key in keys:  # all finish and are announced before it comes back
        tags.stages[key] = Stage.COMPLETED
        waiters.finished(heard(key, tag="batch"))
    await settle()
    tags.hold.set()
    assert (await first) == {Stage.RUNNING: 3}
    await settle()
    assert future.result() == {Stage.COMPLETED: 3} and looptime == 0
    waiters.forget_tag("echo", "batch", EVERYONE, future)
    await waiters.close()


async def test_announcements_of_runs_others_see_cost_a_count_and_keep_the_waiter(
    looptime: float,
) -> None:
    tags = Tags()
    waiters = tag_waiters(tags)
    mine = new_key()
    tags.stages[mine] = Stage.RUNNING
    future = waiters.watch_tag("echo", "batch", EVERYONE)
    await waiters.count("echo", "batch", EVERYONE)
    waiters.finished(heard(new_key(), tag="batch"))  # a run this count does not hold
    await settle()
    assert tags.counted == 2 and not future.done()  # counted early, still unfinished
    tags.stages[mine] = Stage.COMPLETED
    waiters.finished(heard(mine, tag="batch"))
    await settle()
    assert tags.counted == 3 and future.result() == {Stage.COMPLETED: 1}
    waiters.forget_tag("echo", "batch", EVERYONE, future)
    await waiters.close()


async def test_after_a_gap_a_tag_is_counted_per_burst_until_a_count_comes_back(
    looptime: float,
) -> None:
    tags = Tags()
    waiters = tag_waiters(tags)
    keys = [new_key() for _ in range(10)]
    tags.stages.update(dict.fromkeys(keys, Stage.RUNNING))
    future = waiters.watch_tag("echo", "batch", EVERYONE)
    await waiters.count("echo", "batch", EVERYONE)
    tags.hold.clear()
    for key in keys[:5]:  # finished, never announced (the connection was lost)
        tags.stages[key] = Stage.COMPLETED
    waiters.gap()  # counts at once; until it is back, a burst asks for another
    await settle()
    assert tags.counted == 2
    for key in keys[5:]:
        tags.stages[key] = Stage.COMPLETED
    waiters.finished(heard(*keys[5:], tag="batch"))  # five announced: all ten finished
    tags.hold.set()
    await settle()
    assert tags.counted == 3 and future.result() == {Stage.COMPLETED: 10}
    waiters.forget_tag("echo", "batch", EVERYONE, future)
    await waiters.close()


async def test_a_waiter_that_came_while_a_left_waiters_count_was_out_is_answered(
    looptime: float,
) -> None:
    """A count outlives its waiters (they left at their time) and a new waiter comes with
    a tally of its own; the tag's last run is announced while that old count is still out,
    which can only ask for another: the old count, back, must make it."""
    tags = Tags()
    waiters = tag_waiters(tags)
    keys = [new_key() for _ in range(2)]
    tags.stages.update(dict.fromkeys(keys, Stage.RUNNING))
    first = waiters.watch_tag("echo", "batch", EVERYONE)
    tags.hold.clear()
    tags.stages[keys[0]] = Stage.COMPLETED
    waiters.finished(heard(keys[0], tag="batch"))  # a count goes out and is held
    await settle()
    waiters.forget_tag("echo", "batch", EVERYONE, first)  # the first waiter's time is up
    second = waiters.watch_tag("echo", "batch", EVERYONE)
    tags.hold.set()
    assert sum((await waiters.count("echo", "batch", EVERYONE)).values()) == 2
    tags.hold.clear()  # the old count is out again, held
    tags.stages[keys[1]] = Stage.COMPLETED
    waiters.finished(heard(keys[1], tag="batch"))  # may have finished it: one more count
    await settle()
    tags.hold.set()
    await settle()
    await asyncio.sleep(1)
    assert second.done() and second.result() == {Stage.COMPLETED: 2}
    waiters.forget_tag("echo", "batch", EVERYONE, second)
    await waiters.close()
