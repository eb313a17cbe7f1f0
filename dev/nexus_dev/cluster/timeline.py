"""Many timers on one event-loop timer: the Job controller's deadlines, TTLs and retries.

Every Job of a busy shard holds a timer from its start to its end (``activeDeadlineSeconds``,
600 s in Nexus's Jobs) and another from its end to its deletion
(``ttlSecondsAfterFinished``, an hour): at 800 runs a second that is two timers set and
one cancelled per run, among hundreds of thousands pending. ``loop.call_later`` makes a
handle and a libuv timer for each and moves it in and out of libuv's heap; that was 3.5 %
of the emulator's CPU. A :class:`Timeline` keeps its timers in one ``heapq`` instead and
holds a single loop timer, armed for the earliest of them.

Guarantees:

* a callback runs once the loop's clock has reached its time (within a millisecond, the
  resolution of uvloop's own timers), never before;
* callbacks due together run in the order they were set;
* :meth:`Timer.cancel` before it runs means it never runs; a cancelled timer stays in the
  heap until its time comes or until cancelled ones are more than half of the heap, which
  is then rebuilt without them (so memory stays proportional to the live timers);
* a callback that raises is reported to the loop's exception handler, as from
  ``call_later``, and the others still run;
* :meth:`Timeline.close` forgets every timer and stops the loop timer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Final

_RESOLUTION = 0.001
"""Seconds: what is due this close to now is due now, as the loop rounds its own timers
(uvloop's to the millisecond)."""
_COMPACT_AT = 1024
"""Cancelled timers kept at least before the heap is rebuilt without them."""

_running_loop: Final = asyncio.get_running_loop
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop
"""``asyncio.get_running_loop`` and ``heapq``'s push and pop as names of this module:
compiled, a Final name is a C static, where a module's attribute is looked up at every
call (a timer or two per run)."""


class Timer:
    """One timer of a :class:`Timeline`; :meth:`cancel` it like a ``TimerHandle``."""

    __slots__ = ("args", "callback", "timeline")

    def __init__(self, timeline: Timeline, callback: Callable[..., object], args: tuple[Any, ...]):
        self.timeline = timeline
        self.callback: Callable[..., object] | None = callback
        self.args = args

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.args = ()
            self.timeline._cancelled += 1

    def cancelled(self) -> bool:
        return self.callback is None


class Timeline:
    """Timers of one shard, fired from a single loop timer."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._cancelled = 0

    def __len__(self) -> int:
        """Timers pending, cancelled ones not counted."""
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Run ``callback(*args)`` ``delay`` seconds from now (loop time)."""
        loop = _running_loop()
        when = loop.time() + delay
        timer = Timer(self, callback, args)
        _heappush(self._heap, (when, next(self._order), timer))
        if when < self._armed_at:
            self._arm(loop, when)
        if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(self._heap):
            self._compact()
        return timer

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = float("inf")
        for _, _, timer in self._heap:
            timer.callback = None
            timer.args = ()
        self._heap = []
        self._cancelled = 0

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_at(when, self._fire)
        self._armed_at = when

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        loop = _running_loop()
        due = loop.time() + _RESOLUTION
        heap = self._heap
        while heap and heap[0][0] <= due:
            timer = _heappop(heap)[2]
            callback = timer.callback
            if callback is None:
                self._cancelled -= 1
                continue
            args = timer.args
            timer.callback = None
            timer.args = ()
            try:
                callback(*args)
            except Exception as exc:  # reported as the loop reports a failed callback
                loop.call_exception_handler(
                    {"message": f"Exception in timeline callback {callback!r}", "exception": exc}
                )
        if heap and heap[0][0] < self._armed_at:  # a callback may have armed a later one
            self._arm(loop, heap[0][0])

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if entry[2].callback is not None]
        heapq.heapify(self._heap)
        self._cancelled = 0
