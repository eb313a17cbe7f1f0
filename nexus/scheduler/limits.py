"""Concurrency limits: at most N runs RUNNING per algorithm, per workgroup, per caller.

Limits come from the template (``spec.concurrency.maxRunning``), the workgroup (the same
field) and the ``teams`` settings (``callers.<caller>.max_running``, else
``default_max_running``). They are counted in Redis by :mod:`nexus.core.slots`, exactly
across every scheduler pod:

* the dispatcher takes a run's slots before it creates the run's Job (:meth:`admit`); a
  run whose limit is full is parked — it waits, held by its pod, in the order it came —
  and the rest of the batch goes on;
* a run whose Job was not made after all gives its slots back (:meth:`release`);
* every ``limit_check_interval`` one pod (a lease per limit) looks at each limit runs
  wait for: the runs holding its slots that have finished (their checkpoints say so) are
  let go, and as many parked runs as there are free slots go back to their queues, ahead
  of newer runs, to take them;
* the maintainer reconciles the slot sets with the checkpoints (``maintainer/limits.py``).

While a run waits, its metadata answer says for which limit and in which place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TypedDict

from prometheus_client import Counter

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.queues import QueuedRun
from nexus.core.runs import Checkpoint, RunKey
from nexus.core.slots import Limit, LimitKind, Slots, parse_label
from nexus.core.usage import stages
from nexus.core.waiting import first_of, sleep_or_stop
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.teamsettings import TeamSettings

log = logging.getLogger(__name__)

PARKED = Counter(
    "nexus_limit_parked_total", "Runs that waited for a full concurrency limit, by kind.", ["kind"]
)
LET_GO = Counter(
    "nexus_limit_released_total", "Parked runs let go to take free slots, by kind.", ["kind"]
)


IDLE_CHECKS = 4
"""While no run waits for a limit, the check loop looks every this many intervals."""


class ConcurrencyWait(TypedDict):
    """Why a queued run is not dispatched: the limit it waits for (metadata answer)."""

    limit: str
    """``algorithm/<name>``, ``workgroup/<name>`` or ``caller/<name>``."""
    maxRunning: int | None
    running: int
    """Slots of the limit taken now."""
    position: int
    """Its place among the runs waiting for the limit (0: next)."""


class ConcurrencyLimits:
    """Takes, gives back and lets go of concurrency slots for one scheduler pod."""

    def __init__(
        self,
        slots: Slots,
        catalog: Catalog,
        teams: TeamSettings,
        store: CheckpointStore,
        pod: str,
    ) -> None:
        self.slots = slots
        self.catalog = catalog
        self.teams = teams
        self.store = store
        self.pod = pod
        self._parked = asyncio.Event()
        """Set when this pod parks runs: the check loop looks at once."""

    def size(self, label: str) -> int | None:
        """The size of the limit ``label`` now, or ``None`` when it has none."""
        parsed = parse_label(label)
        return None if parsed is None else self._size(*parsed)

    def _size(self, kind: LimitKind, name: str) -> int | None:
        match kind:
            case "algorithm":
                template = self.catalog.template(name)
                return template.max_running if template else None
            case "workgroup":
                workgroup = self.catalog.workgroup(name)
                return workgroup.max_running if workgroup else None
            case "caller":
                configured = self.teams.policy(name).max_running
                return configured if configured is not None else self.teams.default_max_running
            case "unfinished":  # a quota, not a concurrency limit: nothing waits for it
                return None

    def limits_of(self, run: Checkpoint) -> list[Limit]:
        """The limits ``run`` counts against."""
        found = []
        kinds: tuple[tuple[LimitKind, str], ...] = (
            ("algorithm", run.algorithm),
            ("workgroup", run.applied_configuration.get("workgroup", "")),
            ("caller", run.caller),
        )
        for kind, name in kinds:
            size = self._size(kind, name)
            if size is not None:
                found.append(Limit(kind, name, size))
        return found

    async def admit(
        self, runs: list[tuple[QueuedRun, Checkpoint]]
    ) -> list[tuple[QueuedRun, Checkpoint]]:
        """The runs that hold their slots now; the others are parked."""
        # The runs of a batch share a few (algorithm, workgroup, caller): each one's limits
        # are looked up once per batch, not once per run (the catalog and the settings
        # cannot change before this returns: nothing is awaited until they are all known).
        known: dict[tuple[str, str, str], list[Limit]] = {}
        limited = []
        for run, c in runs:
            which = (c.algorithm, c.applied_configuration.get("workgroup", ""), c.caller)
            limits = known.get(which)
            if limits is None:
                limits = known[which] = self.limits_of(c)
            limited.append((run, c, limits))
        wanting = [(run.key, limits) for run, _, limits in limited if limits]
        if not wanting:
            return runs
        full = iter(await self.slots.reserve(wanting))
        admitted, parked = [], []
        for run, checkpoint, limits in limited:
            blocked = next(full) if limits else None
            if blocked is None:
                admitted.append((run, checkpoint))
            else:
                parked.append((run, blocked))
                PARKED.labels(blocked.kind).inc()
        if parked:
            await self.slots.park(self.pod, parked)
            self._parked.set()
        return admitted

    async def release(self, runs: Sequence[Checkpoint]) -> None:
        """Give back the slots of runs whose Job was not made."""
        held = [(c.key, limits) for c in runs if (limits := self.limits_of(c))]
        if held:
            await self.slots.release(held)

    async def waiting(self, run: Checkpoint) -> ConcurrencyWait | None:
        """The limit ``run`` waits for, if it is parked."""
        labels = [
            f"algorithm/{run.algorithm}",
            f"workgroup/{run.applied_configuration.get('workgroup', '')}",
            f"caller/{run.caller}",
        ]
        found = await self.slots.waiting(run.key, labels)
        if found is None:
            return None
        return {
            "limit": found.label,
            "maxRunning": self.size(found.label),
            "running": found.taken,
            "position": found.position,
        }

    async def run(self, stopping: asyncio.Event) -> None:
        """Let parked runs go as slots free, until ``stopping``.

        While no run waits for any limit, it looks only every :data:`IDLE_CHECKS` intervals
        (at rest a pod then costs next to nothing), or at once when this pod parks a run:
        a pod that parks a run looks at its limit, so none waits on another pod's idleness.
        """
        interval = self.teams.limit_check_interval
        while not stopping.is_set():
            self._parked.clear()
            labels: list[str] = []
            try:
                labels = list(await self.slots.limited())
                for label in labels:
                    await self._check(label, interval)
            except DependencyError as exc:
                log.warning("cannot look at the runs waiting for concurrency limits: %s", exc)
            if labels:
                await sleep_or_stop(stopping, interval)
            else:
                await first_of(self._parked, stopping, timeout=interval * IDLE_CHECKS)

    async def _check(self, label: str, interval: float) -> None:
        if not await self.slots.backend.hold_lease(f"limit:{label}", self.pod, interval):
            return  # another pod looks at this one now
        size = self.size(label)
        taken = await self.slots.taken(label)
        if size is not None and taken >= size:
            await self._forget_finished(label)
            taken = await self.slots.taken(label)
        room = 10_000 if size is None else size - taken  # no limit any more: all go
        if room > 0:
            let_go = await self.slots.unpark(label, room)
            if let_go:
                LET_GO.labels(label.partition("/")[0]).inc(let_go)
                log.info("runs waiting for a limit let go", extra={"limit": label, "runs": let_go})

    async def _forget_finished(self, label: str) -> None:
        """Let go of the slots held by runs that finished (or no longer exist)."""
        holders = await self.slots.holders(label)
        found = await stages(self.store, holders)
        over: list[RunKey] = [k for k in holders if k not in found or found[k].terminal]
        await self.slots.forget(label, over)
