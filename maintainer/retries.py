"""Retries by failure class: a failed attempt a template's policy retries gets a new Job.

The watch (:mod:`maintainer.shardwatch`) hands over, without waiting, every failure of a
class a retry policy may retry (out of memory, a scheduling failure, a node lost: see
:mod:`maintainer.signals`); :class:`Retrier` reads the runs' checkpoints in one round
trip, asks :func:`nexus.core.retrying.decide`, and either starts the next attempt or ends
the run as it would have ended without a policy.

Guarantees:

* **Exactly one new attempt per failed attempt.** The next attempt is started by one
  compare-and-set on the attempt number in SQL (:meth:`CheckpointStore.retry`): a failure
  seen twice (relists, two maintainers that briefly both lead, a new leader after a crash)
  finds the run at the next attempt already and changes nothing. Its Job is created by the
  scheduler under the attempt's own name (``<id>-a<n>``), so pods that dispatch it twice
  make one Job.
* **Nothing lost in a crash.** The new attempt is committed before anything else happens;
  it is then queued on a live scheduler pod, ahead of newer runs. A crash between the two
  leaves a ``BUFFERED`` run in no queue, which the sweep of ``BUFFERED`` runs queues again
  (its Job, not yet made, is not there). A crash before the commit leaves the failure on
  the shard, where the next leader's watch sees it again.
* **Earlier attempts change nothing.** Whatever is decided about an attempt applies only
  while the run is at that attempt (``at_attempt``); a late verdict on an earlier Job is
  dropped, and a waiting Job of an attempt that is over is deleted.
* **Only the leader acts**, as for every other change of the maintainer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prometheus_client import Counter

from maintainer.actions import Act, Actions
from nexus.core.errors import DependencyError, NexusError
from nexus.core.queues import AHEAD, QueueBackend, QueuedRun
from nexus.core.retrying import FailureClass, GiveUp, Retry, decide, job_name, record
from nexus.core.runs import RunKey, Stage, Transition
from nexus.core.waiting import Backoff, first_of, sleep_or_stop

log = logging.getLogger(__name__)

RETRIED = Counter(
    "nexus_maintainer_retries_total",
    "New attempts of failed runs started by their template's retry policy, by failure class"
    " and shard.",
    ["failure_class", "shard"],
)

_MAX_WAITING = 100_000


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt of a run failed for a reason a retry policy may retry, and how the run
    ends if it is not retried."""

    algorithm: str
    id: UUID
    attempt: int
    shard: str
    failure_class: FailureClass
    stage: Stage
    cause: str
    details: str
    action: str
    delete_job: bool
    """Delete the attempt's Job once decided: it would otherwise wait on (an image that
    will not pull, a pod no node takes)."""
    only_if_retried: bool = False
    """Without a policy for the class, leave the run as it is (an unschedulable pod waits)."""

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)

    @property
    def job(self) -> str:
        return job_name(self.id, self.attempt)


