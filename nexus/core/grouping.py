"""Group commit: many concurrent callers, one round trip per batch.

A submit path that writes one row per request with one round trip per row is bound by the
round trip, not by the database. :class:`GroupCommitter` lets any number of coroutines
``await committer.submit(item)`` while at most ``max_in_flight`` batches are being written;
whatever arrives while a batch is in flight rides in the next one. At low load a write goes
out at once (after at most ``max_delay``); at high load batches fill up by themselves, so
throughput grows with load instead of collapsing.

A batch goes out once ``min_batch`` items wait or ``max_delay`` has passed since its
flusher started, whichever comes first: under load batches fill before the delay and
nobody waits for it; at moderate load each statement still carries several items (the
statement, not the item, is what costs). Without a ``min_batch``, a batch waits the whole
delay unless it is full.

Guarantees:

* a caller's ``submit`` returns only after its own item's batch has been committed
  (read-your-writes), with its own result — or raises its own error (the writer may
  return an exception for one item) or the error its whole batch failed with;
* items are written in arrival order within a batch; callers that need ordering between
  their own items await each in turn;
* beyond ``max_pending`` waiting items, ``submit`` refuses at once with the ``overloaded``
  error instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Counter, Histogram

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = Histogram(
    "nexus_group_commit_batch_size",
    "Items written per group-committed batch.",
    ["writer"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH_SECONDS = Histogram(
    "nexus_group_commit_batch_seconds",
    "Time to write one group-committed batch.",
    ["writer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REFUSED = Counter(
    "nexus_group_commit_refused_total",
    "Writes refused because too many were already waiting.",
    ["writer"],
)


class GroupCommitter(Generic[T, R]):
    """Batches ``submit``\\ ted items into calls of ``write(items) -> results``."""

    def __init__(
        self,
        name: str,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]],
        *,
        overloaded: Callable[[], Exception],
        max_batch: int,
        max_delay: float,
        max_in_flight: int,
        max_pending: int,
        min_batch: int | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._overloaded = overloaded
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._max_in_flight = max_in_flight
        self._max_pending = max_pending
        self._min_batch = max_batch if min_batch is None else min(min_batch, max_batch)
        self._filling: list[asyncio.Future[None]] = []  # flushers waiting for min_batch
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._flushers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._batch_size = BATCH_SIZE.labels(name)
        self._batch_seconds = BATCH_SECONDS.labels(name)
        self._refused = REFUSED.labels(name)

    @property
    def pending(self) -> int:
        """Items waiting for a batch (not counting those being written)."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; return its result once committed."""
        if self._closed:
            raise RuntimeError(f"{self.name} writer is closed")
        if len(self._waiting) >= self._max_pending:
            self._refused.inc()
            raise self._overloaded()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._filling and len(self._waiting) >= self._min_batch:
            for filling in self._filling:
                _settle(filling)
        if len(self._flushers) < self._max_in_flight:
            task = asyncio.create_task(self._flush(), name=f"group-commit:{self.name}")
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await future

    async def _flush(self) -> None:
        try:
            await self._flush_waiting()
        finally:
            # Leave the set in the same step as the last look at the queue: a submit after
            # that look must start a flusher of its own, not count this finished one.
            task = asyncio.current_task()
            if task is not None:
                self._flushers.discard(task)

    async def _flush_waiting(self) -> None:
        if self._max_delay and len(self._waiting) < self._min_batch:
            await self._filled()
        while self._waiting:
            count = min(len(self._waiting), self._max_batch)
            batch = [self._waiting.popleft() for _ in range(count)]
            live = [(item, fut) for item, fut in batch if not fut.done()]
            if not live:
                continue
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                results = await self._write([item for item, _ in live])
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._batch_seconds.observe(loop.time() - started)
                self._batch_size.observe(len(live))
            for (_, fut), result in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def _filled(self) -> None:
        """Until ``min_batch`` items wait or ``max_delay`` has passed."""
        loop = asyncio.get_running_loop()
        filled: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self._max_delay, _settle, filled)
        self._filling.append(filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filling.remove(filled)

    async def close(self) -> None:
        """Refuse new items and wait for the waiting ones to be written."""
        self._closed = True
        while self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
