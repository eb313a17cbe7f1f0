"""Group commit (nexus/core/grouping.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from nexus.core.grouping import GroupCommitter


async def test_a_caller_submitting_right_after_its_last_write_is_not_forgotten() -> None:
    # The waiter of a batch resumes before the flusher that wrote it has finished; its next
    # submit must not count that flusher as one still running.
    async def write(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        return [i * 2 for i in items]

    committer: GroupCommitter[int, int] = GroupCommitter(
        "test", write, overloaded=RuntimeError, max_batch=10, max_delay=0.0,
        max_in_flight=1, max_pending=100,
    )  # fmt: skip
    async with asyncio.timeout(2):  # not wait_for: its extra task would hide the race
        results = [await committer.submit(i) for i in range(20)]
    assert results == [i * 2 for i in range(20)]
    await committer.close()


async def test_a_batch_goes_out_when_min_batch_items_wait_or_max_delay_has_passed() -> None:
    async def batches_written(min_batch: int | None) -> list[tuple[list[str], bool]]:
        """Each batch, and whether it was written before ``max_delay`` had passed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        written: list[tuple[list[str], bool]] = []

        async def write(items: Sequence[str]) -> list[None]:
            written.append((list(items), loop.time() - started < 0.4))
            return [None] * len(items)

        committer: GroupCommitter[str, None] = GroupCommitter(
            "test", write, overloaded=RuntimeError, max_batch=10, max_delay=0.5,
            max_in_flight=2, max_pending=100, min_batch=min_batch,
        )  # fmt: skip
        submitted = []
        for item in "abcd":
            submitted.append(asyncio.create_task(committer.submit(item)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*submitted)
        await committer.close()
        return written

    # three waiting items make a batch at once; "d" waits for company, then for the delay
    assert await batches_written(min_batch=3) == [(["a", "b", "c"], True), (["d"], False)]
    # without a minimum, the first batch waits the whole delay and takes everything
    assert await batches_written(min_batch=None) == [(["a", "b", "c", "d"], False)]


async def test_one_batch_fills_at_a_time_so_a_steady_trickle_is_not_split() -> None:
    # Two flushers filling side by side would each take part of what arrives: a batch
    # that goes out before its first item has waited the delay, and twice the statements.
    loop = asyncio.get_running_loop()
    arrived: dict[int, float] = {}
    batches: list[tuple[list[int], float]] = []  # items, how long the first one waited

    async def write(items: Sequence[int]) -> list[None]:
        batches.append((list(items), loop.time() - arrived[items[0]]))
        await asyncio.sleep(0.01)  # a round trip, during which more items arrive
        return [None] * len(items)

    committer: GroupCommitter[int, None] = GroupCommitter(
        "test", write, overloaded=RuntimeError, max_batch=100, max_delay=0.05,
        max_in_flight=2, max_pending=100, min_batch=100,
    )  # fmt: skip
    submitted = []
    for item in range(40):
        arrived[item] = loop.time()
        submitted.append(asyncio.create_task(committer.submit(item)))
        await asyncio.sleep(0.005)
    await asyncio.gather(*submitted)
    await committer.close()

    assert [i for items, _ in batches for i in items] == list(range(40))
    assert all(waited >= 0.045 for _, waited in batches), batches


class Overloaded(Exception):
    """What the committers below refuse with when too many items wait."""


def committer_for(
    write: Callable[[Sequence[int]], Awaitable[Sequence[int | Exception]]], **options: Any
) -> GroupCommitter[int, int]:
    settings: dict[str, Any] = {
        "max_batch": 4, "max_delay": 0.0, "max_in_flight": 2, "max_pending": 100, **options,
    }  # fmt: skip
    return GroupCommitter("test", write, overloaded=Overloaded, **settings)


async def outcomes(committer: GroupCommitter[int, int], items: Sequence[int]) -> list[object]:
    """Each item's result or error, submitted all at once; a hang fails the test."""
    submitted = [committer.submit(i) for i in items]
    return await asyncio.wait_for(asyncio.gather(*submitted, return_exceptions=True), 2)


async def test_a_failed_write_fails_every_item_of_every_batch() -> None:
    batches: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0)
        raise ConnectionError("the store went away")

    committer = committer_for(write)
    results = await outcomes(committer, range(10))
    assert len(batches) >= 3  # ten items in batches of at most four
    assert all(isinstance(r, ConnectionError) for r in results), results
    await asyncio.wait_for(committer.close(), 2)


async def test_an_error_the_writer_returns_for_one_item_fails_only_that_item() -> None:
    async def write(items: Sequence[int]) -> list[int | Exception]:
        return [ValueError(f"bad item {i}") if i == 2 else i * 10 for i in items]

    committer = committer_for(write)
    submitted = [asyncio.create_task(committer.submit(i)) for i in range(4)]
    await asyncio.wait_for(asyncio.wait(submitted), 2)
    assert [t.result() for t in submitted if t is not submitted[2]] == [0, 10, 30]
    with pytest.raises(ValueError, match="bad item 2"):
        submitted[2].result()  # raised, not returned
    await asyncio.wait_for(committer.close(), 2)


async def test_a_writer_returning_the_wrong_number_of_results_fails_every_item() -> None:
    async def write(items: Sequence[int]) -> list[int]:
        return [i * 10 for i in items][1:]  # one result short

    committer = committer_for(write)
    results = await outcomes(committer, range(4))  # one batch of four
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert "3 results for 4 items" in str(results[0])
    await asyncio.wait_for(committer.close(), 2)