class Retrier:
    """Decides retryable failures for the leader: a new attempt, or the run's end."""

    def __init__(
        self,
        actions: Actions,
        queues: QueueBackend,
        leading: Callable[[], bool],
    ) -> None:
        self.actions = actions
        self.store = actions.store
        self.queues = queues
        self._leading = leading
        self._waiting: list[Failure] = []
        self._wake = asyncio.Event()
        self._next_pod = 0

    def submit(self, failure: Failure) -> bool:
        """Queue ``failure`` for a decision; never waits. ``False`` when too many wait."""
        if len(self._waiting) >= _MAX_WAITING:
            return False  # the failure is seen again at the next relist
        self._waiting.append(failure)
        self._wake.set()
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Decide what is submitted until ``stopping``; a failing store is retried."""
        backoff = Backoff(first=0.4, cap=10.0)
        while not stopping.is_set():
            if not self._waiting:
                await first_of(self._wake, stopping)
                self._wake.clear()
                continue
            batch, self._waiting = self._waiting, []
            try:
                await self.handle(batch)
                backoff.succeeded()
            except DependencyError as exc:
                log.warning("cannot decide retries now: %s", exc)
                self._waiting[:0] = batch
                del self._waiting[_MAX_WAITING:]
                await sleep_or_stop(stopping, backoff.failed())

    async def handle(self, batch: Sequence[Failure]) -> None:
        """Decide ``batch`` now. Raises :class:`DependencyError` when the store fails
        before anything was decided."""
        if not batch or not self._leading():
            return
        found = await self.store.get_many({f.key for f in batch})
        ends: list[Act] = []
        queued: dict[str, list[RunKey]] = defaultdict(list)
        over: list[Failure] = []  # attempts already over, whose Jobs wait on
        for failure in batch:
            run = found.get(failure.key)
            if run is None or run.stage.terminal or run.attempt != failure.attempt:
                if failure.delete_job:  # the attempt is over: its Job would wait on
                    over.append(failure)
                continue
            decision = decide(run.applied_configuration, run.retries, failure.failure_class)
            match decision:
                case Retry(delay=delay, memory=memory):
                    now = datetime.now(UTC)
                    retry_at = now + timedelta(seconds=delay) if delay > 0 else None
                    old_memory = run.applied_configuration.get("memoryLimit")
                    failed = record(
                        run.id, run.attempt, failure.failure_class, failure.cause,
                        failure.details, now,
                        memory=old_memory if memory else None, retry_at=retry_at,
                    )  # fmt: skip
                    shard = await self.store.retry(
                        run.key, run.attempt, failed, memory=memory, retry_at=retry_at
                    )
                    if shard is None:
                        continue  # decided by another process, or the run moved on
                    RETRIED.labels(failure.failure_class, shard).inc()
                    log.info(
                        "run retried: %s",
                        failure.failure_class,
                        extra={
                            "requestId": str(run.id),
                            "algorithm": run.algorithm,
                            "action": "retried",
                            "attempt": run.attempt + 1,
                            "failureClass": failure.failure_class,
                            "cause": failure.cause,
                            "memoryLimit": memory,
                            "delay": delay,
                        },
                    )
                    queued[shard].append(run.key)
                    if failure.delete_job:
                        over.append(failure)
                case GiveUp(why=why):
                    if failure.only_if_retried and not why:
                        continue  # the class is not retried here: the run waits on
                    details = f"{failure.details}; {why}" if why else failure.details
                    change = Transition(
                        failure.algorithm, failure.id, failure.stage, cause=failure.cause,
                        details=details, at_attempt=failure.attempt,
                    )  # fmt: skip
                    ends.append(
                        Act(
                            change,
                            failure.action,
                            failure.shard,
                            failure.delete_job,
                            job=failure.job,
                        )
                    )
        await self.actions.apply(ends)
        await asyncio.gather(*(self._delete(f) for f in over))
        for shard, keys in queued.items():
            await self._queue(shard, keys)

    async def _queue(self, shard: str, keys: list[RunKey]) -> None:
        """Queue the new attempts on a live pod, ahead of newer runs; when that cannot be
        done now, the sweep of ``BUFFERED`` runs does it."""
        try:
            pods = await self.queues.pods()
            if not pods.live:
                log.warning("no live scheduler pod to queue retried runs on; the sweep will")
                return
            pod = pods.live[self._next_pod % len(pods.live)]
            self._next_pod += 1
            await self.queues.queue(pod).push([QueuedRun(shard, k, 0.0, AHEAD) for k in keys])
        except DependencyError as exc:
            log.warning("cannot queue retried runs now (the sweep will): %s", exc)

    async def _delete(self, failure: Failure) -> None:
        client = self.actions.shards.get(failure.shard)
        if client is None:
            return
        try:
            await client.delete_job(failure.job)
        except NexusError as exc:
            log.warning(
                "could not delete the job of a failed attempt: %s",
                exc,
                extra={"requestId": str(failure.id), "job": failure.job},
            )
