"""Watching one shard: Jobs, Pods and Events of algorithm runs, turned into actions.

:class:`ShardWatch` follows three kinds of object on a shard with
:func:`nexus.core.listwatch.follow` (list, then watch from the list's resourceVersion,
resume, relist on 410, back off while the shard is unreachable) and applies the rules of
:mod:`maintainer.signals`. Of most of a run's events only the object's status is read
(pods not yet started, succeeded or deleted; Jobs changed without a condition: see
:mod:`nexus.core.watchevents`), and of none the spec; for the others it reads a few keys of
a raw dict and, rarely, submits an action; it never waits for the store.

What it keeps in memory, all bounded by what the shard holds:

* the Jobs that exist (name → algorithm), which sweeps use to tell a lost Job from a live
  one without asking the shard about every run;
* the last failed attempt of each Job still running (for the cause when it fails);
* when each Job that succeeded was seen to (also for a while after the Job is deleted,
  when that comes soon after): a run still ``RUNNING`` ``completion_grace``
  later exited without reporting, which the sweep of ``RUNNING`` runs concludes (so a run
  that reported, as nearly all do, costs nothing more: no timer, no write refused);
* grace timers: pods running whose run may not say so yet, image pulls failing, Jobs
  deleted under a running run.

**Runs in several copies** (``speculativeAttempts``): once any copy's Job succeeds, the
other copies are deleted (the first report decides the run, at the receiver); a copy's
Job failing fails the run only when no other copy still runs (then with that failure).

**Outages are not the runs' fault.** Grace timers start when *this process* observes a
state (never from timestamps in the objects), so time the maintainer or a shard's watch
was away never counts against a run; and before a run is failed because of a timer, the
state is read again from the shard (a GET): a pod that started meanwhile, or a Job that
is there after all, cancels it, and an unreachable shard postpones it. A lost Job is
declared only on a shard whose Job list is current (listed since the watch last
(re)connected) and after a GET answers 404.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prometheus_client import Counter, Gauge

from maintainer.actions import Act, Actions
from maintainer.retries import Failure, Retrier
from maintainer.settings import MaintainerSection
from maintainer.signals import (
    JOB_LOST,
    PodFailure,
    container_state,
    disruption,
    failed_verdict,
    job_matters,
    job_outcome,
    pod_failure,
    pod_matters,
    pull_error,
    run_of_pod,
    unschedulable,
)
from nexus.core.errors import DependencyError, NexusError, ShardThrottled
from nexus.core.labels import (
    ALGORITHM_LABEL,
    JOB_NAME_LABEL,
    REQUEST_LABEL,
    copy_names,
    speculative_copy,
)
from nexus.core.labels import ALGORITHM_RUN_SELECTOR as RUNS
from nexus.core.listwatch import follow
from nexus.core.retrying import FailureClass, parse_job_name
from nexus.core.runs import Stage, Transition
from nexus.core.shards import CALL_ERRORS, EVENTS, JOBS, PODS, ShardClient, WatchEvent
from nexus.core.waiting import Backoff, sleep_or_stop

log = logging.getLogger(__name__)

FAILED_CREATE = "reason=FailedCreate"
"""The only Events the maintainer acts on, selected by the API server."""

RECONNECTS = Counter(
    "nexus_maintainer_watch_reconnects_total",
    "Watches of a shard that failed and were reconnected, by shard and resource.",
    ["shard", "resource"],
)
CONNECTED = Gauge(
    "nexus_maintainer_shard_connected",
    "1 while the maintainer's Job watch of a shard is connected and listed.",
    ["shard"],
)


@dataclass(slots=True)
class Timer:
    """A grace period running for one run: when it ends and what it is about."""

    due: float
    algorithm: str
    message: str = ""
    pod: str = ""
    job_uid: str | None = None
    """Of a pod seen running: its Job's uid, and when it was created."""
    created: str | None = None


