"""Group commit (nexus/core/grouping.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

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
