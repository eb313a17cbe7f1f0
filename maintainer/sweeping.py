"""Sweeps of the checkpoint store: runs that nothing else will move on.

Every ``sweep_interval`` the leader pages through unfinished runs of each stage, oldest
change first, with a keyset cursor (``(last_modified, algorithm, id)``, served by the
partial index ``runs_unfinished_by_age``), at most ``sweep_max_rows`` per stage per sweep;
the next sweep continues where this one stopped. Only runs unchanged for a stage's grace
period are looked at, by the database's clock.

* ``BUFFERED`` — left alone while its shard's Jobs cannot be known (the watch is away):
  a failed creation may have made its Job. Its Job exists on its shard (created, but the
  ``RUNNING`` write was lost) → ``RUNNING``, however long it was queued. Otherwise,
  queued longer than ``max_queue_time`` → ``DEADLINE_EXCEEDED``. In no
  queue of any scheduler pod (Redis lost, a push that never happened) → pushed back onto a
  live pod's queue ahead of the runs it queued since (whoever's they are),
  counted as an attempt; once attempts reach ``max_requeues`` → ``SCHEDULING_FAILED``.
* ``NEW`` — stuck between its first checkpoint and ``BUFFERED``: its input exists →
  ``BUFFERED`` and queued; otherwise ``SCHEDULING_FAILED``, "submission lost".
* ``RUNNING`` — its Job succeeded ``completion_grace`` ago (as the shard's watch saw it)
  and no completion came → ``COMPLETED`` if its result is at the run's default result
  location (the container did its work; only its report was lost, say to a receiver away
  longer than the container's retries), else ``FAILED``, no result; its Job is not on its
  shard (the shard's Job list is current and a GET answers 404) → ``FAILED``, job lost;
  its Job is still active ``deadline_slack`` past the run's deadline →
  ``DEADLINE_EXCEEDED`` and the Job deleted. A run started in several copies whose first
  Job failed while others still run is left to them
  (:meth:`maintainer.shardwatch.ShardWatch.copies_running`).
* unfinished children of a ``CANCELLED`` parent → ``CANCELLED`` naming the parent, their
  Jobs deleted (:mod:`maintainer.cascading`).
* a census: how many runs are in each unfinished stage (``nexus_runs{stage}``, set by the
  leader; finished runs are counted where they finish, ``nexus_run_duration_seconds``).
* finished runs past ``retention`` → their input and result objects, then their
  checkpoints, deleted; idempotency keys older than 24 h cleared.

A failing dependency skips that part of the sweep (logged, counted); the next sweep tries
again. Every change goes through :class:`maintainer.actions.Actions` (compare-and-set).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from prometheus_client import Counter, Gauge, Histogram

from maintainer.actions import Act, Actions
from maintainer.cascading import cancel_children_of_cancelled
from maintainer.settings import MaintainerSection
from maintainer.shardwatch import ShardWatch
from maintainer.signals import JOB_LOST, NO_RESULT, job_outcome
from nexus.core.checkpoints import IDEMPOTENCY_WINDOW, CheckpointStore
from nexus.core.errors import DependencyError, NexusError
from nexus.core.queues import AHEAD, QueueBackend, QueuedRun
from nexus.core.runs import Stage, Transition
from nexus.core.shards import JOBS
from nexus.core.storage import PayloadStore
from nexus.core.sweeps import SweepCursor, SweepRow, Sweeps
from nexus.core.waiting import sleep_or_stop

log = logging.getLogger(__name__)

SWEEP_SECONDS = Histogram(
    "nexus_maintainer_sweep_seconds",
    "Duration of one sweep of one kind of run.",
    ["sweep"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SWEPT = Counter("nexus_maintainer_swept_total", "Checkpoints looked at by sweeps.", ["sweep"])
SWEEP_FAILURES = Counter(
    "nexus_maintainer_sweep_failures_total", "Sweeps cut short by a failing dependency.", ["sweep"]
)
DELETED = Counter(
    "nexus_maintainer_retention_deleted_total", "Finished runs deleted after retention."
)
KEYS_CLEARED = Counter(
    "nexus_maintainer_idempotency_keys_cleared_total", "Idempotency keys cleared after 24 h."
)

UNFINISHED = Gauge(
    "nexus_runs", "Runs in each unfinished stage, counted by the leader every sweep.", ["stage"]
)


class Sweeper:
    """Sweeps the checkpoint store for the leader."""

    def __init__(
        self,
        *,
        store: CheckpointStore,
        queues: QueueBackend,
        payloads: PayloadStore,
        watches: dict[str, ShardWatch],
        actions: Actions,
        section: MaintainerSection,
        leading: Callable[[], bool],
    ) -> None:
        self.store = store
        self.sweeps = Sweeps(store)
        self.queues = queues
        self.payloads = payloads
        self.watches = watches
        self.actions = actions
        self.section = section
        self._leading = leading
        self._cursors: dict[Stage, SweepCursor | None] = {}
        self._next_pod = 0

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if self._leading():
                await self.sweep()
            await sleep_or_stop(stopping, self.section.sweep_interval)

    async def sweep(self) -> None:
        """One sweep of every kind; a kind whose dependency fails is left for the next."""
        s = self.section
        kinds: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("new", partial(self._stage, Stage.NEW, s.new_grace, self._new)),
            ("buffered", partial(self._stage, Stage.BUFFERED, s.queue_grace, self._buffered)),
            ("running", partial(self._stage, Stage.RUNNING, s.running_grace, self._running)),
            (
                "cascade",
                partial(cancel_children_of_cancelled, self.sweeps, self.actions, s.sweep_batch),
            ),
            ("retention", self._retention),
            ("idempotency", self._idempotency),
            ("census", self._census),
        ]
        for name, work in kinds:
            started = time.perf_counter()
            try:
                await work()
            except DependencyError as exc:
                SWEEP_FAILURES.labels(name).inc()
                log.warning("sweep of %s runs cut short: %s", name, exc)
            SWEEP_SECONDS.labels(name).observe(time.perf_counter() - started)

    async def _census(self) -> None:
        for stage, runs in (await self.sweeps.count_unfinished()).items():
            UNFINISHED.labels(stage.value).set(runs)

    async def heal(self, grace: float) -> tuple[int, bool]:
        """Every ``BUFFERED`` run unchanged for ``grace`` s that no queue holds, pushed back
        now (Redis lost its data: :mod:`maintainer.healing`), from the oldest; how many
        were, and whether every run was judged (``False``: a shard's Jobs could not be
        known, or no scheduler pod was alive to queue on; try again)."""
        cursor: SweepCursor | None = None
        queued, complete = 0, True
        older_than = timedelta(seconds=grace)
        while self._leading():
            rows = await self.sweeps.page(
                Stage.BUFFERED, older_than, cursor, self.section.sweep_batch
            )
            SWEPT.labels("heal").inc(len(rows))
            if rows:
                pushed, judged = await self._buffered(rows)
                queued, complete = queued + pushed, complete and judged
            if len(rows) < self.section.sweep_batch:
                return queued, complete
            cursor = rows[-1].cursor
        return queued, False

    async def _stage(
        self, stage: Stage, grace: float, handle: Callable[[list[SweepRow]], Awaitable[object]]
    ) -> None:
        async for rows in self._pages(stage, grace):
            SWEPT.labels(stage.value.lower()).inc(len(rows))
            await handle(rows)

    async def _pages(self, stage: Stage, grace: float) -> AsyncIterator[list[SweepRow]]:
        """Pages of ``stage`` runs unchanged for ``grace`` s, resuming the last sweep's cursor."""
        seen, batch = 0, self.section.sweep_batch
        older_than = timedelta(seconds=grace)
        while seen < self.section.sweep_max_rows and self._leading():
            rows = await self.sweeps.page(stage, older_than, self._cursors.get(stage), batch)
            self._cursors[stage] = rows[-1].cursor if len(rows) == batch else None
            if rows:
                seen += len(rows)
                yield rows
            if len(rows) < batch:
                return

    # -- BUFFERED --------------------------------------------------------------------------

    async def _buffered(self, rows: list[SweepRow]) -> tuple[int, bool]:
        """How many of ``rows`` were queued again, and whether all were judged."""
        s, now = self.section, datetime.now(UTC)
        acts: list[Act] = []
        by_shard: dict[str, list[SweepRow]] = defaultdict(list)
        judged = True
        for row in rows:
            watch = self.watches.get(row.shard or "")
            if watch is not None and not watch.synced:
                judged = False
                continue  # whether its Job exists cannot be told now: a later sweep decides
            if watch is not None and row.job in watch.jobs:
                # its (current attempt's) Job was created, the RUNNING write was lost
                change = Transition(
                    row.algorithm, row.id, Stage.RUNNING, expect=Stage.BUFFERED, shard=row.shard,
                    at_attempt=row.attempt,
                )  # fmt: skip
                acts.append(Act(change, "found_running", watch.shard))
                continue
            if s.max_queue_time and now - row.received_at > timedelta(seconds=s.max_queue_time):
                details = f"waited in the queue longer than the {s.max_queue_time:g} s allowed"
                change = Transition(
                    row.algorithm, row.id, Stage.DEADLINE_EXCEEDED, expect=Stage.BUFFERED,
                    cause="DeadlineExceeded", details=details,
                )  # fmt: skip
                acts.append(Act(change, "queue_deadline", row.shard or ""))
                continue
            by_shard[row.shard or ""].append(row)
        await self.actions.apply(acts)
        queued = 0
        if by_shard:
            pods = await self.queues.pods()
            for shard, group in by_shard.items():
                pushed, placed = await self._requeue(shard, group, pods.live, pods.dead)
                queued, judged = queued + pushed, judged and placed
        return queued, judged

    async def _requeue(
        self, shard: str, rows: list[SweepRow], live: list[str], dead: list[str]
    ) -> tuple[int, bool]:
        """Push back the runs of ``rows`` that no queue holds (a dead pod's is adopted);
        how many were, and ``False`` if some could not be for want of a live pod."""
        held = await self.queues.missing(shard, [r.key for r in rows], [*live, *dead])
        lost = [r for r in rows if r.key in held]
        if not lost:
            return 0, True
        failed = [r for r in lost if r.attempts >= self.section.max_requeues]
        again = [r for r in lost if r.attempts < self.section.max_requeues]
        acts = []
        for row in failed:
            details = f"the run was lost from the queue after {row.attempts} attempts"
            change = Transition(
                row.algorithm, row.id, Stage.SCHEDULING_FAILED, expect=Stage.BUFFERED,
                cause="QueueLost", details=details,
            )  # fmt: skip
            acts.append(Act(change, "requeue_limit", shard))
        if again and live:
            await self._push(shard, again, live)
            for row in again:
                change = Transition(
                    row.algorithm, row.id, Stage.BUFFERED, expect=Stage.BUFFERED, attempts=1
                )
                acts.append(Act(change, "requeued", shard))
        elif again:
            log.warning("runs in no queue, and no live scheduler pod to queue them on")
        await self.actions.apply(acts)
        return (len(again), True) if live else (0, not again)

    async def _push(self, shard: str, rows: Sequence[SweepRow], live: list[str]) -> None:
        """Queue ``rows`` on a live pod ahead of newer runs, in the order they came."""
        pod = live[self._next_pod % len(live)]
        self._next_pod += 1
        rows = sorted(rows, key=lambda r: r.received_at)
        queued = [QueuedRun(shard, r.key, 0.0, AHEAD) for r in rows]
        await self.queues.queue(pod).push(queued)
        log.info("queued runs again", extra={"pod": pod, "shard": shard, "runs": len(queued)})

    # -- NEW -------------------------------------------------------------------------------

    async def _new(self, rows: list[SweepRow]) -> None:
        acts: list[Act] = []
        for row in rows:
            if await self._input_exists(row):
                change = Transition(row.algorithm, row.id, Stage.BUFFERED, expect=Stage.NEW)
                acts.append(Act(change, "recovered", row.shard or ""))
            else:
                change = Transition(
                    row.algorithm, row.id, Stage.SCHEDULING_FAILED, expect=Stage.NEW,
                    cause="SubmissionLost", details="submission lost, please resend",
                )  # fmt: skip
                acts.append(Act(change, "submission_lost", row.shard or ""))
        applied = await self.actions.apply(acts)
        recovered = [
            row
            for row, act, done in zip(rows, acts, applied, strict=True)
            if done and act.change.to == Stage.BUFFERED
        ]
        pods = await self.queues.pods() if recovered else None
        if pods is not None and pods.live:
            by_shard: dict[str, list[SweepRow]] = defaultdict(list)
            for row in recovered:
                by_shard[row.shard or ""].append(row)
            for shard, group in by_shard.items():
                await self._push(shard, group, pods.live)
        # without a live pod, the BUFFERED sweep queues them once one is back

    async def _input_exists(self, row: SweepRow) -> bool:
        if row.has_inline_payload:
            return True
        if row.payload_uri is None:
            return False
        key = self.payloads.key_of(row.payload_uri)
        return key is None or await self.payloads.get(key) is not None

    # -- RUNNING ---------------------------------------------------------------------------

    async def _running(self, rows: list[SweepRow]) -> None:
        now, slack = datetime.now(UTC), timedelta(seconds=self.section.deadline_slack)
        seen_by = asyncio.get_running_loop().time() - self.section.completion_grace
        checks: list[tuple[SweepRow, ShardWatch, bool]] = []
        unreported: list[tuple[SweepRow, ShardWatch]] = []
        acts: list[Act] = []
        for row in rows:
            watch = self.watches.get(row.shard or "")
            if watch is None or not watch.synced:
                continue  # unknown or unreachable shard: nothing can be concluded
            succeeded = watch.succeeded_at(row.job)
            if succeeded is not None:  # its Job is there and done: only the report is missing
                if succeeded <= seen_by:
                    unreported.append((row, watch))
                continue
            if watch.copies_running(row.job):
                continue  # its first Job failed, other copies still run: theirs to decide
            overdue = (
                row.sent_at is not None
                and row.deadline_seconds is not None
                and now > row.sent_at + timedelta(seconds=row.deadline_seconds) + slack
            )
            if row.job not in watch.jobs or overdue:
                checks.append((row, watch, overdue))
        for start in range(0, len(checks), 16):
            chunk = checks[start : start + 16]
            found = await asyncio.gather(
                *(w.client.get(JOBS, r.job) for r, w, _ in chunk), return_exceptions=True
            )
            for (row, watch, overdue), job in zip(chunk, found, strict=True):
                if isinstance(job, NexusError):
                    continue  # ask again at the next sweep
                if isinstance(job, BaseException):
                    raise job
                if job is None:
                    change = Transition(
                        row.algorithm, row.id, Stage.FAILED, expect=Stage.RUNNING,
                        cause="JobLost", details=JOB_LOST, at_attempt=row.attempt,
                    )  # fmt: skip
                    acts.append(Act(change, "job_lost", watch.shard))
                elif overdue and job_outcome(job) is None:
                    details = (
                        f"the job was still active {self.section.deadline_slack:g} s past the"
                        f" run's deadline of {row.deadline_seconds:g} s"
                    )
                    change = Transition(
                        row.algorithm, row.id, Stage.DEADLINE_EXCEEDED, expect=Stage.RUNNING,
                        cause="DeadlineExceeded", details=details, at_attempt=row.attempt,
                    )  # fmt: skip
                    acts.append(Act(change, "job_deadline", watch.shard, delete_job=True))
        acts.extend(await self._unreported(unreported))
        await self.actions.apply(acts)

    async def _unreported(self, rows: list[tuple[SweepRow, ShardWatch]]) -> list[Act]:
        """Runs whose Job succeeded and whose completion never came: ``COMPLETED`` where
        the result is at the run's default location, ``FAILED`` (no result) where it is
        not. Object storage that cannot be asked leaves them to the next sweep."""
        acts: list[Act] = []
        for start in range(0, len(rows), 16):
            chunk = rows[start : start + 16]
            keys = [self.payloads.result_key(row.algorithm, str(row.id)) for row, _ in chunk]
            found = await asyncio.gather(
                *(self.payloads.exists(key) for key in keys), return_exceptions=True
            )
            for (row, watch), key, there in zip(chunk, keys, found, strict=True):
                if isinstance(there, NexusError):
                    continue  # ask again at the next sweep
                if isinstance(there, BaseException):
                    raise there
                if there:
                    change = Transition(
                        row.algorithm, row.id, Stage.COMPLETED, expect=Stage.RUNNING,
                        result_uri=self.payloads.uri(key), at_attempt=row.attempt,
                    )  # fmt: skip
                    acts.append(Act(change, "result_found", watch.shard))
                else:
                    change = Transition(
                        row.algorithm, row.id, Stage.FAILED, expect=Stage.RUNNING,
                        cause="NoResult", details=NO_RESULT, at_attempt=row.attempt,
                    )  # fmt: skip
                    acts.append(Act(change, "no_result", watch.shard))
        return acts

    # -- retention -------------------------------------------------------------------------

    async def _retention(self) -> None:
        if not self.section.retention:
            return
        older_than = timedelta(seconds=self.section.retention)
        deleted = 0
        while deleted < self.section.sweep_max_rows and self._leading():
            runs = await self.sweeps.expired_runs(older_than, self.section.sweep_batch)
            if not runs:
                return
            keys: list[str] = []
            for run in runs:  # a result naming any other object of the bucket keeps it
                stored = self.payloads.key_of(run.payload_uri) if run.payload_uri else None
                result = run.result_uri and self.payloads.result_key_of(
                    run.result_uri, run.algorithm, str(run.id)
                )
                keys.extend(key for key in (stored, result) if key)
            await self.payloads.delete(keys)  # objects first: none outlives its checkpoint
            count = await self.sweeps.delete_finished([r.key for r in runs])
            deleted += count
            DELETED.inc(count)
            log.info("deleted finished runs past retention", extra={"runs": count})
            if len(runs) < self.section.sweep_batch:
                return

    async def _idempotency(self) -> None:
        cleared = 0
        while cleared < self.section.sweep_max_rows and self._leading():
            count = await self.sweeps.clear_idempotency_keys(
                IDEMPOTENCY_WINDOW, self.section.sweep_batch
            )
            cleared += count
            KEYS_CLEARED.inc(count)
            if count < self.section.sweep_batch:
                return