async def test_beyond_max_pending_waiting_items_submit_refuses_at_once() -> None:
    written: list[int] = []
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int]:
        await release.wait()  # a slow round trip: whatever arrives meanwhile waits
        written.extend(items)
        return list(items)

    committer = committer_for(write, max_in_flight=1, max_pending=3)
    first = asyncio.create_task(committer.submit(0))
    await asyncio.sleep(0.01)  # item 0 is being written
    waiting = [asyncio.create_task(committer.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    assert committer.pending == 3
    refused = REGISTRY.get_sample_value("nexus_group_commit_refused_total", {"writer": "test"})
    with pytest.raises(Overloaded):
        await asyncio.wait_for(committer.submit(4), 0.5)  # at once, not after the write
    after = REGISTRY.get_sample_value("nexus_group_commit_refused_total", {"writer": "test"})
    assert after == (refused or 0) + 1
    release.set()
    assert await asyncio.wait_for(asyncio.gather(first, *waiting), 2) == [0, 1, 2, 3]
    assert await asyncio.wait_for(committer.submit(5), 2) == 5  # room again
    assert written == [0, 1, 2, 3, 5]
    await asyncio.wait_for(committer.close(), 2)


async def test_close_writes_what_is_still_waiting_then_refuses() -> None:
    written: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int]:
        written.append(list(items))
        await asyncio.sleep(0.01)
        return list(items)

    # the batch waits for company when close comes: close must not drop it meanwhile
    committer = committer_for(write, max_batch=10, max_delay=0.3)
    submitted = [asyncio.create_task(committer.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert committer.pending == 3
    await asyncio.wait_for(committer.close(), 2)
    assert written == [[0, 1, 2]]
    assert all(task.done() for task in submitted)
    assert [task.result() for task in submitted] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        await committer.submit(3)


async def test_submit_many_answers_each_item_across_batches_and_a_cancelled_caller_writes_no_more(
) -> None:  # fmt: skip
    written: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int | Exception]:
        written.append(list(items))
        if items[0] >= 100:
            await release.wait()
        return [ValueError(f"bad item {i}") if i % 5 == 0 else i * 10 for i in items]

    committer = committer_for(write, max_batch=4, max_in_flight=1)
    answers = await asyncio.wait_for(committer.submit_many(list(range(1, 11))), 2)
    assert [type(a) if isinstance(a, Exception) else a for a in answers] == [
        10, 20, 30, 40, ValueError, 60, 70, 80, 90, ValueError,
    ]  # fmt: skip
    assert written == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    # a caller gone while its first batch is written: the rest of its items stay unwritten
    caller = asyncio.create_task(committer.submit_many(list(range(100, 110))))
    await asyncio.sleep(0.01)
    assert written[-1] == [100, 101, 102, 103]
    caller.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await asyncio.wait_for(committer.submit_many([7]), 2) == [70]
    assert written[-2:] == [[100, 101, 102, 103], [7]]
    await asyncio.wait_for(committer.close(), 2)


async def test_submit_many_shares_batches_with_single_submits_and_hears_a_failed_batch() -> None:
    written: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int | Exception]:
        written.append(list(items))
        if 0 in items:
            raise ConnectionError("store down")
        if -1 in items:
            return []  # fewer results than items: which is whose is unknown
        return [i * 10 for i in items]

    committer = committer_for(write, max_batch=10, max_in_flight=1, max_delay=0.05, min_batch=5)
    single = asyncio.create_task(committer.submit(1))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(committer.submit_many([2, 3, 4, 5]), 2) == [20, 30, 40, 50]
    assert await single == 10
    assert written == [[1, 2, 3, 4, 5]]
    failed = await asyncio.wait_for(committer.submit_many([6, 0, 7]), 2)
    assert [type(a) for a in failed] == [ConnectionError] * 3
    miscounted = await asyncio.wait_for(committer.submit_many([8, -1]), 2)
    assert [type(a) for a in miscounted] == [RuntimeError] * 2
    await asyncio.wait_for(committer.close(), 2)


async def test_send_writes_with_the_others_without_a_waiter_and_hands_over_what_failed() -> None:
    written: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int | Exception]:
        written.append(list(items))
        await release.wait()
        if 6 in items:
            raise ConnectionError("the store went away")
        return [ValueError(f"bad item {i}") if i == 2 else i for i in items]

    committer = committer_for(write, max_batch=10, max_delay=0.05, max_pending=6)
    failed: list[tuple[int, str]] = []

    def note(item: int, exc: Exception) -> None:
        failed.append((item, str(exc)))

    single = asyncio.create_task(committer.submit(0))
    await asyncio.sleep(0)  # item 0 waits first
    committer.send([1, 2], note)  # returns at once: nobody waits for them
    committer.send([3], note)
    assert (committer.pending, written) == (4, [])  # they wait for company (max_delay)
    await asyncio.sleep(0.1)
    assert written == [[0, 1, 2, 3]]  # one batch, in arrival order
    assert failed == []  # not before the write has ended
    committer.send([4, 5, 6], note)
    with pytest.raises(Overloaded):  # refused whole: 3 waiting + 4 > max_pending
        committer.send([7, 8, 9, 10], note)
    assert committer.pending == 3
    release.set()
    assert await asyncio.wait_for(single, 2) == 0
    await asyncio.wait_for(committer.close(), 2)
    assert written == [[0, 1, 2, 3], [4, 5, 6]]
    assert failed == [(2, "bad item 2")] + [(i, "the store went away") for i in (4, 5, 6)]
    with pytest.raises(RuntimeError, match="closed"):
        committer.send([11], note)
