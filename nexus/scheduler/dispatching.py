"""Dispatch: this pod's queued runs become Kubernetes Jobs, at the rate each shard allows.

One loop per shard pops runs in batches (a popped run stays in this pod's in-flight set in
Redis until its outcome is recorded, so a crash loses nothing), reads their checkpoints in
one round trip, skips those that are no longer ``BUFFERED`` (cancelled, or already
dispatched by a previous owner), takes creation tokens from the shard's shared throttle and
creates the Jobs with bounded concurrency. Outcomes:

* created (201) or already there (409) → ``RUNNING`` with ``job_uid``, ``shard``,
  ``sent_at`` — unless the run was cancelled meanwhile, then its Job is deleted;
* 429 → the shard is paused for its ``Retry-After`` and slowed for every pod; the run goes
  back to the queue with its priority, not counted as an attempt;
* another 4xx → ``SCHEDULING_FAILED`` with the cluster's message (it will keep refusing);
* 5xx or a network error → one more attempt recorded, back to the queue after an
  exponential backoff, ahead of newer runs; ``SCHEDULING_FAILED`` after the last attempt.

Checkpoint writes are group-committed and only after they land are runs removed from the
in-flight set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from prometheus_client import Counter, Histogram

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError, ShardUnavailable
from nexus.core.logs import request_id
from nexus.core.queues import QueuedRun, RunQueue
from nexus.core.runs import Checkpoint, RunKey, Stage, Transition
from nexus.core.shards import ShardClient
from nexus.core.templates import Catalog
from nexus.scheduler.jobs import ParentJob, RunLinks, build_job, serialise
from nexus.scheduler.links import Links
from nexus.scheduler.settings import SchedulerSection
from nexus.scheduler.throttling import ShardThrottle

log = logging.getLogger(__name__)

CREATES = Counter(
    "nexus_job_creates_total", "Job creation calls by shard and outcome.", ["shard", "outcome"]
)
SKIPPED = Counter(
    "nexus_dispatch_skipped_total", "Queued runs dropped because they were no longer BUFFERED."
)
QUEUE_SECONDS = Histogram(
    "nexus_dispatch_delay_seconds",
    "Time from acceptance to Job creation.",
    ["shard"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    run: QueuedRun
    checkpoint: Checkpoint
    kind: str  # created | exists | throttled | rejected | failed
    uid: str | None = None
    message: str = ""
    retry_after: float = 0.0


class Dispatcher:
    """Dispatches this pod's queue, one loop per shard."""

    def __init__(
        self,
        *,
        queue: RunQueue,
        store: CheckpointStore,
        shards: dict[str, ShardClient],
        throttles: dict[str, ShardThrottle],
        links: Links,
        catalog: Catalog,
        settings: SchedulerSection,
    ) -> None:
        self.queue = queue
        self.store = store
        self.shards = shards
        self.throttles = throttles
        self.links = links
        self.catalog = catalog
        self.settings = settings
        self._wake = {shard: asyncio.Event() for shard in shards}
        self._creating = {
            shard: asyncio.Semaphore(settings.dispatch_concurrency) for shard in shards
        }

    def notify(self, shard: str) -> None:
        """New runs are on the queue for ``shard``."""
        event = self._wake.get(shard)
        if event is not None:
            event.set()

    async def run(self, stopping: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            for shard in self.shards:
                group.create_task(self._loop(shard, stopping), name=f"dispatch:{shard}")

    async def _loop(self, shard: str, stopping: asyncio.Event) -> None:
        batches: set[asyncio.Task[None]] = set()
        wake = self._wake[shard]
        gate = asyncio.Lock()
        failures = 0
        # Take no more than the throttle can soon let through: what stays on the queue keeps
        # its place (and a queue position a client can see), and other pods can adopt it.
        count = min(self.settings.dispatch_batch, max(1, int(self.throttles[shard].burst)))
        while not stopping.is_set():
            for finished in [t for t in batches if t.done()]:
                batches.discard(finished)
                finished.result()  # a bug in a batch stops the loop, and so the process
            if len(batches) >= 2:  # overlap one batch's creations with the next pop
                await asyncio.wait(batches, return_when=asyncio.FIRST_COMPLETED)
                continue
            # One batch at a time waits for creation tokens; the next is popped only when it
            # has them, so runs wait on the queue, not in this process.
            await gate.acquire()
            wake.clear()
            try:
                runs = await self.queue.pop(shard, count)
                failures = 0
            except DependencyError as exc:
                gate.release()
                failures += 1
                log.warning("cannot pop the queue: %s", exc, extra={"shard": shard})
                await _wait(stopping, min(5.0, 0.1 * 2**failures))
                continue
            if not runs:
                gate.release()
                await _wait(wake, self.settings.dispatch_idle_poll, stopping)
                continue
            batches.add(asyncio.create_task(self._dispatch(shard, runs, gate, stopping)))
            if len(runs) < count and self.settings.dispatch_linger:
                await _wait(stopping, self.settings.dispatch_linger)
        if batches:
            await asyncio.gather(*batches)

    async def _dispatch(
        self, shard: str, runs: list[QueuedRun], gate: asyncio.Lock, stopping: asyncio.Event
    ) -> None:
        try:
            await self._dispatch_batch(shard, runs, gate, stopping)
        except DependencyError as exc:
            # Whatever was not settled is still in flight in Redis: hand it back to the queue.
            log.warning("dispatch batch failed; requeueing: %s", exc, extra={"shard": shard})
            await self._give_back(shard, runs, 1.0, stopping)

    async def _give_back(
        self, shard: str, runs: list[QueuedRun], delay: float, stopping: asyncio.Event
    ) -> None:
        attempt = 0
        while True:
            try:
                await self.queue.delay(shard, runs, delay)
                return
            except DependencyError as exc:
                if stopping.is_set():
                    return  # still in flight: the pod's queue is handed over or adopted
                attempt += 1
                log.warning("cannot requeue runs yet: %s", exc, extra={"shard": shard})
                await _wait(stopping, min(5.0, 0.2 * 2**attempt))

    async def _dispatch_batch(
        self, shard: str, runs: list[QueuedRun], gate: asyncio.Lock, stopping: asyncio.Event
    ) -> None:
        creations: list[asyncio.Task[Outcome]] = []
        try:
            found = await self.store.get_many(r.key for r in runs)
            ready: list[tuple[QueuedRun, Checkpoint]] = []
            stale: list[QueuedRun] = []
            for run in runs:
                checkpoint = found.get(run.key)
                if checkpoint is None or checkpoint.stage != Stage.BUFFERED:
                    stale.append(run)
                else:
                    ready.append((run, checkpoint))
            if stale:
                SKIPPED.inc(len(stale))
                await self.queue.settle(stale)
            parents = await self._parents([c for _, c in ready])
            throttle = self.throttles[shard]
            pending = ready
            while pending and not stopping.is_set():
                granted = await throttle.acquire(len(pending), stopping)
                chunk, pending = pending[:granted], pending[granted:]
                for run, checkpoint in chunk:
                    await self._creating[shard].acquire()
                    creations.append(
                        asyncio.create_task(
                            self._create(shard, run, checkpoint, parents.get(checkpoint.key))
                        )
                    )
        except BaseException:
            await asyncio.gather(*creations, return_exceptions=True)
            raise
        finally:
            gate.release()
        outcomes = await asyncio.gather(*creations)
        if pending:  # stopping: not created, give them back at once
            await self._give_back(shard, [r for r, _ in pending], 0, stopping)
        await self._record(shard, outcomes, stopping)

    async def _parents(self, checkpoints: list[Checkpoint]) -> dict[RunKey, ParentJob]:
        """The parent Job of each run whose parent was dispatched to the same shard."""
        wanted = {
            c.key: RunKey(c.parent["algorithmName"], UUID(c.parent["requestId"]))
            for c in checkpoints
            if c.parent
        }
        if not wanted:
            return {}
        found = await self.store.get_many(set(wanted.values()))
        result = {}
        for child, parent_key in wanted.items():
            parent = found.get(parent_key)
            child_shard = next(c for c in checkpoints if c.key == child).applied_configuration[
                "shard"
            ]
            if parent and parent.job_uid and parent.shard == child_shard:
                result[child] = ParentJob(str(parent.id), parent.job_uid)
        return result

    async def _create(
        self, shard: str, run: QueuedRun, checkpoint: Checkpoint, parent: ParentJob | None
    ) -> Outcome:
        request_id.set(str(run.key.id))
        try:
            try:
                body = self._job(shard, checkpoint, parent)
            except (KeyError, TypeError, ValueError) as exc:
                # A checkpoint written by hand or by an older version: it will never make
                # a Job, and it must not stop the dispatch of every other run.
                CREATES.labels(shard, "rejected").inc()
                message = f"its configuration cannot make a Job ({exc!r})"
                return Outcome(run, checkpoint, "rejected", message=message)
            result = await self.shards[shard].create_job(body)
        except ShardUnavailable as exc:
            CREATES.labels(shard, "failed").inc()
            return Outcome(run, checkpoint, "failed", message=str(exc))
        finally:
            self._creating[shard].release()
        if result.created:
            CREATES.labels(shard, "created" if result.status != 409 else "exists").inc()
            QUEUE_SECONDS.labels(shard).observe(max(0.0, time.time() - run.priority / 1000))
            return Outcome(run, checkpoint, "created", uid=result.uid)
        if result.status == 429:
            CREATES.labels(shard, "throttled").inc()
            return Outcome(run, checkpoint, "throttled", retry_after=result.retry_after)
        if result.status >= 500:
            CREATES.labels(shard, "failed").inc()
            return Outcome(run, checkpoint, "failed", message=f"{result.status} {result.message}")
        CREATES.labels(shard, "rejected").inc()
        return Outcome(run, checkpoint, "rejected", message=f"{result.status} {result.message}")

    def _job(self, shard: str, checkpoint: Checkpoint, parent: ParentJob | None) -> bytes:
        links = RunLinks(
            input_url=self.links.input_url(checkpoint),
            result_upload_url=self.links.result_upload_url(checkpoint),
            receiver_url=self.links.receiver_url(shard),
            run_token=self.links.run_token(checkpoint),
        )
        workgroup = self.catalog.workgroup(checkpoint.applied_configuration["workgroup"])
        job = build_job(
            checkpoint,
            links,
            workgroup=workgroup,
            parent=parent,
            ttl_after_finished=self.settings.job_ttl_after_finished,
        )
        return serialise(job)

    async def _record(self, shard: str, outcomes: list[Outcome], stopping: asyncio.Event) -> None:
        now = datetime.now(UTC)
        changes: list[Transition] = []
        throttled: list[QueuedRun] = []
        retry: dict[float, list[QueuedRun]] = {}
        retry_after = 0.0
        for o in outcomes:
            alg, rid = o.checkpoint.algorithm, o.checkpoint.id
            if o.kind == "created":
                changes.append(
                    Transition(alg, rid, Stage.RUNNING, job_uid=o.uid, shard=shard, sent_at=now)
                )
            elif o.kind == "rejected":
                changes.append(
                    Transition(
                        alg,
                        rid,
                        Stage.SCHEDULING_FAILED,
                        cause="scheduling failed",
                        details=f"shard {shard} refused the job: {o.message}",
                        shard=shard,
                    )
                )
            elif o.kind == "throttled":
                throttled.append(o.run)
                retry_after = max(retry_after, o.retry_after)
            else:
                attempts = o.checkpoint.attempts + 1
                if attempts >= self.settings.max_dispatch_attempts:
                    changes.append(
                        Transition(
                            alg,
                            rid,
                            Stage.SCHEDULING_FAILED,
                            attempts=1,
                            cause="scheduling failed",
                            details=f"shard {shard} could not create the job "
                            f"after {attempts} attempts: {o.message}",
                            shard=shard,
                        )
                    )
                else:
                    changes.append(Transition(alg, rid, Stage.BUFFERED, attempts=1))
                    delay = min(
                        self.settings.retry_max_delay,
                        self.settings.retry_base_delay * 2 ** (attempts - 1),
                    )
                    retry.setdefault(delay, []).append(o.run)
        if throttled:
            await self.throttles[shard].rejected(retry_after)
            await self._give_back(shard, throttled, retry_after, stopping)
        applied = await asyncio.gather(*(self.store.transition(c) for c in changes))
        retried = {r.key for runs in retry.values() for r in runs}
        settled = [
            o.run
            for o in outcomes
            if o.kind in ("created", "rejected")
            or (o.kind == "failed" and o.run.key not in retried)
        ]
        refused = [
            c for c, ok in zip(changes, applied, strict=True) if not ok and c.to == Stage.RUNNING
        ]
        if refused:
            await self._undo(shard, refused)
        for delay, runs in retry.items():
            await self._give_back(shard, runs, delay, stopping)
        await self.queue.settle(settled)

    async def _undo(self, shard: str, refused: list[Transition]) -> None:
        """Jobs created for runs that finished meanwhile: delete those that were cancelled."""
        current = await self.store.get_many(c.key for c in refused)
        for change in refused:
            run = current.get(change.key)
            if run is not None and run.stage == Stage.CANCELLED:
                with contextlib.suppress(DependencyError):
                    await self.shards[shard].delete_job(str(change.id), "Background")
                    log.info(
                        "deleted the job of a run cancelled while it was created",
                        extra={"requestId": str(change.id)},
                    )


async def _wait(event: asyncio.Event, seconds: float, also: asyncio.Event | None = None) -> None:
    """Until ``event`` (or ``also``) is set, or ``seconds`` have passed."""
    waiters = [asyncio.ensure_future(event.wait())]
    if also is not None:
        waiters.append(asyncio.ensure_future(also.wait()))
    _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    for waiter in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
