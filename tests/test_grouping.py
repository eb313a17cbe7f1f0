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
