"""Keeping CPython's cyclic garbage collector off the store of a long-running emulator.

A busy shard holds hundreds of thousands of small dicts and lists — stored objects, the
previous versions the watch history keeps, Events — and makes new ones for every write.
They never form cycles (the store only ever builds JSON trees), yet CPython's collector
scans every tracked container in a *full* collection, and starts one whenever the
containers promoted since the last one reach a quarter of all of them — that is, every
time the store turned over a quarter of its contents. Measured at 20,000 simulated pods:
a full collection every second, each 200-700 ms, a third of the emulator's CPU spent
proving that JSON has no cycles; and more of it the more objects were stored, which is
why throughput fell as the store grew. Even young collections alone cost 20 µs per pod
(every version the history keeps survives one and is scanned), while a run of 60,000
pods left no cyclic garbage at all.

:class:`HeapPolicy` changes that for the whole process, so only the ``nexus devcluster``
command applies it (shards run inside tests or another program leave its collector alone):

* ``gc.freeze()`` once the shards are up: modules, classes and start-up state are never
  scanned again;
* no automatic collections at all;
* one full collection every ``full_interval`` seconds, on a timer, so that whatever cycle
  there is gets reclaimed and memory stays bounded. None was ever found in the benchmarks
  (watches, 429 storms, 60,000 pods), and a collection triggered by growth instead — as
  CPython does — scanned the whole heap four times over while the store filled up. The
  pause of scanning everything (about a second at 700,000 containers) comes once in five
  minutes, not every second.

``full_interval=0`` leaves the interpreter's own policy in place.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeapSettings:
    """How the emulator process runs its garbage collector."""

    full_interval: float = 300.0
    """Seconds between full collections; 0 keeps CPython's own policy."""


class HeapPolicy:
    """Applies :class:`HeapSettings` to this process while it is started."""

    def __init__(self, settings: HeapSettings) -> None:
        self.settings = settings
        self._timer: asyncio.TimerHandle | None = None
        self._previous: tuple[int, int, int] | None = None
        self._was_enabled = True
        self.full_collections = 0
        self.full_seconds = 0.0
        """Total pause of the full collections (seconds)."""

    def start(self) -> None:
        if self.settings.full_interval <= 0:
            return
        self._previous = gc.get_threshold()
        self._was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        self._timer = asyncio.get_running_loop().call_later(
            self.settings.full_interval, self.collect
        )

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._previous is not None:
            if self._was_enabled:
                gc.enable()
            gc.set_threshold(*self._previous)
            gc.unfreeze()
            self._previous = None

    def collect(self) -> None:
        """One full collection now; the next one ``full_interval`` seconds later."""
        started = time.perf_counter()
        found = gc.collect()
        pause = time.perf_counter() - started
        self.full_collections += 1
        self.full_seconds += pause
        log.debug("full collection", extra={"found": found, "pause_ms": round(pause * 1000)})
        self._timer = asyncio.get_running_loop().call_later(
            self.settings.full_interval, self.collect
        )
