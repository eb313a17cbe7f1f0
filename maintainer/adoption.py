"""Adoption: the queues of scheduler pods that died are moved to live pods.

A scheduler pod keeps a heartbeat in Redis; when it stops (SIGKILL, a lost node) the
heartbeat expires and its runs — queued, waiting out a retry delay, or taken off the queue
but not yet settled — would wait for ever. Every ``adopt_interval`` the leader moves each
dead pod's runs to a live pod with :meth:`QueueBackend.adopt`: one Lua script, so a run is
in exactly one place before and after, keeping its order, ahead of the live pod's
newer runs (see ``adopt.lua``). Dead pods are spread over the live ones in turn.

Adopting twice is harmless: the second finds the dead pod gone and moves nothing. With no
live pod the dead pods' runs stay where they are, safe, until one starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import Counter

from nexus.core.errors import DependencyError
from nexus.core.queues import QueueBackend
from nexus.core.waiting import sleep_or_stop

log = logging.getLogger(__name__)

ADOPTED = Counter(
    "nexus_maintainer_adopted_total", "Queues of dead scheduler pods adopted, and their runs.",
    ["what"],
)  # fmt: skip


class Adopter:
    """Moves the runs of dead scheduler pods to live ones, for the leader."""

    def __init__(self, queues: QueueBackend, interval: float, leading: Callable[[], bool]) -> None:
        self.queues = queues
        self.interval = interval
        self._leading = leading
        self._turn = 0
        self._warned = False

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if self._leading():
                try:
                    await self.adopt_once()
                except DependencyError as exc:
                    log.warning("cannot adopt queues now: %s", exc)
            await sleep_or_stop(stopping, self.interval)

    async def adopt_once(self) -> int:
        """Adopt every dead pod's queue; how many runs moved."""
        pods = await self.queues.pods()
        if not pods.dead:
            return 0
        if not pods.live:
            if not self._warned:
                log.warning("scheduler pods are dead and none is alive to adopt their queues")
                self._warned = True
            return 0
        self._warned = False
        total = 0
        for dead in pods.dead:
            if not self._leading():
                break
            live = pods.live[self._turn % len(pods.live)]
            self._turn += 1
            moved = await self.queues.adopt(dead, live)
            if moved is None:  # one of them changed since pods() was read: next round
                continue
            total += moved
            ADOPTED.labels("queues").inc()
            ADOPTED.labels("runs").inc(moved)
            log.info("adopted the queue of a dead scheduler pod", extra={
                "dead": dead, "pod": live, "runs": moved})  # fmt: skip
        return total
