"""Healing after Redis lost its data: noticed within seconds, queues refilled at once.

Redis holds the virtual queues, and only them: every queued run also has its
``BUFFERED`` checkpoint in PostgreSQL. A Redis that comes back empty (restarted without
persistence, failed over to an empty replica, flushed) has lost which runs wait where; the
regular sweep of ``BUFFERED`` runs would find them only after its queue grace (a minute)
and its interval. So the leader keeps a marker key in Redis (:attr:`KeySpace.generation`,
set once, never deleted) and looks for it every ``redis_check_interval``: when it is
missing, Redis lost its data, and the leader pages through every ``BUFFERED`` run
unchanged for ``heal_grace`` and pushes back those no queue holds — at once, and once
more ``heal_grace`` later, for the runs that were between their checkpoint and their push
when the data went.

Guarantees:

* **Said once**: one line when the loss is noticed, one when the runs are queued again.
* **No duplicates.** Only runs in no pod's queue (ready, delayed, in flight) are pushed,
  and each by compare-and-set on its checkpoint, as the regular sweep does; a run that a
  scheduler is dispatching meanwhile is recognised by its stage (no longer ``BUFFERED``)
  when popped, and its Job's name (the request id) makes a second creation a harmless
  ``409``: a dispatched run is never dispatched again.
* **Nothing concluded blind.** A run whose shard's Jobs cannot be known now (the watch
  is away), or a moment with no live scheduler pod to queue on, leaves the healing
  pending: it is tried again at the next check until it is complete.
* What it knows survives a change of leader within this process (a Redis that lost its
  data also lost the lease), so the term that follows still heals.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from prometheus_client import Counter

from maintainer.settings import MaintainerSection
from maintainer.sweeping import Sweeper
from nexus.core.errors import DependencyError
from nexus.core.queues import QueueBackend
from nexus.core.waiting import sleep_or_stop

log = logging.getLogger(__name__)

LOSSES = Counter(
    "nexus_maintainer_redis_losses_total", "Times Redis was found to have lost its data."
)


class Healer:
    """Looks for the Redis marker, and refills the queues when it is gone (see module)."""

    def __init__(
        self, queues: QueueBackend, section: MaintainerSection, leading: Callable[[], bool]
    ) -> None:
        self.queues = queues
        self.section = section
        self._leading = leading
        self._mark = uuid.uuid4().hex
        self._checked = False
        self._queued = 0
        self.passes_due: list[float] = []
        """Loop times at which a healing pass is due (empty: nothing to heal)."""

    async def run(self, sweeper: Sweeper, stopping: asyncio.Event) -> None:
        """Check every ``redis_check_interval`` while leading, until ``stopping``."""
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            if self._leading():
                try:
                    await self.check(sweeper, loop.time())
                except DependencyError as exc:
                    # Redis or PostgreSQL away: their outage is logged once by their client
                    log.debug("healing postponed: %s", exc)
            await sleep_or_stop(stopping, self.section.redis_check_interval)

    async def check(self, sweeper: Sweeper, now: float) -> None:
        """One look at the marker, and the healing passes that are due."""
        if await self.queues.keep_generation(self._mark):
            if self._checked:
                LOSSES.inc()
                log.warning("redis lost its data: queueing the waiting runs again")
            # also on a first look: a loss while no leader looked is healed the same way
            self.passes_due = [now, now + self.section.heal_grace]
        self._checked = True
        if not self.passes_due or self.passes_due[0] > now:
            return
        queued, complete = await sweeper.heal(self.section.heal_grace)
        if not complete:
            return  # a shard's Jobs unknown, or no live pod: the next check tries again
        self.passes_due.pop(0)
        self._queued += queued
        if not self.passes_due:
            log.info("queues refilled from the checkpoints", extra={"runs": self._queued})
            self._queued = 0