class ShardWatch:
    """Follows one shard and acts on what it says about algorithm runs."""

    def __init__(
        self,
        client: ShardClient,
        actions: Actions,
        section: MaintainerSection,
        retrier: Retrier | None = None,
    ) -> None:
        self.client = client
        self.retrier = retrier
        """Decides the failures a retry policy may retry (none without it)."""
        self.shard = client.name
        self.actions = actions
        self.section = section
        self.jobs: dict[str, str] = {}
        """Jobs that exist on the shard: name (request id) → algorithm."""
        self.synced = False
        """Whether :attr:`jobs` is current: listed, and the watch connected since."""
        self._listed = False
        self._failures: OrderedDict[str, PodFailure] = OrderedDict()
        self._decided: OrderedDict[str, None] = OrderedDict()  # Job uids already acted on
        self._started: OrderedDict[str, Timer] = OrderedDict()
        self._pulls: OrderedDict[str, Timer] = OrderedDict()
        self._unplaced: OrderedDict[str, Timer] = OrderedDict()
        """Pods the cluster cannot place (unschedulable), by Job."""
        self.succeeded: dict[str, float] = {}
        """Jobs that succeeded: name → when this process saw it (loop time)."""
        self._succeeded_gone: OrderedDict[str, float] = OrderedDict()
        """Jobs deleted soon after they succeeded (a short ``ttlSecondsAfterFinished``),
        remembered as in :attr:`succeeded` for a completion grace and two sweeps more."""
        self._deleted: OrderedDict[str, Timer] = OrderedDict()
        self._retired: OrderedDict[str, None] = OrderedDict()
        """Copies of runs (``speculativeAttempts``) deleted because another copy ended."""
        self._copies_failed: OrderedDict[str, set[str]] = OrderedDict()
        """Runs started in several copies: request id → the copies whose Jobs failed."""
        self._group: asyncio.TaskGroup | None = None
        self._loop = asyncio.get_running_loop()

    async def run(self, stopping: asyncio.Event) -> None:
        CONNECTED.labels(self.shard).set(0)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                # Of all Events only FailedCreate matters here; the API server filters, so
                # the many Normal events of every run never reach (or cost) this process.
                # Of the Job and Pod events, only the status is read of those the rules
                # ignore, and no spec of any (nothing here reads one).
                for resource, on_sync, on_event, selector, fields, sift in (
                    (JOBS, self._sync_jobs, self._on_job, RUNS, None, job_matters),
                    (PODS, self._sync(self._on_pod), self._on_pod, RUNS, None, pod_matters),
                    (EVENTS, self._sync(self._on_event), self._on_event, None, FAILED_CREATE, None),
                ):
                    group.create_task(
                        follow(
                            self.client,
                            resource,
                            on_sync=on_sync,
                            on_event=on_event,
                            stopping=stopping,
                            label_selector=selector,
                            field_selector=fields,
                            watch_timeout=self.section.watch_timeout,
                            max_backoff=self.section.watch_max_backoff,
                            on_connected=self._connected(resource.plural),
                            sift=sift,
                        ),
                        name=f"maintainer:watch:{self.shard}:{resource.plural}",
                    )
                group.create_task(self._check(stopping), name=f"maintainer:timers:{self.shard}")
        finally:
            CONNECTED.labels(self.shard).set(0)

    def _connected(self, plural: str) -> Any:
        def connected(up: bool) -> None:
            if not up:
                RECONNECTS.labels(self.shard, plural).inc()
            if plural == "jobs":
                self.synced = up and self._listed
                CONNECTED.labels(self.shard).set(1 if self.synced else 0)

        return connected

    def _sync(self, handle: Any) -> Any:
        async def on_sync(items: list[dict[str, Any]]) -> None:
            for item in items:
                await handle(WatchEvent("ADDED", item))

        return on_sync

    # -- jobs --------------------------------------------------------------------------

    async def _sync_jobs(self, items: list[dict[str, Any]]) -> None:
        self.jobs = {}
        for item in items:
            await self._on_job(WatchEvent("ADDED", item))
        for name in [name for name in self.succeeded if name not in self.jobs]:
            self._forget_success(name)  # deleted while the watch was away
        self._listed = True

    async def _on_job(self, event: WatchEvent) -> None:
        job = event.object
        meta = job["metadata"]
        name = meta["name"]
        if event.type == "DELETED":
            algorithm = self.jobs.pop(name, None)
            self._failures.pop(name, None)
            self._started.pop(name, None)
            self._pulls.pop(name, None)
            self._unplaced.pop(name, None)
            self._forget_success(name)
            if name in self._retired:  # deleted as a copy of a run another copy ended
                del self._retired[name]
            elif algorithm is not None and meta.get("uid") not in self._decided:
                due = self._loop.time() + self.section.job_lost_grace
                self._deleted.setdefault(name, Timer(due, algorithm))
            return
        algorithm = self.jobs.get(name)
        if algorithm is None:
            label = (meta.get("labels") or {}).get(ALGORITHM_LABEL)
            if not label:
                return
            algorithm = self.jobs[name] = sys.intern(label)
        outcome = job_outcome(job)
        if outcome is None:
            return
        copy = speculative_copy(meta.get("annotations"))
        if copy is not None and outcome[0] == "succeeded":
            self._retire_other_copies(meta, name, copy[1])
        self._started.pop(name, None)  # its completion (or the verdict below) settles it
        if _seen(self._decided, meta.get("uid", name)):
            return
        kind, reason, message = outcome
        if kind == "succeeded":
            self.succeeded.setdefault(name, self._loop.time())
            return
        last = self._failures.pop(name, None)
        if last is None and reason in ("BackoffLimitExceeded", "PodFailurePolicy"):
            last = await self._last_failure(name)
        verdict = failed_verdict(reason, message, last)
        if copy is not None:  # one of several copies: the run fails when the last one does
            run = self._last_copy_failed(meta, name, copy[1])
            if run is None:
                return
            name = run
        if not self._finish(
            name,
            algorithm,
            verdict.stage,
            verdict.cause,
            verdict.details,
            verdict.action,
            failure_class=verdict.failure_class,
        ):
            self._decided.pop(meta.get("uid", name), None)  # dropped: the next relist decides

    def _last_copy_failed(self, meta: dict[str, Any], name: str, copies: int) -> str | None:
        """The Job ``name``, one of the ``copies`` copies of a run's attempt, failed: the
        attempt's first Job name when no other copy is still running (this failure decides
        the run), else ``None`` (another copy may still report)."""
        first = _first_copy(meta, name)
        if first is None:
            return None
        failed = self._copies_failed.setdefault(first, set())
        failed.add(name)
        while len(self._copies_failed) > 100_000:
            self._copies_failed.popitem(last=False)
        running = [
            other
            for other in copy_names(first, copies)
            if other in self.jobs and other not in failed and other not in self.succeeded
        ]
        if running:
            return None
        del self._copies_failed[first]
        return first

    def _retire_other_copies(self, meta: dict[str, Any], name: str, copies: int) -> None:
        """A copy of a run started in several succeeded (its report is in, or due): the
        other copies are deleted, once each."""
        first = _first_copy(meta, name)
        if first is None or self._group is None:
            return
        self._copies_failed.pop(first, None)
        if name != first:  # the run's work is done: its report is due, as if the first
            self.succeeded.setdefault(first, self._loop.time())  # copy had succeeded
        for other in copy_names(first, copies):
            if other == name or other in self._retired:
                continue
            self._retired[other] = None
            while len(self._retired) > 100_000:
                self._retired.popitem(last=False)
            self._group.create_task(self._delete_copy(other), name=f"maintainer:retire:{other}")

    async def _delete_copy(self, name: str) -> None:
        try:
            if await self.client.delete_job(name):
                log.info("deleted a copy of a run another copy ended", extra={"job": name})
        except CALL_ERRORS as exc:  # it ends by its own deadline; a relist tries again
            self._retired.pop(name, None)
            log.warning("could not delete a copy of a finished run: %s", exc, extra={"job": name})

    def copies_running(self, job: str) -> bool:
        """Whether a copy of the attempt whose first Job is ``job`` (of a run started in
        several copies) failed while others still run: the run is theirs to decide, and
        that first Job may be gone."""
        return job in self._copies_failed

    def succeeded_at(self, name: str) -> float | None:
        """When the Job ``name`` was seen to succeed, if it did (and is there, or was
        deleted within a completion grace of that): its run then only lacks its report."""
        seen = self.succeeded.get(name)
        return seen if seen is not None else self._succeeded_gone.get(name)

    def _forget_success(self, name: str) -> None:
        """The Job ``name`` is deleted. If it succeeded moments ago its run may still be
        waiting for its report, and must not be taken for a lost one meanwhile."""
        now, seen = self._loop.time(), self.succeeded.pop(name, None)
        keep = self.section.completion_grace + 2 * self.section.sweep_interval
        if seen is not None and now - seen < keep:
            self._succeeded_gone[name] = seen
        while self._succeeded_gone:
            first, when = next(iter(self._succeeded_gone.items()))
            if now - when < keep:
                break
            del self._succeeded_gone[first]

    async def _last_failure(self, job: str) -> PodFailure | None:
        """The failed attempt a Job's failure came after, when its pod event was missed."""
        try:
            pods = await self.client.list(PODS, label_selector=f"{JOB_NAME_LABEL}={job}")
        except NexusError:
            return None  # the verdict is made without the exit code
        for pod in pods.items:
            state = container_state(pod)
            failure = disruption(pod) or (pod_failure(pod, state) if state else None)
            if failure is not None:
                return failure
        return None

    # -- pods --------------------------------------------------------------------------

    async def _on_pod(self, event: WatchEvent) -> None:
        if event.type == "DELETED":
            return
        pod = event.object
        disrupted = disruption(pod)  # before its container: a lost node's pod says running
        if disrupted is not None:
            run = run_of_pod(pod)
            if run is not None:
                self._remember_failure(run[1], disrupted)
            return
        state = container_state(pod)
        if state is None:
            message = unschedulable(pod)
            run = run_of_pod(pod) if message else None
            if message and run is not None:
                due = self._loop.time() + self.section.unschedulable_grace
                timer = Timer(due, run[0], message, pod["metadata"]["name"])
                self._unplaced.setdefault(run[1], timer)
            return
        if "running" in state:
            run = run_of_pod(pod)
            if run is None:
                return
            algorithm, name = run
            self._pulls.pop(name, None)
            self._unplaced.pop(name, None)
            if name not in self._started:  # the run's change is made only if it is due
                meta = pod["metadata"]
                owner = (meta.get("ownerReferences") or [{}])[0].get("uid")
                due = self._loop.time() + self.section.started_grace
                self._started[name] = Timer(
                    due, algorithm, job_uid=owner, created=meta.get("creationTimestamp")
                )
        elif "waiting" in state:
            message = pull_error(state)
            run = run_of_pod(pod) if message else None
            if message and run is not None:
                self._unplaced.pop(run[1], None)
                due = self._loop.time() + self.section.image_pull_grace
                timer = Timer(due, run[0], message, pod["metadata"]["name"])
                self._pulls.setdefault(run[1], timer)
        elif "terminated" in state:
            failure = pod_failure(pod, state)
            run = run_of_pod(pod) if failure else None
            if failure is not None and run is not None:
                self._remember_failure(run[1], failure)

    def _remember_failure(self, job: str, failure: PodFailure) -> None:
        self._failures[job] = failure
        self._failures.move_to_end(job)
        if len(self._failures) > self.section.remembered_failures:
            self._failures.popitem(last=False)

    # -- events ------------------------------------------------------------------------

    async def _on_event(self, event: WatchEvent) -> None:
        obj = event.object
        if obj.get("reason") != "FailedCreate" or event.type == "DELETED":
            return
        involved = obj.get("involvedObject") or {}
        name = involved.get("name")
        if involved.get("kind") != "Job" or not name:
            return
        algorithm = self.jobs.get(name)
        if algorithm is None:  # the Job watch may not have delivered it yet
            try:
                job = await self.client.get(JOBS, name, involved.get("namespace"))
            except NexusError:
                return  # the Event comes again with the relist
            algorithm = ((job or {}).get("metadata", {}).get("labels") or {}).get(ALGORITHM_LABEL)
            if not algorithm:
                return
        details = str(obj.get("message") or "the job could not create its pod")
        self._finish(
            name, algorithm, Stage.SCHEDULING_FAILED, "FailedCreate", details, "failed_create", True
        )

    # -- grace timers ------------------------------------------------------------------

    async def _check(self, stopping: asyncio.Event) -> None:
        paused_until = 0.0  # re-checks wait while the shard will not answer
        refusals = Backoff(first=2 * self.section.check_interval, cap=60.0)
        while not stopping.is_set():
            now = self._loop.time()
            for name, timer in _due(self._started, now):
                change = self._started_change(name, timer)
                if change is not None:
                    self.actions.submit(Act(change, "started", self.shard))
            for timers, recheck in (
                (self._deleted, self._lost),
                (self._pulls, self._pulling),
                (self._unplaced, self._unschedulable),
            ):
                due = _due(timers, now) if now >= paused_until else []
                for index, (name, timer) in enumerate(due):
                    try:
                        await recheck(name, timer)
                        refusals.succeeded()
                    except NexusError as exc:
                        # unreachable, throttled or refused: this and the rest wait in place
                        for late, waiting in reversed(due[index:]):
                            timers[late] = waiting
                            timers.move_to_end(late, last=False)
                        if isinstance(exc, ShardThrottled):
                            pause = max(self.section.check_interval, exc.retry_after)
                        elif isinstance(exc, DependencyError):
                            pause = self.section.check_interval
                        else:  # a refusal (403…) lasts: ask less and less often
                            pause = refusals.failed()
                        paused_until = now + pause
                        log.log(
                            logging.INFO if isinstance(exc, DependencyError) else logging.WARNING,
                            "cannot re-check runs for %g s: %s",
                            pause,
                            exc,
                            extra={"shard": self.shard},
                        )
                        break
            await sleep_or_stop(stopping, self.section.check_interval)

    def _started_change(self, name: str, timer: Timer) -> Transition | None:
        """A pod of the Job ``name`` has been running for a grace: its run to ``RUNNING``,
        if still ``BUFFERED`` (``None`` for a Job not named like a run's attempt)."""
        attempt = parse_job_name(name)
        if attempt is None:
            return None
        return Transition(
            timer.algorithm,
            attempt[0],
            Stage.RUNNING,
            expect=Stage.BUFFERED,
            job_uid=timer.job_uid,
            shard=self.shard,
            # the pod's creation stands in for the Job's: the deadline counts from it
            sent_at=_timestamp(timer.created),
            at_attempt=attempt[1],
        )

    async def _lost(self, name: str, timer: Timer) -> None:
        """A Job was deleted: fail its run, if still RUNNING and the Job is really gone."""
        if await self.client.get(JOBS, name) is not None:
            return  # there after all
        # only a RUNNING run is lost: a BUFFERED one is still queued and dispatched again;
        # and only at this Job's attempt: an earlier attempt's Job goes when it is retried
        run_id, attempt = parse_job_name(name) or (UUID(int=0), 0)  # not a run's: no match
        change = Transition(
            timer.algorithm,
            run_id,
            Stage.FAILED,
            expect=Stage.RUNNING,
            cause="JobLost",
            details=JOB_LOST,
            at_attempt=attempt,
        )
        self.actions.submit(Act(change, "job_lost", self.shard))

    async def _pulling(self, name: str, timer: Timer) -> None:
        """An image failed to pull for the whole grace period: unless it has started since."""
        pod = await self.client.get(PODS, timer.pod)
        state = container_state(pod) if pod else None
        message = pull_error(state) if state else None
        if message is None:
            return  # started, or gone, since
        details = f"{timer.message} (failing for {self.section.image_pull_grace:g} s"
        details += f"; now {message})" if message != timer.message else ")"
        stage, cause = Stage.SCHEDULING_FAILED, "ImagePullFailed"
        self._finish(
            name, timer.algorithm, stage, cause, details, "image_pull", True, "schedulingFailure"
        )

    async def _unschedulable(self, name: str, timer: Timer) -> None:
        """A pod could not be placed for the whole grace period: unless it has been since.
        Only a template that retries scheduling failures acts on it (then, once its retries
        are spent, the run fails); elsewhere the pod waits, as for a node group scaling up,
        until the run's deadline."""
        pod = await self.client.get(PODS, timer.pod)
        message = unschedulable(pod) if pod else None
        if message is None or (pod and container_state(pod)):
            return  # placed, or gone, since
        details = f"{message} (unschedulable for {self.section.unschedulable_grace:g} s)"
        self._finish(
            name,
            timer.algorithm,
            Stage.SCHEDULING_FAILED,
            "Unschedulable",
            details,
            "unschedulable",
            True,
            "schedulingFailure",
            only_if_retried=True,
        )

    def _finish(
        self,
        name: str,
        algorithm: str,
        stage: Stage,
        cause: str,
        details: str,
        action: str,
        delete_job: bool = False,
        failure_class: FailureClass | None = None,
        *,
        only_if_retried: bool = False,
    ) -> bool:
        """Submit the end of the run whose attempt is the Job ``name`` — or, for a failure
        its template may retry, hand it to the retrier, which decides. Whether it was taken
        (a full queue drops it)."""
        attempt = parse_job_name(name)
        if attempt is None:
            return True  # labelled like a run, but not named like one: not ours
        run_id, number = attempt
        if failure_class is not None and self.retrier is not None:
            failure = Failure(
                algorithm, run_id, number, self.shard, failure_class,
                stage, cause, details, action, delete_job, only_if_retried,
            )  # fmt: skip
            return self.retrier.submit(failure)
        if only_if_retried:
            return True
        change = Transition(
            algorithm, run_id, stage, cause=cause, details=details, at_attempt=number
        )
        return self.actions.submit(Act(change, action, self.shard, delete_job, job=name))


def _first_copy(meta: dict[str, Any], name: str) -> str | None:
    """The name of the first Job of the attempt the copy ``name`` belongs to (the attempt's
    own name: ``<request id>`` or ``<request id>-a<n>``)."""
    request_id = (meta.get("labels") or {}).get(REQUEST_LABEL)
    if not request_id:
        return None
    first = name.rsplit("-copy-", 1)[0]
    return first if first.startswith(request_id) else str(request_id)


def _due(timers: OrderedDict[str, Timer], now: float) -> list[tuple[str, Timer]]:
    """Take the timers that have run out (each kind is in due order: one grace per kind)."""
    due = []
    while timers:
        name, timer = next(iter(timers.items()))
        if timer.due > now:
            break
        timers.popitem(last=False)
        due.append((name, timer))
    return due


def _seen(decided: OrderedDict[str, None], uid: str) -> bool:
    """Whether ``uid`` was decided already; remembers it (the newest 100,000)."""
    if uid in decided:
        return True
    decided[uid] = None
    if len(decided) > 100_000:
        decided.popitem(last=False)
    return False


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
