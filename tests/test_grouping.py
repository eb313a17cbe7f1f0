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


async def test_a_patient_writer_collects_what_arrives_while_another_batch_is_written() -> None:
    async def batches_written(patient: bool) -> list[list[str]]:
        written: list[list[str]] = []

        async def write(items: Sequence[str]) -> list[None]:
            written.append(list(items))
            await asyncio.sleep(0.05)
            return [None] * len(items)

        committer: GroupCommitter[str, None] = GroupCommitter(
            "test", write, overloaded=RuntimeError, max_batch=10, max_delay=0.02,
            max_in_flight=2, max_pending=100, patient=patient,
        )  # fmt: skip
        first = asyncio.create_task(committer.submit("a"))
        await asyncio.sleep(0.03)  # "a" is being written now
        second = asyncio.create_task(committer.submit("b"))
        await asyncio.sleep(0.005)
        third = asyncio.create_task(committer.submit("c"))
        await asyncio.gather(first, second, third)
        await committer.close()
        return written

    # callers wait for these writes: a second batch goes out at once, with what is there
    assert await batches_written(patient=False) == [["a"], ["b"], ["c"]]
    # nobody waits: the second batch waits max_delay like the first, and collects more
    assert await batches_written(patient=True) == [["a"], ["b", "c"]]
