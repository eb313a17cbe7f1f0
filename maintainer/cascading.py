"""Cancelling a parent cancels its children, even when the scheduler that began it died.

A scheduler that cancels a run writes the parent's ``CANCELLED`` first and then cancels
every unfinished run below it (:mod:`nexus.scheduler.cancelling`). Only the first write
is durable before the answer: a scheduler that dies in between leaves children queued or
running under a cancelled parent. The parent's ``CANCELLED`` is the durable record of
the intent, so the leader's sweep finishes the work: every unfinished run whose parent is
``CANCELLED`` and that was not changed for :data:`GRACE` (the scheduler's own cascade
has had its chance) is cancelled, naming its parent as the scheduler does, and its Job
deleted. A grandchild follows in the next sweep, once its parent is cancelled.

Guarantees: only runs whose parent's cancellation is committed are touched; each change is
a compare-and-set through :class:`maintainer.actions.Actions`, so a child that finished
meanwhile stays as it finished; at most ``limit`` children a sweep, the oldest first.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from maintainer.actions import Act, Actions
from nexus.core.runs import Stage, Transition
from nexus.core.sweeps import Sweeps

log = logging.getLogger(__name__)

GRACE = timedelta(seconds=5)
"""How long a child of a cancelled parent is left to the scheduler that cancelled the
parent: its own cascade takes milliseconds."""


async def cancel_children_of_cancelled(sweeps: Sweeps, actions: Actions, limit: int) -> int:
    """One sweep: cancel up to ``limit`` unfinished children of cancelled parents; how many
    were found."""
    found = await sweeps.children_of_cancelled(GRACE, limit)
    acts: list[Act] = []
    for row, parent, details in found:
        why = f"parent run {parent.id} of algorithm {parent.algorithm!r} was cancelled"
        change = Transition(
            row.algorithm, row.id, Stage.CANCELLED, cause="cancelled",
            details=f"{why}: {details}" if details else why,
        )  # fmt: skip
        has_job = row.stage != Stage.NEW  # queued runs may be being dispatched
        acts.append(Act(change, "parent_cancelled", row.shard or "", has_job, job=row.job))
    cancelled = sum(await actions.apply(acts))  # counted as actions, "parent_cancelled"
    if cancelled:
        log.warning("cancelled %d runs whose parent had been cancelled without them", cancelled)
    return len(found)
