"""What the maintainer does to runs: checkpoint transitions, batched, and Job deletions.

The watch handlers must stay tiny (a shard produces ten and more events per run), so they
never wait for the store: they :meth:`Actions.submit` a transition and return. One writer
task takes everything submitted since its last write and applies it with one statement
(:meth:`CheckpointStore.transition_skipping_held`), so at any rate the store sees a few
round trips a second. Sweeps, which want to know the outcome, :meth:`Actions.apply` a batch and
wait for it.

Guarantees:

* **Nothing finished is changed.** Every move is a compare-and-set in SQL: the store
  refuses it for finished runs (and, with ``expect``, for runs that moved on), so a late
  or repeated action — by this process or a second maintainer that briefly believes it
  leads — changes nothing.
* **Only the leader writes.** A batch is dropped, not written, when this process is no
  longer the leader; whatever it was about, the next leader finds again.
* **One line and one count per change that happened**, naming the run, the action and
  the reason; refused ones are counted as ``unchanged`` and not logged.
* **Never part of a lock cycle.** Runs another writer holds at that instant are skipped,
  not waited for (``SKIP LOCKED``), and tried again with the next batch: the request
  paths' batched writes lock rows in no particular order, and waiting on them could
  deadlock.
* A store outage keeps the batch (up to a bound) and retries it with back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prometheus_client import Counter

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError, ShardRejected, ShardThrottled
from nexus.core.retrying import job_name
from nexus.core.runs import Stage, Transition
from nexus.core.shards import ShardClient
from nexus.core.waiting import Backoff, first_of, sleep_or_stop

log = logging.getLogger(__name__)

ACTIONS = Counter(
    "nexus_maintainer_actions_total",
    "Changes the maintainer made to runs, by action and shard.",
    ["action", "shard"],
)
UNCHANGED = Counter(
    "nexus_maintainer_unchanged_total",
    "Actions that changed nothing, by action: refused because the run had already moved"
    " on, or given up after another writer held the run at every try.",
    ["action"],
)
JOBS_DELETED = Counter(
    "nexus_maintainer_jobs_deleted_total", "Jobs the maintainer deleted, by shard.", ["shard"]
)
DROPPED = Counter(
    "nexus_maintainer_actions_dropped_total",
    "Actions dropped because this maintainer stopped leading or too many were waiting.",
)

BUSY = Counter(
    "nexus_maintainer_actions_busy_total",
    "Actions tried again because another writer held the run at that moment.",
)

_MAX_WAITING = 100_000
_MAX_TRIES = 5


@dataclass(frozen=True, slots=True)
class Act:
    """One intended change: the transition, why (metric label), where, and follow-ups."""

    change: Transition
    action: str
    shard: str
    delete_job: bool = False
    """Delete the run's Job once the change is applied, or refused (the run is over)."""
    tries: int = 0
    job: str = ""
    """The Job to delete, when it is not the current attempt's of the change."""


class Actions:
    """Applies :class:`Act`\\ s in batches, as long as this process leads."""

    def __init__(
        self,
        store: CheckpointStore,
        shards: dict[str, ShardClient],
        leading: Callable[[], bool],
    ) -> None:
        self.store = store
        self.shards = shards
        self._leading = leading
        self._waiting: list[Act] = []
        self._wake = asyncio.Event()
        self._busy = 0  # changes of the last batch tried again

    @property
    def waiting(self) -> int:
        """Acts submitted and not written yet (kept across a store outage, up to a bound)."""
        return len(self._waiting)

    def submit(self, act: Act) -> bool:
        """Queue ``act`` for the next batch; never waits. ``False`` when the queue is full
        (the store is far behind): the caller must not count the act as done."""
        if len(self._waiting) >= _MAX_WAITING:
            DROPPED.inc()  # sweeps and relists find it again
            return False
        self._waiting.append(act)
        self._wake.set()
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Write what is submitted until ``stopping``; a failing store is retried."""
        backoff = Backoff(first=0.4, cap=10.0)
        while True:
            if not self._waiting:
                if stopping.is_set():
                    return
                await first_of(self._wake, stopping)
                self._wake.clear()
                continue
            batch, self._waiting = self._waiting, []
            try:
                self._busy = 0
                await self.apply(batch)
                backoff.succeeded()
                if self._busy:
                    await asyncio.sleep(0.02)  # let the other writer finish with those runs
            except DependencyError as exc:
                log.warning("cannot write the maintainer's actions: %s", exc)
                if stopping.is_set():
                    return  # the next leader finds these runs again
                self._waiting[:0] = batch
                del self._waiting[_MAX_WAITING:]
                await sleep_or_stop(stopping, backoff.failed())

    async def apply(self, batch: Sequence[Act]) -> list[bool]:
        """Apply ``batch`` now; whether each change happened. Raises on a store failure.

        A run another writer held at that moment is tried again with the next batch (a
        few times; after that the next sweep or relist finds it again).
        """
        if not batch:
            return []
        if not self._leading():
            DROPPED.inc(len(batch))
            return [False] * len(batch)
        outcomes = await self.store.transition_skipping_held([a.change for a in batch])
        deletions: list[Act] = []
        for act, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                if act.tries < _MAX_TRIES:
                    BUSY.inc()
                    self._busy += 1
                    self.submit(replace(act, tries=act.tries + 1))
                else:  # left for the next sweep or relist, and its Job with it
                    UNCHANGED.labels(act.action).inc()
                continue
            if outcome:
                self._record(act)
            else:
                UNCHANGED.labels(act.action).inc()
            if act.delete_job:
                deletions.append(act)
        if deletions:
            await asyncio.gather(*(self._delete_job(a) for a in deletions))
        return [outcome is True for outcome in outcomes]

    def _record(self, act: Act) -> None:
        change = act.change
        ACTIONS.labels(act.action, act.shard).inc()
        level = logging.DEBUG if change.to in (Stage.RUNNING, Stage.BUFFERED) else logging.INFO
        log.log(
            level,
            "run %s: %s",
            change.to.value,
            act.action,
            extra={
                "requestId": str(change.id),
                "algorithm": change.algorithm,
                "action": act.action,
                "stage": change.to.value,
                "cause": change.cause,
                "details": change.details,
                "shard": act.shard,
            },
        )

    async def _delete_job(self, act: Act) -> None:
        client = self.shards.get(act.shard)
        if client is None:
            return
        name = act.job or job_name(act.change.id, act.change.at_attempt or 1)
        try:
            if await client.delete_job(name):
                JOBS_DELETED.labels(act.shard).inc()
                log.info(
                    "deleted the job of a finished run",
                    extra={"requestId": name, "shard": act.shard, "action": act.action},
                )
        except DependencyError as exc:
            # the sweep finds a finished run's Job still there only by its deadline check:
            # say so, the Job is bounded by its own activeDeadlineSeconds anyway
            log.warning(
                "could not delete the job: %s", exc, extra={"requestId": name, "shard": act.shard}
            )
        except (ShardRejected, ShardThrottled) as exc:
            log.warning(
                "the shard refused to delete the job: %s",
                exc,
                extra={"requestId": name, "shard": act.shard},
            )
