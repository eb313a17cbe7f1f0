"""Dispatch: this pod's queued runs become Kubernetes Jobs, at the rate each shard allows.

One loop per shard pops runs in batches (a popped run stays in this pod's in-flight set in
Redis until its outcome is recorded, so a crash loses nothing), reads their checkpoints in
one round trip, skips those that are no longer ``BUFFERED`` (cancelled, or already
dispatched by a previous owner), takes creation tokens from the shard's shared throttle and
creates the Jobs with bounded concurrency. Runs that waited for their tokens longer than
:data:`RECHECK_AFTER` are read again first, so a run cancelled while it waited is never
created. Outcomes:

* created (201) or already there (409) → ``RUNNING`` with ``job_uid``, ``shard``,
  ``sent_at`` — unless the run was cancelled (or failed) meanwhile: then the run keeps
  its stage but gains those facts all the same (its Job was made), and a cancelled run's
  Job is deleted (when the store cannot take the record, once it can say which runs
  ended);
* 429 → the shard is paused for its ``Retry-After`` and slowed for every pod; the run goes
  back to the queue with its priority, not counted as an attempt;
* another 4xx → ``SCHEDULING_FAILED`` with the cluster's message (it will keep refusing);
* 5xx, 401 (credentials being renewed) or a network error → one more attempt recorded,
  back to the queue after an exponential backoff, ahead of newer runs. After the last
  attempt the Job is looked up, since a failed call may have created it all the same: if
  it is there the run is ``RUNNING``, if it is not, ``SCHEDULING_FAILED``. If the shard
  cannot tell, nothing is decided: the run is tried again every ``retry_max_delay``
  until the shard answers (a 409 then shows the Job was made), or until the maintainer
  ends its wait in the queue.

A run started in several copies (``speculativeAttempts``) has its other copies created once
its first Job is, each with a creation token of its own; a copy that cannot be created is
logged and left out (the run has its first Job). The maintainer deletes the others once
one of them ends (:mod:`maintainer.shardwatch`).

Failures are written only over ``BUFFERED`` (compare-and-set), so a pod that still holds a
run another pod has adopted and dispatched cannot fail it.

A retried run (:mod:`nexus.core.retrying`) is dispatched as its current attempt: the Job is
named after it, ``RUNNING`` is written only while the run is still at that attempt (a pod
that made an earlier attempt's Job late changes nothing, and that Job is deleted), and an
attempt that must wait (``retry_at``) is given back to the queue until it is due.

Checkpoint writes are group-committed and only after they land are runs removed from the
in-flight set, by the loop's next pop (in its round trip; a loop that stops removes them
itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal, assert_never

from prometheus_client import Counter

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import CheckpointRejected, DependencyError, ShardUnavailable
from nexus.core.labels import copy_name, copy_names
from nexus.core.logs import request_id
from nexus.core.meters import LoopCounter, LoopHistogram
from nexus.core.queues import QueuedRun, RunQueue
from nexus.core.retrying import job_name
from nexus.core.runs import Checkpoint, Kept, RunKey, Stage, Transition, record
from nexus.core.shards import CALL_ERRORS, JOBS, ShardClient
from nexus.core.templates import Workgroup
from nexus.core.waiting import Backoff, first_of, sleep_or_stop
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.inputs import RecentInputs
from nexus.scheduler.jobs import JobBodies
from nexus.scheduler.limits import ConcurrencyLimits
from nexus.scheduler.links import Links
from nexus.scheduler.settings import SchedulerSection
from nexus.scheduler.throttling import ShardThrottle

log = logging.getLogger(__name__)

RECHECK_AFTER = 0.1
"""Seconds a batch may wait for creation tokens before its runs are read again: a run
cancelled while its batch waited is then seen before its Job is created. Time spent on
anything else (a busy event loop) does not count: an unthrottled shard reads once."""
ABANDONED = frozenset({Stage.CANCELLED, Stage.DEADLINE_EXCEEDED, Stage.SCHEDULING_FAILED})
"""Stages in which a run's Job, created while the stage changed, must not run."""

