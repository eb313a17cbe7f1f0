"""Group commit: many concurrent callers, one round trip per batch.

A submit path that writes one row per request with one round trip per row is bound by the
round trip, not by the database. :class:`GroupCommitter` lets any number of coroutines
``await committer.submit(item)`` while at most ``max_in_flight`` batches are being written;
whatever arrives while a batch is in flight rides in the next one. At low load a write goes
out at once (after at most ``max_delay``); at high load batches fill up by themselves, so
throughput grows with load instead of collapsing.

A batch goes out once ``min_batch`` items wait or ``max_delay`` has passed since its
first item arrived, whichever comes first: under load batches fill before the delay and
nobody waits for it; at moderate load each statement still carries several items (the
statement, not the item, is what costs). Without a ``min_batch``, a batch waits the whole
delay unless it is full. Only one batch fills at a time, whatever ``max_in_flight``: two
flushers waiting side by side would each take about half of what arrives, and send twice
the statements for the same items.

Guarantees:

* a caller's ``submit`` returns only after its own item's batch has been committed
  (read-your-writes), with its own result — or raises its own error (the writer may
  return an exception for one item) or the error its whole batch failed with (a writer
  that returns more or fewer results than it was given items fails the whole batch too);
* items are written in arrival order within a batch; callers that need ordering between
  their own items await each in turn;
* beyond ``max_pending`` waiting items, ``submit`` refuses at once with the ``overloaded``
  error instead of queueing without bound.

``submit_many`` waits on one future for all its items (a :class:`_Many`), not one each:
a future, its await and its result were a few percent of a bulk submit's CPU per item
and per group-committed write.

``send`` hands an item over without waiting for it (a :class:`_Unawaited`): no future,
and no step of the caller's task when its batch is written; an item that fails is handed
to the caller's ``failed`` callback instead. It suits writes nobody needs to see land
before going on (a queue push after the run is durable): they can then wait for company
(``max_delay``) without keeping anyone waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from nexus.core.meters import LoopCounter, LoopHistogram

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = LoopHistogram(
    "nexus_group_commit_batch_size",
    "Items written per group-committed batch.",
    ["writer"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
BATCH_SECONDS = LoopHistogram(
    "nexus_group_commit_batch_seconds",
    "Time to write one group-committed batch.",
    ["writer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REFUSED = LoopCounter(
    "nexus_group_commit_refused_total",
    "Writes refused because too many were already waiting.",
    ["writer"],
)


class _Many(Generic[R]):
    """The items of one ``submit_many``: each item's outcome, and one future that is done
    once every item has one (or cancelled with the caller, leaving the items not yet
    taken unwritten)."""

    __slots__ = ("done", "future", "left", "outcomes")

    def __init__(self, future: asyncio.Future[list[R | Exception]], count: int) -> None:
        self.future = future
        self.done: Callable[[], bool] = future.done
        """Whether the caller is answered or gone: the future's own method, no call of
        ours, as it is asked of every item when its batch is taken."""
        self.outcomes: list[R | Exception] = [None] * count  # type: ignore[list-item]
        self.left = count

    def settle(self, index: int, outcome: R | Exception) -> None:
        self.outcomes[index] = outcome
        self.left -= 1
        if not self.left and not self.future.done():
            self.future.set_result(self.outcomes)


class _Unawaited(Generic[T, R]):
    """The items given to ``send``: nobody waits for them; one that fails is handed,
    with its error, to ``failed``."""

    __slots__ = ("failed", "items")

    def __init__(self, items: list[T], failed: Callable[[T, Exception], None]) -> None:
        self.items = items
        self.failed = failed

    def done(self) -> bool:
        return False  # always written: nobody is gone for whom it would not be

    def settle(self, index: int, outcome: R | Exception) -> None:
        if isinstance(outcome, Exception):
            self.failed(self.items[index], outcome)


_Waiting = tuple[T, "asyncio.Future[R] | _Many[R] | _Unawaited[T, R]", int]
"""An item, and who waits for it: a ``submit``'s future (index -1), or a ``submit_many``'s
items (or ``send``'s) and the item's index among them."""


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
        self._waiting: deque[_Waiting[T, R]] = deque()
        self._since = 0.0  # when the oldest waiting item arrived
        self._flushers: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None  # the flusher filling a batch
        self._filled: asyncio.Future[None] | None = None  # what the collector waits on
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
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
        loop = self._running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._waiting:
            self._since = loop.time()
        self._waiting.append((item, future, -1))
        if self._filled is not None and len(self._waiting) >= self._min_batch:
            _settle(self._filled)
        self._start_flusher()
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R | Exception]:
        """Write ``items`` together, in as few batches as ``max_batch`` allows (one, when
        they fit and nothing else waits): each item's result, or the error it failed with.
        Refused as a whole, with the ``overloaded`` error, when they would take the waiting
        items beyond ``max_pending``."""
        self._check_room(len(items))
        if not items:
            return []
        many: _Many[R] = _Many(self._running_loop().create_future(), len(items))
        self._add(items, many)
        try:
            return await many.future
        except BaseException:  # a cancellation is the caller's, not an item's
            many.future.cancel()  # the items not taken yet are not written
            raise

    def send(self, items: list[T], failed: Callable[[T, Exception], None]) -> None:
        """Write ``items`` with whatever else is waiting, without waiting for them: each
        one that fails (alone or with its batch) is given to ``failed`` with its error,
        once its batch has been written. Refused as a whole, raising the ``overloaded``
        error, when they would take the waiting items beyond ``max_pending``. Must be
        called on the loop the writer works on."""
        self._check_room(len(items))
        if items:
            self._add(items, _Unawaited(items, failed))

    def _check_room(self, count: int) -> None:
        """Refuse ``count`` more items of ``submit_many`` or ``send``, as a whole, when
        the writer is closed or they would take the waiting items beyond ``max_pending``."""
        if self._closed:
            raise RuntimeError(f"{self.name} writer is closed")
        if len(self._waiting) + count > self._max_pending:
            self._refused.inc(count)
            raise self._overloaded()

    def _add(self, items: Sequence[T], waiter: _Many[R] | _Unawaited[T, R]) -> None:
        """Queue ``items`` for ``waiter`` (each with its index) and have them collected."""
        if not self._waiting:
            self._since = self._running_loop().time()
        self._waiting.extend([(item, waiter, index) for index, item in enumerate(items)])
        if self._filled is not None and len(self._waiting) >= self._min_batch:
            _settle(self._filled)
        self._start_flusher()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop this writer works on, looked up once: on Python 3.11 every
        ``asyncio.get_running_loop()`` is a ``getpid()`` system call, which profiles of
        the receiver showed at 1-2 % of its CPU from ``submit`` alone."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _start_flusher(self) -> None:
        """Have a flusher collect the waiting items, unless one does or none may start."""
        if not self._waiting or self._collector is not None:
            return
        if len(self._flushers) >= self._max_in_flight:
            return  # the first to finish its write collects next
        task = self._running_loop().create_task(self._flush(), name=f"group-commit:{self.name}")
        self._collector = task
        self._flushers.add(task)
        task.add_done_callback(self._flushers.discard)

    async def _flush(self) -> None:
        task = asyncio.current_task()
        try:
            await self._flush_waiting(task)
        finally:
            # Leave in the same step as the last look at the queue: a submit after that
            # look must start a flusher of its own, not count this finished one.
            if self._collector is task:
                self._collector = None
            if task is not None:
                self._flushers.discard(task)

    async def _flush_waiting(self, task: asyncio.Task[None] | None) -> None:
        while self._waiting:  # this flusher is the collector
            if self._max_delay and len(self._waiting) < self._min_batch:
                await self._fill(self._since + self._max_delay)
            live = [entry for entry in self._take() if not entry[1].done()]
            if live:
                await self._write_batch(live)
            if self._collector is not None:
                return  # another flusher collects what came meanwhile
            self._collector = task

    def _take(self) -> list[_Waiting[T, R]]:
        """The collector's batch; the next batch may start filling while it is written."""
        count = min(len(self._waiting), self._max_batch)
        batch = [self._waiting.popleft() for _ in range(count)]
        self._collector = None
        self._start_flusher()
        return batch

    async def _write_batch(self, live: list[_Waiting[T, R]]) -> None:
        loop = self._running_loop()
        started = loop.time()
        try:
            results = await self._write([item for item, _, _ in live])
        except Exception as exc:
            _fail(live, exc)
            return
        finally:
            self._batch_seconds.observe(loop.time() - started)
            self._batch_size.observe(len(live))
        if len(results) != len(live):
            # Which result belongs to which item is unknown: every item of the batch fails.
            _fail(live, RuntimeError(
                f"{self.name} writer returned {len(results)} results for {len(live)} items"
            ))  # fmt: skip
            return
        for (_, waiter, index), result in zip(live, results, strict=True):
            if index >= 0:
                waiter.settle(index, result)  # type: ignore[union-attr]
            elif waiter.done():
                continue
            elif isinstance(result, Exception):
                waiter.set_exception(result)  # type: ignore[union-attr]
            else:
                waiter.set_result(result)  # type: ignore[union-attr]

    async def _fill(self, deadline: float) -> None:
        """Until ``min_batch`` items wait or ``deadline`` (loop time) has come."""
        loop = self._running_loop()
        if deadline <= loop.time():
            return
        filled: asyncio.Future[None] = loop.create_future()
        timer = loop.call_at(deadline, _settle, filled)
        self._filled = filled
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    async def close(self) -> None:
        """Refuse new items and wait for the waiting ones to be written."""
        self._closed = True
        while self._flushers:
            await asyncio.gather(*self._flushers, return_exceptions=True)


def _fail(live: list[_Waiting[T, R]], exc: Exception) -> None:
    """Every item of ``live`` failed with ``exc``."""
    for _, waiter, index in live:
        if index >= 0:
            waiter.settle(index, exc)  # type: ignore[union-attr]
        elif not waiter.done():
            waiter.set_exception(exc)  # type: ignore[union-attr]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
