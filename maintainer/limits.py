"""Reconciliation of the concurrency limits' slot sets with the checkpoints.

The scheduler pods count runs against concurrency limits in Redis (:mod:`nexus.core.slots`);
membership never drifts by itself, but Redis can lose data, a limit can be set on an
algorithm whose runs already run, and a run's slots are let go only when a limit is full.
Every ``limit_reconcile_interval`` the leader makes each slot set agree with the store:

* a run that finished, or no longer exists, gives its slot back;
* a run RUNNING that counts against the limit and holds no slot takes one (it runs: it
  counts, even past the limit — no new run starts until it finishes).

Runs still ``BUFFERED`` that hold a slot keep it: they are between their slot and their
Job, and a dispatch after a crash takes the same slot again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import Counter

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.slots import Slots, parse_label
from nexus.core.usage import running, stages
from nexus.core.waiting import sleep_or_stop

log = logging.getLogger(__name__)

CORRECTED = Counter(
    "nexus_maintainer_slots_corrected_total",
    "Concurrency slots reconciled with the checkpoints: let go (finished) or taken (RUNNING).",
    ["change"],
)


class SlotReconciler:
    """Makes every slot set agree with the checkpoints, for the leader."""

    def __init__(
        self,
        store: CheckpointStore,
        slots: Slots,
        interval: float,
        leading: Callable[[], bool],
    ) -> None:
        self.store = store
        self.slots = slots
        self.interval = interval
        self._leading = leading

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if self._leading():
                try:
                    await self.reconcile()
                except DependencyError as exc:
                    log.warning("cannot reconcile concurrency slots now: %s", exc)
            await sleep_or_stop(stopping, self.interval)

    async def reconcile(self) -> None:
        for label in await self.slots.slot_sets():
            parsed = parse_label(label)
            if parsed is None:
                continue
            holders = await self.slots.holders(label)
            found = await stages(self.store, holders)
            over = [k for k in holders if k not in found or found[k].terminal]
            await self.slots.forget(label, over)
            held = set(holders)
            missing = [k for k in await running(self.store, *parsed) if k not in held]
            await self.slots.add(label, missing)
            if over or missing:
                CORRECTED.labels("released").inc(len(over))
                CORRECTED.labels("taken").inc(len(missing))
                log.info(
                    "concurrency slots reconciled",
                    extra={"limit": label, "released": len(over), "taken": len(missing)},
                )
