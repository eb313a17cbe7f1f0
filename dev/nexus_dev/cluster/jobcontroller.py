"""The Job controller: pods for Jobs, retries, deadlines, failure policies, TTL.

It keeps the part of ``pkg/controller/job`` that Nexus depends on, with the same status,
conditions and Events:

* a Job gets pods (``<job>-<5 random>``, owned by the Job, labelled ``controller-uid`` and
  ``job-name``) until ``completions`` succeeded, at most ``parallelism`` at a time;
* a failed pod counts in ``status.failed`` and is replaced after an exponential back-off
  (``retry_backoff`` * 2^n, capped) until ``failed > backoffLimit`` → ``BackoffLimitExceeded``;
* ``podFailurePolicy`` rules on exit codes decide first: ``FailJob`` ends the Job
  (``PodFailurePolicy``), ``Ignore`` replaces the pod without counting it, ``Count``
  counts it as usual;
* ``activeDeadlineSeconds`` from ``startTime`` → ``DeadlineExceeded`` and running pods
  killed;
* a failing Job first shows ``FailureTarget`` while its pods are stopped, then ``Failed``;
  a successful one ``SuccessCriteriaMet`` then ``Complete`` with ``completionTime``;
* ``ttlSecondsAfterFinished`` deletes the finished Job and its pods (background) after
  that many seconds.

What it writes, and when, is what Nexus and kubectl read from a real controller, with the
steps neither reads left out: a Job's status is written at most once per sync (its
``active`` count and ``startTime`` in the sync that creates its pod, its conditions and
``completionTime`` in the sync after the pod ends), three writes in a run's life; the
real controller's intermediate ``uncountedTerminatedPods`` write and the pods' tracking
finalizer are not modelled. Pod changes sync their Job at the next loop turn, not after
Kubernetes' one-second ``syncJobBatchPeriod``: with one pod per Job that batching would
coalesce nothing (a pod's creation is counted in the sync that made it, its end is a
single change) and would only delay every finished Job by up to a second.

Work is batched: a change only marks its Job dirty, and all dirty Jobs are synchronised in
one callback per loop turn. Deadlines, back-offs and TTLs are timers of one
:class:`~.timeline.Timeline` (a heap on a single loop timer), not a loop timer each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from nexus.core.waiting import Backoff
from nexus_dev.cluster import podstatus
from nexus_dev.cluster.deletion import GarbageCollector
from nexus_dev.cluster.events import NODE_NAME, EventRecorder
from nexus_dev.cluster.kubelet import Kubelet
from nexus_dev.cluster.statuses import new_uid, now_iso, random_suffix
from nexus_dev.cluster.store import Change, Obj, ObjectStore, derived_spec
from nexus_dev.cluster.timeline import Timeline, Timer

COMPONENT = "job-controller"
_running_loop: Final = asyncio.get_running_loop
"""As a name of this module: compiled, a C static, not a module attribute looked up at
every batch of dirty Jobs."""
BACKOFF_MESSAGE = "Job has reached the specified backoff limit"
DEADLINE_MESSAGE = "Job was active longer than specified deadline"
_NOTHING_UNCOUNTED: dict[str, Any] = {}  # shared by every status: stored objects never change
_ON_THE_NODE = b'"nodeName":%b,"serviceAccountName":"default"' % orjson.dumps(NODE_NAME)
"""What a pod's spec adds to its template's, serialised (:func:`.store.derived_spec`)."""


@dataclass(frozen=True)
class JobControllerSettings:
    retry_backoff: float = 10.0
    """Delay before the first replacement of a failed pod, seconds (Kubernetes: 10 s)."""
    retry_backoff_max: float = 360.0
    """Longest delay between replacements, seconds (Kubernetes: 6 minutes)."""


@dataclass(eq=False, slots=True)
class JobState:
    namespace: str
    name: str
    uid: str
    active: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    start_time: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    completion_time: str | None = None
    failing: tuple[str, str] | None = None
    finished: bool = False
    retry_pending: bool = False
    timers: dict[str, Timer] = field(default_factory=dict)

    def cancel_timers(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()


def _condition(kind: str, reason: str, message: str, now: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


class JobController:
    """Runs the Jobs of one shard."""

    def __init__(
        self,
        store: ObjectStore,
        recorder: EventRecorder,
        kubelet: Kubelet,
        collector: GarbageCollector,
        settings: JobControllerSettings,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.kubelet = kubelet
        self.collector = collector
        self.settings = settings
        self.jobs: dict[str, JobState] = {}
        self.timeline = Timeline()
        self._dirty: dict[str, JobState] = {}
        self._syncing: JobState | None = None
        store.subscribe("jobs", self._on_job)
        store.subscribe("pods", self._on_pod)

    # -- change intake ---------------------------------------------------------------------

    def _mark(self, state: JobState) -> None:
        if not self._dirty:
            _running_loop().call_soon(self._flush)
        self._dirty[state.uid] = state

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for state in dirty.values():
            self._syncing = state
            try:
                self._sync(state)
            finally:
                self._syncing = None

    def _on_job(self, change: Change) -> None:
        metadata: Obj = change.obj["metadata"]
        uid = metadata["uid"]
        if change.type == "ADDED":
            state = JobState(metadata["namespace"], metadata["name"], uid)
            self.jobs[uid] = state
            self._mark(state)
        elif change.type == "DELETED":
            gone = self.jobs.pop(uid, None)
            if gone is not None:
                gone.cancel_timers()
                self._dirty.pop(uid, None)

    def _on_pod(self, change: Change) -> None:
        pod = change.obj
        metadata: Obj = pod["metadata"]  # typed: compiled, a dict's own lookups
        state = None
        for owner in metadata.get("ownerReferences") or ():
            if owner.get("controller"):
                state = self.jobs.get(owner["uid"])
                break
        if state is None:
            return
        name = metadata["name"]
        status = pod.get("status")
        phase = status.get("phase") if isinstance(status, dict) else None
        if change.type == "DELETED" or phase in ("Succeeded", "Failed"):
            state.running.discard(name)
            if name in state.active:
                state.active.discard(name)
                if phase == "Succeeded":
                    state.succeeded += 1
                else:
                    self._pod_failed(state, pod)
            self._mark(state)
            return
        if phase == "Running":
            state.running.add(name)
        if state is not self._syncing:
            # a pod created or started while its Job is synchronised changes only counts,
            # which the status written at the end of that same sync already includes
            self._mark(state)

    # -- decisions -----------------------------------------------------------------------

    def _pod_failed(self, state: JobState, pod: Obj) -> None:
        job = self.store.get("jobs", state.namespace, state.name)
        if job is None or state.finished or state.failing is not None:
            state.failed += 1
            return
        if job["metadata"].get("deletionTimestamp"):
            state.failed += 1  # being deleted: count the pod, decide nothing
            return
        spec = job["spec"]
        action, message = _policy_action(spec.get("podFailurePolicy"), pod)
        if action == "Ignore":
            return
        state.failed += 1
        if action == "FailJob":
            self._fail(state, job, "PodFailurePolicy", message)
        elif state.failed > int(spec.get("backoffLimit", 6)):
            self._fail(state, job, "BackoffLimitExceeded", BACKOFF_MESSAGE)
        else:
            retry = Backoff(first=self.settings.retry_backoff, cap=self.settings.retry_backoff_max)
            delay = retry.delay(state.failed)
            if delay > 0:
                state.retry_pending = True
                state.timers["retry"] = self.timeline.call_later(delay, self._retry, state)

    def _retry(self, state: JobState) -> None:
        state.retry_pending = False
        state.timers.pop("retry", None)
        self._mark(state)

    def _fail(self, state: JobState, job: Obj, reason: str, message: str) -> None:
        now = now_iso()
        state.failing = (reason, message)
        state.retry_pending = False
        state.conditions = [*state.conditions, _condition("FailureTarget", reason, message, now)]
        self.recorder.record(job, "Warning", reason, message, COMPONENT)
        for timer in ("retry", "deadline"):
            handle = state.timers.pop(timer, None)
            if handle is not None:
                handle.cancel()
        for pod_name in list(state.active):
            if self.store.get("pods", state.namespace, pod_name) is not None:
                self.collector.delete("pods", state.namespace, pod_name, "Background")
                self.recorder.record(
                    job, "Normal", "SuccessfulDelete", f"Deleted pod: {pod_name}", COMPONENT
                )

    def _deadline(self, state: JobState) -> None:
        state.timers.pop("deadline", None)
        job = self.store.get("jobs", state.namespace, state.name)
        if job is None or state.finished or state.failing is not None:
            return
        self._fail(state, job, "DeadlineExceeded", DEADLINE_MESSAGE)
        self._mark(state)

    def _finish(self, state: JobState, job: Obj) -> None:
        state.finished = True
        state.cancel_timers()
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            state.timers["ttl"] = self.timeline.call_later(float(ttl), self._expire, state)

    def _expire(self, state: JobState) -> None:
        state.timers.pop("ttl", None)
        job = self.store.get("jobs", state.namespace, state.name)
        if job is not None and job["metadata"]["uid"] == state.uid:
            self.collector.delete("jobs", state.namespace, state.name, "Background")

    # -- synchronisation -----------------------------------------------------------------

    def _sync(self, state: JobState) -> None:
        job = self.store.get("jobs", state.namespace, state.name)
        if job is None or job["metadata"]["uid"] != state.uid:
            return
        spec: Obj = job["spec"]  # a dict (validated): compiled, its own lookups
        now = now_iso()
        if state.start_time is None and not spec.get("suspend"):
            state.start_time = now
            deadline = spec.get("activeDeadlineSeconds")
            if deadline is not None:
                state.timers["deadline"] = self.timeline.call_later(
                    float(deadline), self._deadline, state
                )
        deleting = bool(job["metadata"].get("deletionTimestamp"))
        if not state.finished:
            completions = int(spec.get("completions") or 1)
            if state.failing is not None:
                if not state.active:
                    reason, message = state.failing
                    state.conditions = [
                        *state.conditions,
                        _condition("Failed", reason, message, now),
                    ]
                    self._finish(state, job)
            elif state.succeeded >= completions:
                message = "Reached expected number of succeeded pods"
                state.conditions = [
                    *state.conditions,
                    _condition("SuccessCriteriaMet", "CompletionsReached", message, now),
                    _condition("Complete", "CompletionsReached", message, now),
                ]
                state.completion_time = now
                self.recorder.record_unique(
                    job, COMPONENT, (("Normal", "Completed", "Job completed"),)
                )
                self._finish(state, job)
            elif not deleting and not state.retry_pending and not spec.get("suspend"):
                parallelism = int(spec.get("parallelism", 1))
                wanted = min(parallelism, completions - state.succeeded) - len(state.active)
                for _ in range(max(0, wanted)):
                    self._create_pod(state, job)
        status: dict[str, Any] = {}
        if state.conditions:
            status["conditions"] = state.conditions  # replaced, never changed in place
        if state.start_time:
            status["startTime"] = state.start_time
        if state.completion_time:
            status["completionTime"] = state.completion_time
        if state.active:
            status["active"] = len(state.active)
        if state.succeeded:
            status["succeeded"] = state.succeeded
        if state.failed:
            status["failed"] = state.failed
        status["ready"] = len(state.running)
        status["terminating"] = 0
        status["uncountedTerminatedPods"] = _NOTHING_UNCOUNTED
        if status != job.get("status"):
            self.store.replace("jobs", {**job, "status": status})

    def _create_pod(self, state: JobState, job: Obj) -> None:
        # dicts and a list of dicts (validated): compiled, read without method calls
        template: Obj = job["spec"]["template"]
        template_meta: Obj = template.get("metadata") or {}
        name = f"{state.name}-"[:58] + random_suffix()
        now = now_iso()
        pod_spec: Obj = template["spec"]
        has_resources = False
        containers: list[Obj] = pod_spec.get("containers", [])
        for container in containers:
            if container.get("resources"):
                has_resources = True
                break
        metadata: dict[str, Any] = {
            "name": name,
            "generateName": f"{state.name}-",
            "namespace": state.namespace,
            "uid": new_uid(),
            "creationTimestamp": now,
            "labels": template_meta.get("labels") or {},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": state.name,
                    "uid": state.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if template_meta.get("annotations"):
            metadata["annotations"] = template_meta["annotations"]
        pod: dict[str, Any] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": metadata,
            "spec": {
                **pod_spec,
                "nodeName": NODE_NAME,
                "serviceAccountName": pod_spec.get("serviceAccountName", "default"),
            },
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": now,
                    }
                ],
                "qosClass": "Burstable" if has_resources else "BestEffort",
            },
        }
        fault = self.kubelet.fault_for(pod, job)
        if fault == "unschedulable":  # no node takes it: it waits, Pending, on no kubelet
            del pod["spec"]["nodeName"]
            pod["status"] = {}
            pod["status"] = podstatus.unschedulable(pod, now)
            self.store.create("pods", pod)
            state.active.add(name)
            self.recorder.record(
                job, "Normal", "SuccessfulCreate", f"Created pod: {name}", COMPONENT
            )
            self.recorder.record(
                pod, "Warning", "FailedScheduling", podstatus.UNSCHEDULABLE, "default-scheduler"
            )
            return
        if "nodeName" not in pod_spec and "serviceAccountName" not in pod_spec:
            derived_spec(pod["spec"], pod_spec, _ON_THE_NODE)
        self.store.create("pods", pod)
        state.active.add(name)
        # neither can happen again to its object (see EventRecorder.record)
        recorder = self.recorder
        recorder.record_unique(
            job, COMPONENT, (("Normal", "SuccessfulCreate", f"Created pod: {name}"),)
        )
        scheduled = f"Successfully assigned {state.namespace}/{name} to {NODE_NAME}"
        recorder.record_unique(pod, "default-scheduler", (("Normal", "Scheduled", scheduled),))
        self.kubelet.admit(pod, fault, asked=True)


def _policy_action(policy: dict[str, Any] | None, pod: Obj) -> tuple[str | None, str]:
    """The action of the first ``podFailurePolicy`` rule the failed pod matches."""
    if not policy:
        return None, ""
    status = pod.get("status") or {}
    metadata = pod["metadata"]
    for index, rule in enumerate(policy.get("rules") or ()):
        codes = rule.get("onExitCodes")
        if codes:
            values = set(codes.get("values") or ())
            for container in status.get("containerStatuses") or ():
                terminated = (container.get("state") or {}).get("terminated")
                if not terminated or terminated.get("exitCode", 0) == 0:
                    continue
                if codes.get("containerName") not in (None, container["name"]):
                    continue
                code = terminated["exitCode"]
                if (code in values) == (codes.get("operator") == "In"):
                    return rule["action"], (
                        f"Container {container['name']} for pod {metadata['namespace']}/"
                        f"{metadata['name']} failed with exit code {code} matching "
                        f"{rule['action']} rule at index {index}"
                    )
        for wanted in rule.get("onPodConditions") or ():
            for condition in status.get("conditions") or ():
                if condition.get("type") == wanted.get("type") and condition.get(
                    "status"
                ) == wanted.get("status", "True"):
                    return rule["action"], (
                        f"Pod {metadata['namespace']}/{metadata['name']} has condition "
                        f"{wanted.get('type')} matching {rule['action']} rule at index {index}"
                    )
    return None, ""
