"""Waiting without polling (DESIGN §2, ``?wait=S``): this pod's waiters, woken by the
announcements of finished runs (:mod:`nexus.core.announcements`).

A request that waits registers here *before* it reads the store, then waits for its
future or its ``S`` seconds, whichever comes first; so a run that finishes between the
read and the wait still wakes it. Guarantees:

* **No read for most answers, one per burst for the rest.** An announcement carries the
  run's answer when it fits in a notification: the run's waiters on this pod are answered
  from it. The runs announced without it that have waiters here are read in one statement
  per burst, whose results are handed to all their waiters. A tag with waiters is
  counted again only when its announcements may have finished it: each count of it
  leaves how many of its runs were unfinished, each announcement of one of its runs
  since takes one off, and only when none may be left is it counted (one count in
  flight per tag) — a tag of a hundred runs costs its waiter two counts, not one per
  burst. Its waiters are answered by a count that finds it finished. Nothing polls the
  store on a waiter's behalf.
* **A finished tag is never missed.** A run is announced after its move has committed,
  so every run that finished after a count was sent is announced after it was sent:
  runs left unfinished by the count, less the tag's announcements heard since it was
  sent, is never more than the runs still unfinished (announcements of runs the viewer
  does not see, or of runs added since, only make it less, and cost a count early).
  When the tag's last run is announced, that figure is at most 0 and the tag is
  counted. After a gap nothing is taken off what was missed: the tag is counted again
  on every burst until a count sent after the gap comes back.
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


class _Tally:
    """What the counts and announcements of one tag with waiters say of it: how many of
    its runs are unfinished at most (see the module's second guarantee)."""

    __slots__ = ("heard", "heard_then", "unfinished")

    def __init__(self) -> None:
        self.heard = 0
        """Announcements of the tag's runs heard since this tally began."""
        self.unfinished: int | None = None
        """Runs unfinished by the latest count sent since the last gap (None: none)."""
        self.heard_then = 0
        """``heard`` when that count was sent."""

    def may_be_finished(self) -> bool:
        """Whether the announcements may have finished the tag since its last count."""
        return self.unfinished is None or self.unfinished <= self.heard - self.heard_then


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
        self._tallies: dict[TagKey, _Tally] = {}  # of the tags in _tags
        self._gaps = 0  # gaps so far: a count sent before the last gap sets no tally
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
        tag_key = _tag_key(algorithm, tag, viewer)
        self._tags.setdefault(tag_key, set()).add(future)
        if tag_key not in self._tallies:
            self._tallies[tag_key] = _Tally()
        WAITING.inc()
        return future

    async def count(self, algorithm: str, tag: str, viewer: Viewer) -> Counts:
        """The tag's counts as ``viewer`` sees them (the first count of a waiter, after
        :meth:`watch_tag`): they tell the tag's tally how many runs are left."""
        tag_key = _tag_key(algorithm, tag, viewer)
        sent = self._sent(tag_key)
        counts = await self._listings.counts(algorithm, tag, viewer)
        self._counted(tag_key, sent, counts)
        return counts

    def forget_run(self, key: RunKey, future: asyncio.Future[RunResult | None]) -> None:
        WAITING.dec()
        _discard(self._runs, announced(key), future)

    def forget_tag(
        self, algorithm: str, tag: str, viewer: Viewer, future: asyncio.Future[Counts | None]
    ) -> None:
        WAITING.dec()
        tag_key = _tag_key(algorithm, tag, viewer)
        _discard(self._tags, tag_key, future)
        if tag_key not in self._tags:
            self._tallies.pop(tag_key, None)

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
            tags: dict[tuple[str, str], int] = {}
            for f in runs:
                if f.tag is not None:
                    tag = (f.run.partition("\t")[0], f.tag)
                    tags[tag] = tags.get(tag, 0) + 1
            for tag_key, tally in list(self._tallies.items()):
                heard = tags.get((tag_key[0], tag_key[1]))
                if heard is not None:
                    tally.heard += heard
                    if tally.may_be_finished():
                        self._count(tag_key)

    def gap(self) -> None:
        """Announcements may have been missed: look at everything waited for again."""
        if self._runs:
            self._spawn(self._read(list(self._runs)))
        self._gaps += 1
        for tally in self._tallies.values():
            tally.unfinished = None  # what was missed is not taken off
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
                sent = self._sent(tag_key)
                try:
                    counts = await self._listings.counts(algorithm, tag, viewer)
                except DependencyError as exc:
                    log.warning("a tag could not be counted for its waiters: %s", exc)
                    return
                if is_finished(counts):
                    self._tallies.pop(tag_key, None)
                    for future in self._tags.pop(tag_key, ()):
                        if not future.done():
                            future.set_result(counts)
                    return
                tally = self._counted(tag_key, sent, counts)
                if tally is None:  # its waiters left; those that came since began anew
                    if tag_key in self._tags and self._counting[tag_key]:
                        continue  # and were told of runs that may have finished it
                    return
                if tally.unfinished is None:  # a gap came between: counted again if asked
                    if not self._counting[tag_key]:
                        return
                elif not (tally.heard > tally.heard_then and tally.may_be_finished()):
                    return  # no announcement since it was sent may have finished it
        finally:
            self._counting.pop(tag_key, None)

    def _sent(self, tag_key: TagKey) -> tuple[_Tally | None, int, int]:
        """What a count about to be sent must know when it is back: the tally it sets,
        the announcements heard so far and the gaps so far."""
        tally = self._tallies.get(tag_key)
        return tally, tally.heard if tally is not None else 0, self._gaps

    def _counted(
        self, tag_key: TagKey, sent: tuple[_Tally | None, int, int], counts: Counts
    ) -> _Tally | None:
        """The tag's tally, set from ``counts`` (a count sent when :meth:`_sent` said
        ``sent``) unless a gap came between or the tally began anew meanwhile."""
        tally, heard, gaps = sent
        if tally is None or self._tallies.get(tag_key) is not tally:
            return None
        if gaps == self._gaps:
            tally.unfinished = sum(n for stage, n in counts.items() if stage not in TERMINAL)
            tally.heard_then = heard
        return tally

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
