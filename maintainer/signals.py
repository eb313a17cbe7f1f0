"""What Kubernetes says about a run, read from raw Job, Pod and Event objects.

Plain functions over the dicts the watch hands over (no models: a shard produces ten and
more events per run). They decide; :mod:`maintainer.shardwatch` acts.

The rules:

* **Pod started** (its container is running) → ``RUNNING``, only if still ``BUFFERED``.
* **A failed attempt does not fail the run; the Job does.** While a Job's
  ``backoffLimit`` allows another attempt, Kubernetes starts a new pod and the run stays
  ``RUNNING``; the failed attempt is only remembered (:class:`PodFailure`). When the Job
  fails (``FailureTarget``/``Failed`` condition), the run fails:

  - ``DeadlineExceeded`` → ``DEADLINE_EXCEEDED``;
  - the last failed attempt was ``OOMKilled`` → ``FAILED`` with cause ``OOMKilled`` (also
    when the Job's own reason is ``BackoffLimitExceeded`` or a ``podFailurePolicy``
    ``FailJob``: running out of memory is what the user must fix);
  - ``BackoffLimitExceeded`` / ``PodFailurePolicy`` → ``FAILED`` with that cause and the
    exit code of the last failed attempt in the details.

  So an OOM with ``maximumRetries: 0`` fails the run at once, and one with retries fails
  it only if the retries run out too.
* **Image pull failing** (``ErrImagePull``, ``ImagePullBackOff``, …) → after a grace
  period, ``SCHEDULING_FAILED`` and the Job deleted.
* **Job succeeded** but no completion arrived → after a grace period, ``FAILED``: the
  algorithm exited without reporting a result.
* **``FailedCreate``** Event on a Job → ``SCHEDULING_FAILED`` with the Event's message, and
  the Job deleted (it would otherwise start the run later, behind its failure).
* **Pod unschedulable** (``PodScheduled`` ``False``, reason ``Unschedulable``) for a grace
  period → a scheduling failure, acted on only where the template retries those.
* **Pod disrupted** (``Evicted`` by its kubelet, its node lost: the pod ``Failed`` with
  reason ``Evicted``/``NodeLost`` or a ``DisruptionTarget`` condition) → remembered as the
  failed attempt, like an exit code; a Job failing after it fails the run as ``NodeLost``
  or ``Evicted``.

Each verdict names its *failure class* when a template's retry policy may retry it
(:mod:`nexus.core.retrying`): out of memory, scheduling failure, node lost. Then the run
gets another attempt, a new Job, instead of its end, while its policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nexus.core.labels import ALGORITHM_LABEL, JOB_NAME_LABEL, REQUEST_LABEL
from nexus.core.retrying import FailureClass
from nexus.core.runs import Stage

PULL_ERRORS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
    }
)
"""Container waiting reasons that mean its image cannot be had."""

NO_RESULT = "the algorithm exited without reporting a result"
JOB_LOST = "the job of this run was deleted before the run reported an outcome"


DISRUPTED = frozenset(
    {"Evicted", "NodeLost", "Preempting", "Terminated", "UnexpectedAdmissionError"}
)
"""Pod ``status.reason`` values of a pod stopped by the cluster, not by its container."""


@dataclass(frozen=True, slots=True)
class PodFailure:
    """How an attempt (a pod) of a Job ended."""

    container: str
    reason: str
    exit_code: int
    message: str
    disrupted: bool = False
    """Stopped by the cluster (evicted, its node lost), not by the algorithm."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A finished run's stage, cause and details, and the action's metric label."""

    stage: Stage
    cause: str
    details: str
    action: str
    failure_class: FailureClass | None = None
    """The class a retry policy may retry, if any."""


