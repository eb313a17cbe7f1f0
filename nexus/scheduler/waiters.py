"""Waiting without polling (DESIGN §2, ``?wait=S``): this pod's waiters, woken by the
announcements of finished runs (:mod:`nexus.core.announcements`).

A request that waits registers here *before* it reads the store, then waits for its
future or its ``S`` seconds, whichever comes first; so a run that finishes between the
read and the wait still wakes it. Guarantees:

* **No read for most answers, one per burst for the rest.** An announcement carries the
  run's answer when it fits in a notification: the run's waiters on this pod are answered
  from it. The runs announced without it that have waiters here are read in one statement
  per burst, whose results are handed to all their waiters. A tag with waiters is
  counted again once per burst, one count in flight per tag (announcements arriving
  meanwhile cause one more), and its waiters are answered when it is finished. Nothing
  polls the store on a waiter's behalf.
* **Nothing missed is waited for longer than asked.** After a gap in the announcements (a
  reconnection), every run and tag waited for is read again at once, in one read and one
  count per tag; and every waiter answers at its ``S`` in any case.
* **Herds read together.** The first read of each waiter (and its read at ``S``) share
  one statement with the other waiters' reads arriving meanwhile, so a thousand waiters
  arriving at once take one or two pooled connections, not a thousand.
* **Failures stay bounded.** A read that fails leaves the waiters waiting (their ``S``
  still holds) and is logged once per burst.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from typing import TypeAlias, TypeVar

from prometheus_client import Counter, Gauge

from nexus.core.announcements import Finished, announced, answer_of, run_key
from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError, StoreNotReached
from nexus.core.grouping import GroupCommitter
from nexus.core.listings import Listings
from nexus.core.runs import TERMINAL, RunKey, RunResult, Stage
from nexus.core.visibility import Viewer

log = logging.getLogger(__name__)
WAITING = Gauge("nexus_waiting_requests", "Requests waiting (?wait) for runs or tags to finish.")
WAITS = Counter(
    "nexus_waits_total",
    "Requests that waited (?wait), by how their wait ended: finished (woken by the run or"
    " batch finishing) or timed_out (answered at S as it stood).",
    ["outcome"],
)
_FINISHED, _TIMED_OUT = WAITS.labels("finished"), WAITS.labels("timed_out")
_K = TypeVar("_K")
_V = TypeVar("_V")

TagKey: TypeAlias = tuple[str, str, str | None, tuple[str, str] | None]
"""(algorithm, tag, owner, below): a tag as one view counts it (owner ``None``: every
caller's; below: the children of that run only, as a run's credential sees them)."""
Counts: TypeAlias = dict[Stage, int]


MAX_WAIT = 60.0
"""The longest ``?wait`` in seconds (DESIGN §2)."""


def wait_seconds(raw: str | None) -> float | None:
    """The ``wait`` query parameter as seconds (0 to :data:`MAX_WAIT`), ``None`` when
    absent; :class:`ValueError` naming the problem otherwise."""
    if raw is None:
        return None
    try:
        seconds = float(raw) if raw.strip() == raw and len(raw) <= 20 else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT:  # NaN, infinities and negatives fail too
        raise ValueError(f"wait: expected seconds from 0 to {MAX_WAIT:g}, got {raw[:40]!r}")
    return seconds


async def wait_for(future: asyncio.Future[_V | None], seconds: float) -> _V | None:
    """``future``'s result, or ``None`` after ``seconds``, when a timer on the loop sets it
    to ``None`` (whoever sets it must not set a future that is done). Not a task and a
    shield per waiter (:func:`asyncio.wait_for`), nor a second future to race the first:
    ten thousand waiters cost ten thousand timer entries and nothing more, and a waiter
    woken is one hop of the loop away from its answer."""
    timer = future.get_loop().call_later(seconds, _expire, future)
    try:
        result = await future
    finally:
        timer.cancel()
    (_TIMED_OUT if result is None else _FINISHED).inc()
    return result


def _expire(future: asyncio.Future[_V | None]) -> None:
    if not future.done():
        future.set_result(None)


def is_finished(counts: Counts) -> bool:
    """Whether a tag with these counts has runs and every one is terminal."""
    return bool(counts) and all(stage in TERMINAL for stage in counts)


class Waiters:
    """The runs and tags this pod's requests wait for, and their wake-ups."""

    def __init__(self, store: CheckpointStore, listings: Listings) -> None:
        self._store = store
        self._listings = listings
        # Waiters arrive in herds (a client waiting on a whole batch, run by run): their
        # reads share one statement, instead of each taking a pooled connection.
        self._reads: GroupCommitter[tuple[RunKey, str | None, str | None], RunResult | None] = (
            GroupCommitter(
                "wait-reads",
                store.results_seen,
                overloaded=lambda: StoreNotReached("too many waiting reads"),
                max_batch=500,
                max_delay=0.0,
                max_in_flight=2,
                max_pending=100_000,
            )
        )
        # runs by how announcements name them (announced()): most runs announced have no
        # waiter here, and are passed over without being parsed
        self._runs: dict[str, set[asyncio.Future[RunResult | None]]] = {}
        self._tags: dict[TagKey, set[asyncio.Future[Counts | None]]] = {}
        self._counting: dict[TagKey, bool] = {}  # tags being counted: whether to count again
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return sum(map(len, self._runs.values())) + sum(map(len, self._tags.values()))

    # -- waiting ---------------------------------------------------------------------------

    async def read(self, key: RunKey, viewer: Viewer) -> RunResult | None:
        """How the run stands as ``viewer`` may see it (``None``: not to be seen), read
        together with the other waiters' reads."""
        return await self._reads.submit((key, viewer.owner(key.algorithm), viewer.parent))

    def watch_run(self, key: RunKey) -> asyncio.Future[RunResult | None]:
        """A future set to the run's result once it is announced finished (to ``None`` by
        :func:`wait_for` at its time)."""
        future: asyncio.Future[RunResult | None] = asyncio.get_running_loop().create_future()
        self._runs.setdefault(announced(key), set()).add(future)
        WAITING.inc()
        return future

    def watch_tag(self, algorithm: str, tag: str, viewer: Viewer) -> asyncio.Future[Counts | None]:
        """A future set to the tag's counts (as ``viewer`` sees them) once it is finished
        (to ``None`` by :func:`wait_for` at its time)."""
        future: asyncio.Future[Counts | None] = asyncio.get_running_loop().create_future()
        self._tags.setdefault(_tag_key(algorithm, tag, viewer), set()).add(future)
        WAITING.inc()
        return future

    def forget_run(self, key: RunKey, future: asyncio.Future[RunResult | None]) -> None:
        WAITING.dec()
        _discard(self._runs, announced(key), future)

    def forget_tag(
        self, algorithm: str, tag: str, viewer: Viewer, future: asyncio.Future[Counts | None]
    ) -> None:
        WAITING.dec()
        _discard(self._tags, _tag_key(algorithm, tag, viewer), future)

    # -- waking ----------------------------------------------------------------------------

    def finished(self, runs: list[Finished]) -> None:
        """Announced: ``runs`` reached a terminal stage."""
        unread: list[str] = []
        for finished in runs:
            if finished.run not in self._runs:
                continue
            answer = finished.answer and answer_of(finished.run, finished.answer)
            if answer:
                self._answer(finished.run, answer)
            else:
                unread.append(finished.run)
        if unread:
            self._spawn(self._read(unread))
        if self._tags:
            tags = {(f.run.partition("\t")[0], f.tag) for f in runs if f.tag is not None}
            for tag_key in [k for k in self._tags if (k[0], k[1]) in tags]:
                self._count(tag_key)

    def gap(self) -> None:
        """Announcements may have been missed: look at everything waited for again."""
        if self._runs:
            self._spawn(self._read(list(self._runs)))
        for tag_key in list(self._tags):
            self._count(tag_key)

    async def close(self) -> None:
        """Stop the reads and counts in flight (waiters answer at their ``S``)."""
        await self._reads.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self, runs: list[str]) -> None:
        keys = [key for key in map(run_key, runs) if key is not None]
        try:
            found = await self._store.results_many(keys)
        except DependencyError as exc:
            log.warning("finished runs could not be read for their waiters: %s", exc)
            return
        for key, result in found.items():
            if result.stage.terminal:
                self._answer(announced(key), result)

    def _answer(self, run: str, result: RunResult) -> None:
        for future in self._runs.pop(run, ()):
            if not future.done():
                future.set_result(result)

    def _count(self, tag_key: TagKey) -> None:
        if tag_key in self._counting:
            self._counting[tag_key] = True  # counted again once this count is done
            return
        self._counting[tag_key] = False
        self._spawn(self._counts(tag_key))

    async def _counts(self, tag_key: TagKey) -> None:
        algorithm, tag, owner, below = tag_key
        viewer = Viewer(owner or "", frozenset() if owner is not None else frozenset("*"), below)
        try:
            while True:
                self._counting[tag_key] = False
                try:
                    counts = await self._listings.counts(algorithm, tag, viewer)
                except DependencyError as exc:
                    log.warning("a tag could not be counted for its waiters: %s", exc)
                    return
                if is_finished(counts):
                    for future in self._tags.pop(tag_key, ()):
                        if not future.done():
                            future.set_result(counts)
                if not self._counting[tag_key]:
                    return
        finally:
            self._counting.pop(tag_key, None)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _tag_key(algorithm: str, tag: str, viewer: Viewer) -> TagKey:
    return (algorithm, tag, viewer.owner(algorithm), viewer.below)


def _discard(
    waiting: dict[_K, set[asyncio.Future[_V | None]]], key: _K, future: asyncio.Future[_V | None]
) -> None:
    found = waiting.get(key)
    if found is not None:
        found.discard(future)
        if not found:
            del waiting[key]
