"""One active maintainer: a lease in Redis, renewed by its holder, taken over by a standby.

Every maintainer process runs :class:`Leadership`. It tries to take or renew the lease
every third of ``lease_ttl``; the process that holds it *leads* and is the only one that
watches, sweeps and adopts. Its guarantees:

* **A standby takes over within two lease periods** of the leader's death: the lease
  lapses ``lease_ttl`` after the last renewal, and the standby asks again within a third
  of ``lease_ttl`` after that.
* **A leader that cannot renew stops acting before its lease can lapse.** Leadership is
  counted from the *start* of the renewal call that granted it (a slow answer only
  shortens it), and :attr:`Leadership.active` turns false once that much time has passed
  without another successful renewal, before any other process can hold the lease.
* **A brief overlap is harmless anyway.** Two processes may still both believe they lead
  for an instant (clocks pause, a process stalls between checking and acting), so every
  action the maintainer takes is idempotent: a transition is a compare-and-set that the
  store refuses for finished runs, adoption is one atomic script, pushes never queue a
  run twice on a pod, and deleting a Job twice finds it gone.
* On a clean stop the lease is released, so the standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter, Gauge

from nexus.core.errors import DependencyError
from nexus.core.queues import QueueBackend
from nexus.core.waiting import first_of, sleep_or_stop

log = logging.getLogger(__name__)

LEADING = Gauge("nexus_maintainer_leader", "1 while this maintainer holds the lease.")
CHANGES = Counter(
    "nexus_maintainer_leadership_changes_total",
    "Times this maintainer gained (acquired) or lost (lost) the lease.",
    ["change"],
)

_SAFETY = 0.9
"""Share of the lease this process relies on: the rest absorbs clock-rate differences."""


class Leadership:
    """Holds (or waits for) the maintainer lease; tells whether this process leads."""

    def __init__(self, queues: QueueBackend, name: str, holder: str, ttl: float) -> None:
        self.queues = queues
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.changed = asyncio.Event()
        """Set whenever :attr:`active` may have changed; the caller clears it."""
        self._loop = asyncio.get_running_loop()
        self._valid_until = 0.0  # loop time until which the lease is surely ours
        self._leading = False  # what was last announced

    @property
    def active(self) -> bool:
        """Whether this process leads now: it holds a lease that cannot have lapsed."""
        return self._loop.time() < self._valid_until

    async def run(self, stopping: asyncio.Event) -> None:
        """Take, renew and (on stop) release the lease until ``stopping`` is set."""
        try:
            while not stopping.is_set():
                await self._attempt()
                await self._sleep(stopping)
        finally:
            if self._leading:
                self._set(0.0)
                with contextlib.suppress(DependencyError):
                    await asyncio.shield(self.queues.release_lease(self.name, self.holder))
                log.info("released the maintainer lease", extra={"holder": self.holder})

    async def _attempt(self) -> None:
        started = self._loop.time()
        try:
            held = await asyncio.wait_for(
                self.queues.hold_lease(self.name, self.holder, self.ttl), self.ttl / 3
            )
        except (DependencyError, TimeoutError) as exc:
            if self.active:
                log.warning("cannot renew the maintainer lease: %s", exc)
            held = None
        if held:
            self._set(started + self.ttl * _SAFETY)
        elif held is False:
            self._set(0.0)
        # held is None (Redis trouble): keep what is left of the lease; it lapses by itself

    def _set(self, valid_until: float) -> None:
        self._valid_until = valid_until
        self._announce()

    def _announce(self) -> None:
        now = self.active
        if now != self._leading:
            self._leading = now
            LEADING.set(1 if now else 0)
            CHANGES.labels("acquired" if now else "lost").inc()
            log.info(
                "leading" if now else "no longer leading",
                extra={"holder": self.holder, "lease": self.name},
            )
            self.changed.set()

    async def _sleep(self, stopping: asyncio.Event) -> None:
        """Until the next attempt, waking early to notice a lapse without a renewal."""
        deadline = self._loop.time() + self.ttl / 3
        while not stopping.is_set():
            until = min(deadline, self._valid_until) if self.active else deadline
            if until <= self._loop.time():
                break
            await sleep_or_stop(stopping, until=until)
        self._announce()  # a lapse is said at once, not at the next answer from Redis

    async def wait_for_change(self, stopping: asyncio.Event) -> None:
        """Until :attr:`active` may have changed or ``stopping`` is set."""
        await first_of(self.changed, stopping)
        self.changed.clear()