def run_of_pod(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(algorithm, Job name) of an algorithm pod: the Job is the run's attempt."""
    meta = pod["metadata"]
    labels = meta.get("labels") or {}
    algorithm = labels.get(ALGORITHM_LABEL)
    owners = meta.get("ownerReferences") or [{}]
    name = labels.get(JOB_NAME_LABEL) or owners[0].get("name") or labels.get(REQUEST_LABEL)
    return (algorithm, name) if algorithm and name else None


def disruption(pod: dict[str, Any]) -> PodFailure | None:
    """The failed attempt of a pod the cluster stopped: evicted by its kubelet (reason
    ``Evicted``), its node lost (``NodeLost``; or marked by the taint manager or pod GC),
    preempted — what a ``DisruptionTarget`` condition or the pod's reason says."""
    status = pod.get("status") or {}
    if status.get("phase") != "Failed":
        return None
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    target = next(
        (
            c
            for c in status.get("conditions") or ()
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        None,
    )
    if reason not in DISRUPTED and target is None:
        return None
    if not reason:  # marked by the control plane: its condition says why
        reason = "NodeLost" if target and "PodGC" in str(target.get("reason")) else "Disrupted"
        if target and "Taint" in str(target.get("reason")):
            reason = "NodeLost"
    message = message or str((target or {}).get("message") or "the pod was disrupted")
    statuses = status.get("containerStatuses") or [{}]
    ended = (statuses[0].get("state") or {}).get("terminated") or {}
    code = int(ended.get("exitCode") or 137)
    return PodFailure(str(statuses[0].get("name", "")), reason, code, message, disrupted=True)


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's message, while a pod cannot be placed on any node."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for condition in status.get("conditions") or ():
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return str(condition.get("message") or "no node can take the pod")
    return None


def pod_matters(kind: str, status: dict[str, Any] | None) -> bool:
    """Whether a pod's watch event is one the rules above act on, from its ``status`` alone
    (:data:`nexus.core.watchevents.Sift`), so that the rest of it need not be read: not a
    pod deleted (whatever its status: declined from the type alone, unread), not yet
    reported on by the kubelet (no container status), creating its container, or
    succeeded (unless out of memory) — most of a run's pod events.

    It asks the very functions the rules use, of the status alone: they read nothing
    else of a pod."""
    if kind == "DELETED" or status is None:
        return False
    pod = {"status": status}
    if disruption(pod) is not None:
        return True
    state = container_state(pod)
    if state is None:
        return unschedulable(pod) is not None
    if "running" in state:
        return True
    if "waiting" in state:
        return pull_error(state) is not None
    if "terminated" in state:
        return pod_failure(pod, state) is not None
    return False


def job_matters(kind: str, status: dict[str, Any] | None) -> bool:
    """Whether a Job's watch event is worth reading (:data:`nexus.core.watchevents.Sift`):
    a change to a Job without conditions says nothing new (its ADDED event, or the list,
    named it already). Every deletion matters (whatever the status)."""
    return kind != "MODIFIED" or status is None or bool(status.get("conditions"))


def container_state(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The ``state`` of the pod's (single) container, once the kubelet has reported one."""
    statuses = (pod.get("status") or {}).get("containerStatuses")
    if not statuses:
        return None
    state: dict[str, Any] | None = statuses[0].get("state")
    return state


def pod_failure(pod: dict[str, Any], state: dict[str, Any]) -> PodFailure | None:
    """How the attempt ended, if it failed (non-zero exit or killed)."""
    ended = state.get("terminated")
    if not ended:
        return None
    code = int(ended.get("exitCode") or 0)
    reason = str(ended.get("reason") or "")
    if code == 0 and reason != "OOMKilled":
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return PodFailure(
        str(statuses[0].get("name", "")), reason, code, str(ended.get("message") or "")
    )


def pull_error(state: dict[str, Any]) -> str | None:
    """The message of an image that cannot be pulled, if that is why the pod waits."""
    waiting = state.get("waiting")
    if waiting and waiting.get("reason") in PULL_ERRORS:
        return f"{waiting['reason']}: {waiting.get('message') or 'the image cannot be pulled'}"
    return None


JobEnd = Literal["succeeded", "failed"]
"""How a Job ended, by its conditions."""


def job_outcome(job: dict[str, Any]) -> tuple[JobEnd, str, str] | None:
    """``("failed", reason, message)``, ``("succeeded", "", "")`` or ``None`` (not over)."""
    conditions = (job.get("status") or {}).get("conditions")
    if not conditions:
        return None
    for condition in conditions:
        if condition.get("status") != "True":
            continue
        kind = condition.get("type")
        if kind in ("Failed", "FailureTarget"):
            return "failed", str(condition.get("reason") or ""), str(condition.get("message") or "")
        if kind in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", "", ""
    return None


def failed_verdict(reason: str, message: str, last: PodFailure | None) -> Verdict:
    """The run's end when its Job failed for ``reason`` after ``last`` failed attempt."""
    if reason == "DeadlineExceeded":
        details = message or "the job was active longer than its deadline"
        return Verdict(Stage.DEADLINE_EXCEEDED, "DeadlineExceeded", details, "deadline_exceeded")
    if last is not None and last.reason == "OOMKilled":
        details = last.message or (
            f"container {last.container} was killed for exceeding its memory limit"
            f" (exit code {last.exit_code})"
        )
        return Verdict(
            Stage.FAILED, "OOMKilled", _join(details, message), "oom_killed", "outOfMemory"
        )
    if last is not None and last.disrupted:
        details = f"{last.message} (exit code {last.exit_code})"
        return Verdict(Stage.FAILED, last.reason, _join(details, message), "node_lost", "nodeLost")
    action = {"BackoffLimitExceeded": "backoff_limit", "PodFailurePolicy": "failure_policy"}
    detail = message or "the job failed"
    if last is not None:
        detail += f"; the last attempt exited with code {last.exit_code}"
        if last.reason and last.reason != "Error":
            detail += f" ({last.reason})"
        if last.message:
            detail += f": {last.message}"
    return Verdict(Stage.FAILED, reason or "JobFailed", detail, action.get(reason, "job_failed"))


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if second else first