CREATES = LoopCounter(
    "nexus_job_creates_total", "Job creation calls by shard and outcome.", ["shard", "outcome"]
)
SKIPPED = Counter(
    "nexus_dispatch_skipped_total", "Queued runs dropped because they were no longer BUFFERED."
)
QUEUE_SECONDS = LoopHistogram(
    "nexus_dispatch_delay_seconds",
    "Time from acceptance to Job creation.",
    ["shard"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


OutcomeKind = Literal["created", "throttled", "rejected", "failed", "unknown"]
"""What became of one creation: ``created`` (or it existed already), ``throttled`` (429),
``rejected`` (another 4xx, or a configuration that cannot make a Job: it will keep being
refused), ``failed`` (5xx, 401, the network; tried again) or ``unknown`` (the last attempt
failed and the Job may exist all the same)."""


@record
class Outcome:
    run: QueuedRun
    checkpoint: Checkpoint
    kind: OutcomeKind
    uid: str | None = None
    message: str = ""
    retry_after: float = 0.0


def _transition(outcome: Outcome, to: Stage, shard: str, **recorded: Any) -> Transition:
    checkpoint = outcome.checkpoint
    return Transition(checkpoint.algorithm, checkpoint.id, to, shard=shard, **recorded)


def _ran(change: Transition, outcome: bool | Kept) -> bool:
    """Whether a refused RUNNING write's run, as the store answered it, ended in a way its
    Job may have run to (completed, failed) at that Job's attempt: the Job is then kept
    (to its TTL), and the run need not be read again to know it."""
    return (
        isinstance(outcome, Kept)
        and outcome.stage not in ABANDONED
        and outcome.attempt == change.at_attempt
    )


def _scheduling_failed(outcome: Outcome, shard: str, details: str, attempts: int = 0) -> Transition:
    """The run fails, if it is still waiting for its Job (never over another pod's)."""
    return _transition(
        outcome,
        Stage.SCHEDULING_FAILED,
        shard,
        attempts=attempts,
        cause="scheduling failed",
        details=details,
        expect=Stage.BUFFERED,
    )


def _another_attempt(outcome: Outcome) -> Transition:
    """One more attempt counted; the run stays ``BUFFERED`` (only if it still is)."""
    checkpoint = outcome.checkpoint
    return Transition(
        checkpoint.algorithm, checkpoint.id, Stage.BUFFERED, attempts=1, expect=Stage.BUFFERED
    )


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
        limits: ConcurrencyLimits | None = None,
        recent_inputs: RecentInputs | None = None,
    ) -> None:
        self.queue = queue
        self.recent_inputs = recent_inputs
        """Inline inputs this pod took lately: the small ones travel inside their Jobs."""
        self.limits = limits
        """Concurrency limits: a run's slots are taken before its Job is created."""
        self.store = store
        self.shards = shards
        self.throttles = throttles
        self.links = links
        self.catalog = catalog
        self.settings = settings
        self._wake = {shard: asyncio.Event() for shard in shards}
        self._settled: dict[str, list[QueuedRun]] = {shard: [] for shard in shards}
        """Runs whose outcome is recorded, taken off the in-flight set by the next pop."""
        self._gates = {shard: asyncio.Lock() for shard in shards}
        """Held from a pop until its batch has its creation tokens: no pop meanwhile."""
        self._creating = {
            shard: asyncio.Semaphore(settings.dispatch_concurrency) for shard in shards
        }
        self._retry = Backoff(first=settings.retry_base_delay, cap=settings.retry_max_delay)
        """The delay before a run's next attempt, by the attempts it has made."""
        self._background: set[asyncio.Task[None]] = set()  # undoing unrecorded batches
        self._bodies = JobBodies()
        """Job bodies made from one made before for the same configuration."""

    def notify(self, shard: str) -> None:
        """New runs are on the queue for ``shard``."""
        event = self._wake.get(shard)
        if event is not None:
            event.set()

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for shard in self.shards:
                    group.create_task(self._loop(shard, stopping), name=f"dispatch:{shard}")
        finally:  # they end when stopping is set; a crash ends them too
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _loop(self, shard: str, stopping: asyncio.Event) -> None:
        batches: set[asyncio.Task[None]] = set()
        wake = self._wake[shard]
        gate = self._gates[shard]
        backoff = Backoff(first=0.2, cap=5.0)  # while the queue cannot be popped
        # Take no more than the throttle can soon let through: what stays on the queue keeps
        # its place (and a queue position a client can see), and other pods can adopt it.
        count = min(self.settings.dispatch_batch, max(1, int(self.throttles[shard].burst)))
        # Idle, it looks ever less often for runs others put on its queue (adopted, queued
        # again by the maintainer): at rest a pod then costs next to nothing. Its own runs,
        # new or delayed, wake it at once or when due.
        s = self.settings
        idle = Backoff(
            first=s.dispatch_idle_poll, cap=max(s.dispatch_idle_poll, s.dispatch_idle_poll_max)
        )
        while not stopping.is_set():
            for finished in [t for t in batches if t.done()]:
                batches.discard(finished)
                finished.result()  # a bug in a batch stops the loop, and so the process
            if len(batches) >= 2:  # overlap one batch's creations with the next pop
                await first_of(*batches)
                continue
            # One batch at a time waits for creation tokens; the next is popped only when it
            # has them, so runs wait on the queue, not in this process.
            await gate.acquire()
            wake.clear()
            settled, self._settled[shard] = self._settled[shard], []
            try:
                runs = await self.queue.pop(shard, count, settled)
                backoff.succeeded()
            except DependencyError as exc:
                self._settled[shard][:0] = settled  # with the next pop
                gate.release()
                log.warning("cannot pop the queue: %s", exc, extra={"shard": shard})
                await sleep_or_stop(stopping, backoff.failed())
                continue
            if not runs:
                gate.release()
                await first_of(wake, stopping, timeout=idle.failed())
                continue
            idle.succeeded()
            batches.add(asyncio.create_task(self._dispatch(shard, runs, gate, stopping)))
            if len(runs) < count:  # the queue is empty: the next pop waits for work
                if self.settings.dispatch_linger:
                    await sleep_or_stop(stopping, self.settings.dispatch_linger)
                if not wake.is_set():  # nothing queued here since: no pop to find nothing
                    await first_of(wake, stopping, timeout=s.dispatch_idle_poll)
        if batches:
            await asyncio.gather(*batches)
        settled, self._settled[shard] = self._settled[shard], []
        try:
            await self.queue.settle(settled)
        except DependencyError as exc:  # in flight, handed over or adopted: passed over then
            log.warning("cannot settle dispatched runs: %s", exc, extra={"shard": shard})

    async def _settle(self, shard: str, runs: list[QueuedRun]) -> None:
        """``runs`` (of ``shard``) have their outcome recorded: off the in-flight set with
        the next pop, in its round trip (one call fewer per batch), which they bring about
        if none is coming; at once while a batch waits for creation tokens (no pop comes
        until it has them)."""
        if not runs:
            return
        if self._gates[shard].locked():
            await self.queue.settle(runs)
            return
        self._settled[shard].extend(runs)
        self.notify(shard)

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
        backoff = Backoff(first=0.4, cap=5.0)
        while True:
            try:
                await self.queue.delay(shard, runs, delay)
                # an idle loop may be waiting long: it looks again when these are due
                asyncio.get_running_loop().call_later(delay, self.notify, shard)
                return
            except DependencyError as exc:
                if stopping.is_set():
                    return  # still in flight: the pod's queue is handed over or adopted
                log.warning("cannot requeue runs yet: %s", exc, extra={"shard": shard})
                await sleep_or_stop(stopping, backoff.failed())

    async def _dispatch_batch(
        self, shard: str, runs: list[QueuedRun], gate: asyncio.Lock, stopping: asyncio.Event
    ) -> None:
        creations: list[asyncio.Task[Outcome]] = []
        loop = asyncio.get_running_loop()
        try:
            ready = await self._still_buffered(runs)
            if self.limits is not None:  # runs over a limit wait, parked, for a slot
                ready = await self.limits.admit(ready)
            throttle = self.throttles[shard]
            pending = ready
            waited = 0.0  # for creation tokens, since the checkpoints were read
            while pending and not stopping.is_set():
                asked = loop.time()
                granted = await throttle.acquire(len(pending), stopping)
                waited += loop.time() - asked
                chunk, pending = pending[:granted], pending[granted:]
                if waited > RECHECK_AFTER:  # cancelled meanwhile?
                    chunk = await self._still_buffered([r for r, _ in chunk])
                for run, checkpoint in chunk:
                    await self._creating[shard].acquire()
                    creations.append(
                        asyncio.create_task(self._create(shard, run, checkpoint, stopping))
                    )
        except BaseException:
            await asyncio.gather(*creations, return_exceptions=True)
            raise
        finally:
            gate.release()
        outcomes = await asyncio.gather(*creations)
        if pending:  # stopping: not created, give them back at once
            await self._release([c for _, c in pending])
            await self._give_back(shard, [r for r, _ in pending], 0, stopping)
        await self._record(shard, outcomes, stopping)

    async def _still_buffered(self, runs: list[QueuedRun]) -> list[tuple[QueuedRun, Checkpoint]]:
        """The runs still waiting for their Job, with their checkpoints; the others are
        settled (taken off the in-flight set)."""
        found = await self.store.get_many((r.key for r in runs), shared=True)
        ready: list[tuple[QueuedRun, Checkpoint]] = []
        stale: list[QueuedRun] = []
        later: dict[str, list[tuple[QueuedRun, float]]] = {}
        now = datetime.now(UTC)
        for run in runs:
            checkpoint = found.get(run.key)
            if checkpoint is None or checkpoint.stage != Stage.BUFFERED:
                stale.append(run)
            elif checkpoint.retry_at is not None and checkpoint.retry_at > now:
                wait = (checkpoint.retry_at - now).total_seconds()
                later.setdefault(run.shard, []).append((run, wait))
            else:
                ready.append((run, checkpoint))
        if stale:  # at once: this batch holds its gate, so no pop comes to carry them
            SKIPPED.inc(len(stale))
            await self.queue.settle(stale)
        for shard, waiting in later.items():  # a retry's delay: back when it is due
            for run, wait in waiting:
                await self.queue.delay(shard, [run], wait)
                asyncio.get_running_loop().call_later(wait, self.notify, shard)
        return ready

    async def _create(
        self,
        shard: str,
        run: QueuedRun,
        checkpoint: Checkpoint,
        stopping: asyncio.Event,
    ) -> Outcome:
        request_id.set(str(checkpoint.id))  # the store's UUID: formatted in C
        outcome = await self._call_create(shard, run, checkpoint)
        if outcome.kind == "failed" and self._last_attempt(checkpoint):
            outcome = await self._look_for_job(shard, outcome)
        if (
            outcome.kind == "created"
            and checkpoint.applied_configuration.get("speculativeAttempts", 1) > 1
        ):
            await self._create_copies(shard, checkpoint, stopping)
        return outcome

    async def _create_copies(
        self, shard: str, checkpoint: Checkpoint, stopping: asyncio.Event
    ) -> None:
        """The second and later copies of a run whose first Job exists, each taking a
        creation token; one that cannot be created is logged and left out."""
        copies = checkpoint.applied_configuration.get("speculativeAttempts", 1)
        workgroup = self.catalog.workgroup(checkpoint.applied_configuration["workgroup"])
        throttle = self.throttles[shard]
        for copy in range(2, copies + 1):
            if not await throttle.acquire(1, stopping):
                return  # stopping: the run has its first Job
            await self._creating[shard].acquire()
            try:
                body = self._job(shard, checkpoint, workgroup, copy)
                result = await self.shards[shard].create_job(body)
            except ShardUnavailable as exc:
                CREATES.labels(shard, "failed").inc()
                log.warning("a copy of the run could not be created: %s", exc)
                continue
            finally:
                self._creating[shard].release()
            if result.created:
                CREATES.labels(shard, "created" if result.status != 409 else "exists").inc()
                continue
            if result.status == 429:
                CREATES.labels(shard, "throttled").inc()
                await throttle.rejected(result.retry_after)
            else:
                CREATES.labels(shard, "rejected").inc()
            log.warning(
                "a copy of the run was not created: %s %s",
                result.status,
                result.message,
                extra={"job": copy_name(job_name(checkpoint.id, checkpoint.attempt), copy)},
            )

    def _last_attempt(self, checkpoint: Checkpoint) -> bool:
        return checkpoint.attempts + 1 >= self.settings.max_dispatch_attempts

    async def _call_create(self, shard: str, run: QueuedRun, checkpoint: Checkpoint) -> Outcome:
        try:
            try:
                name = checkpoint.applied_configuration["workgroup"]
                workgroup = self.catalog.workgroup(name)
                if workgroup is None:
                    # Its tolerations and affinity place the pods: without them they would
                    # run anywhere. Tried again (it may be being replaced), then failed.
                    CREATES.labels(shard, "failed").inc()
                    message = f"workgroup {name!r} is gone (deleted, or no longer valid)"
                    return Outcome(run, checkpoint, "failed", message=message)
                body = self._job(shard, checkpoint, workgroup)
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
            waited = datetime.now(UTC) - checkpoint.received_at
            QUEUE_SECONDS.labels(shard).observe(max(0.0, waited.total_seconds()))
            return Outcome(run, checkpoint, "created", uid=result.uid)
        if result.status == 429:
            CREATES.labels(shard, "throttled").inc()
            return Outcome(run, checkpoint, "throttled", retry_after=result.retry_after)
        if result.status >= 500 or result.status == 401:
            CREATES.labels(shard, "failed").inc()
            return Outcome(run, checkpoint, "failed", message=f"{result.status} {result.message}")
        CREATES.labels(shard, "rejected").inc()
        return Outcome(run, checkpoint, "rejected", message=f"{result.status} {result.message}")

    async def _look_for_job(self, shard: str, failed: Outcome) -> Outcome:
        """After the last failed attempt: the call may have created the Job all the same
        (a server error after the write, an answer lost on the way). If it is there, the
        run is running; if it is not, the run fails; if that cannot be told, the outcome
        is ``unknown``: failing the run could leave its Job running."""
        try:
            name = job_name(failed.checkpoint.id, failed.checkpoint.attempt)
            job = await self.shards[shard].get(JOBS, name)
        except CALL_ERRORS as exc:
            message = f"{failed.message} (nor could the job be looked up: {exc})"
            return replace(failed, kind="unknown", message=message)
        if job is None:
            return failed
        uid = (job.get("metadata") or {}).get("uid")
        log.info("the last failed attempt had created the job", extra={"shard": shard})
        return replace(failed, kind="created", uid=uid, message="")

    def _job(
        self,
        shard: str,
        checkpoint: Checkpoint,
        workgroup: Workgroup | None,
        copy: int = 1,
    ) -> bytes:
        links = self.links.job_links(
            checkpoint,
            shard,
            result_inline_limit=self.settings.result_inline_limit,
            input_content=self._input_content(checkpoint),
        )
        ttl = self.settings.job_ttl_after_finished
        return self._bodies.body(
            checkpoint, links, workgroup=workgroup, ttl_after_finished=ttl, copy=copy
        )

    def _input_content(self, checkpoint: Checkpoint) -> str | None:
        """The run's input as the text its Job carries, when it is inline, small, and still
        remembered here (else its container fetches it from the input URL)."""
        if not checkpoint.has_inline_payload or self.recent_inputs is None:
            return None
        content = self.recent_inputs.recall(checkpoint.key)
        if content is None or len(content) > self.settings.job_input_limit:
            return None
        try:
            return content.decode()
        except UnicodeDecodeError:
            return None

    async def _record(self, shard: str, outcomes: list[Outcome], stopping: asyncio.Event) -> None:
        """Write what became of each creation, then hand each run on: off the in-flight
        set when that is final, back to the queue (after its delay) when it is not."""
        now = datetime.now(UTC)
        changes: list[Transition] = []
        settled: list[QueuedRun] = []
        throttled: list[QueuedRun] = []
        retry: dict[float, list[QueuedRun]] = {}
        retry_after = 0.0
        for o in outcomes:
            match o.kind:
                case "created":
                    at = o.checkpoint.attempt
                    changes.append(
                        _transition(
                            o,
                            Stage.RUNNING,
                            shard,
                            job_uid=o.uid,
                            sent_at=now,
                            at_attempt=at,
                            keep_job=True,  # kept by a run finished meanwhile all the same
                        )
                    )
                    settled.append(o.run)
                case "rejected":
                    details = f"shard {shard} refused the job: {o.message}"
                    changes.append(_scheduling_failed(o, shard, details))
                    settled.append(o.run)
                case "throttled":  # not an attempt: queued again after the Retry-After
                    throttled.append(o.run)
                    retry_after = max(retry_after, o.retry_after)
                case "unknown":  # the Job may exist: tried again until the shard tells
                    log.warning(
                        "the last attempt failed and the job may exist; trying again in %g s: %s",
                        self.settings.retry_max_delay,
                        o.message,
                        extra={"requestId": str(o.checkpoint.id), "shard": shard},
                    )
                    changes.append(_another_attempt(o))
                    retry.setdefault(self.settings.retry_max_delay, []).append(o.run)
                case "failed" if self._last_attempt(o.checkpoint):
                    attempts = o.checkpoint.attempts + 1
                    details = (
                        f"shard {shard} could not create the job after {attempts} attempts:"
                        f" {o.message}"
                    )
                    changes.append(_scheduling_failed(o, shard, details, attempts=1))
                    settled.append(o.run)
                case "failed":
                    delay = self._retry.delay(o.checkpoint.attempts + 1)
                    changes.append(_another_attempt(o))
                    retry.setdefault(delay, []).append(o.run)
                case _:
                    assert_never(o.kind)
        await self._release(
            [o.checkpoint for o in outcomes if o.kind in ("throttled", "rejected", "failed")]
        )
        if throttled:
            await self.throttles[shard].rejected(retry_after)
            await self._give_back(shard, throttled, retry_after, stopping)
        try:
            applied = await self._write(changes)
        except DependencyError:
            # Not recorded: the batch is queued again, and a run cancelled meanwhile is then
            # passed over as settled, its Job never looked at. Its Job is undone here, once
            # the store can say which runs ended (in the background: the batch goes on).
            made = [c for c in changes if c.to == Stage.RUNNING]
            if made:
                self._spawn(self._undo_when_known(shard, made, stopping))
            raise
        refused = [
            c
            for c, ok in zip(changes, applied, strict=True)
            if not ok and c.to == Stage.RUNNING and not _ran(c, ok)
        ]
        if refused:
            await self._undo(shard, refused)
        for delay, runs in retry.items():
            await self._give_back(shard, runs, delay, stopping)
        await self._settle(shard, settled)

    async def _release(self, checkpoints: list[Checkpoint]) -> None:
        """Give back the concurrency slots of runs whose Job was not made; if Redis cannot
        be reached, a look at the full limit lets them go later (they are not RUNNING)."""
        if self.limits is None or not checkpoints:
            return
        try:
            await self.limits.release(checkpoints)
        except DependencyError as exc:
            log.warning("cannot give back concurrency slots now: %s", exc)

    async def _write(self, changes: list[Transition]) -> list[bool | Kept]:
        """Whether each change was applied. A change the store cannot hold is logged and
        counts as not applied; a store that cannot be reached fails the whole batch."""
        results = await self.store.transition_many(changes)
        applied: list[bool | Kept] = []
        for change, result in zip(changes, results, strict=True):
            if isinstance(result, CheckpointRejected):
                log.error("%s", result, extra={"requestId": str(change.id)})
                applied.append(False)
            elif isinstance(result, BaseException):
                raise result
            else:
                applied.append(result)
        return applied

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _undo_when_known(
        self, shard: str, made: list[Transition], stopping: asyncio.Event
    ) -> None:
        """Jobs created by a batch whose record failed: once the store answers, delete
        those of runs that ended meanwhile (cancelled, failed); the others are dispatched
        again (their Job exists: 409) and recorded then. Until the process stops."""
        backoff = Backoff(first=0.5, cap=10.0)
        while not stopping.is_set():
            try:
                current = await self.store.get_many(c.key for c in made)
            except DependencyError as exc:
                log.info("cannot yet read runs whose jobs were not recorded: %s", exc)
                await sleep_or_stop(stopping, backoff.failed())
                continue
            await self._delete_abandoned(shard, made, current)
            return

    async def _undo(self, shard: str, refused: list[Transition]) -> None:
        """Jobs created for runs that finished or moved on meanwhile: delete those whose run
        was cancelled or failed, or is at another attempt now (the Job was made late, for
        an attempt already over). A run that completed may have done so in this very Job,
        which is then left to its TTL. If the stages cannot be read, every such Job goes."""
        try:
            current = await self.store.get_many(c.key for c in refused)
        except DependencyError as exc:
            log.warning("cannot read runs whose jobs were refused; deleting them: %s", exc)
            current = None
        await self._delete_abandoned(shard, refused, current)

    async def _delete_abandoned(
        self, shard: str, refused: list[Transition], current: dict[RunKey, Checkpoint] | None
    ) -> None:
        """Delete the Jobs of ``refused`` runs that ``current`` says ended without running
        to completion (all of them when ``current`` is unknown)."""
        for change in refused:
            run = current.get(change.key) if current is not None else None
            moved_on = run is not None and run.attempt != change.at_attempt
            if current is not None and not moved_on and (run is None or run.stage not in ABANDONED):
                continue
            copies = run.applied_configuration.get("speculativeAttempts", 1) if run else 1
            try:
                for name in copy_names(job_name(change.id, change.at_attempt or 1), copies):
                    await self.shards[shard].delete_job(name)
            except CALL_ERRORS as exc:
                log.warning("cannot delete the job of a finished run: %s", exc)
                continue
            log.info(
                "deleted the job of a run that finished or moved on while it was created",
                extra={"requestId": str(change.id), "attempt": change.at_attempt},
            )
