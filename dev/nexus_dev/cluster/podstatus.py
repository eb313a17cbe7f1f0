"""What a kubelet writes in a pod's ``status`` at each step of its container's life.

Pure functions from what the kubelet knows (the pod as stored, its container's name, image,
id and start) to the ``status`` a real kubelet writes when the container runs, waits for
its image, or has terminated — the fields kubernetes-asyncio and Nexus's maintainer read:

* ``phase``: ``Pending``, ``Running``, ``Succeeded`` or ``Failed``;
* ``conditions``: ``PodReadyToStartContainers``, ``Initialized``, ``Ready``,
  ``ContainersReady`` and ``PodScheduled``, with the reasons a real kubelet gives
  (``ContainersNotReady``, ``PodCompleted``, ``PodFailed``);
* ``containerStatuses[0]``: ``state`` with ``waiting`` (reason, message), ``running``
  (``startedAt``) or ``terminated`` (exit code, reason, times, message), ``ready``,
  ``started``, ``image``, ``imageID``, ``containerID``;
* ``hostIP(s)``, ``podIP(s)`` (one address per pod, kept for its life), ``startTime``,
  ``qosClass``.

Parts that never change — the host's addresses, the pod's addresses once drawn, an empty
``lastState`` — are shared between versions rather than built again: stored objects are
never mutated, and every object not built is one fewer to keep in the watch history and
to free when it leaves it.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from nexus_dev.cluster.store import Obj

_HOST_IP = "10.0.0.1"
_HOST_IPS = [{"ip": _HOST_IP}]
_NO_STATE: dict[str, Any] = {}
_IMAGE_DIGEST = "0" * 64


class Container(Protocol):
    """What the kubelet knows of a pod's container (:class:`.kubelet.PodRun` is one)."""

    container: dict[str, Any]
    image: str
    container_id: str
    started_at: str


def condition(kind: str, status: bool, now: str, reason: str | None = None) -> dict[str, Any]:
    """One entry of ``status.conditions``."""
    entry: dict[str, Any] = {
        "type": kind,
        "status": "True" if status else "False",
        "lastProbeTime": None,
        "lastTransitionTime": now,
    }
    if reason:
        entry["reason"] = reason
    return entry


def running(pod: Obj, run: Container, now: str) -> dict[str, Any]:
    """The container has started and is ready."""
    status = _base(pod, now)
    status["phase"] = "Running"
    status["conditions"] = [
        condition(kind, True, now)
        for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
    ] + [_scheduled(pod)]
    state = {"running": {"startedAt": run.started_at or now}}
    status["containerStatuses"] = [_container(run, state, ready=True)]
    return status


def waiting(pod: Obj, run: Container, reason: str, message: str, now: str) -> dict[str, Any]:
    """The container cannot start (``ErrImagePull``, ``ImagePullBackOff``): still Pending."""
    status = _base(pod, now)
    status["phase"] = "Pending"
    status["conditions"] = [
        condition("PodReadyToStartContainers", True, now),
        condition("Initialized", True, now),
        condition("Ready", False, now, "ContainersNotReady"),
        condition("ContainersReady", False, now, "ContainersNotReady"),
        _scheduled(pod),
    ]
    state = {"waiting": {"reason": reason, "message": message}}
    status["containerStatuses"] = [_container(run, state, ready=False)]
    return status


def terminated(
    pod: Obj,
    run: Container,
    exit_code: int,
    reason: str,
    message: str | None,
    *,
    succeeded: bool,
    now: str,
) -> dict[str, Any]:
    """The container has stopped: ``Succeeded`` or ``Failed``."""
    detail: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": run.started_at or now,
        "finishedAt": now,
    }
    if run.container_id:
        detail["containerID"] = run.container_id
    if message:
        detail["message"] = message
    status = _base(pod, now)
    status["phase"] = "Succeeded" if succeeded else "Failed"
    done = "PodCompleted" if succeeded else "PodFailed"
    status["conditions"] = [
        condition("PodReadyToStartContainers", False, now),
        condition("Initialized", True, run.started_at or now, done),
        condition("Ready", False, now, done),
        condition("ContainersReady", False, now, done),
        _scheduled(pod),
    ]
    status["containerStatuses"] = [_container(run, {"terminated": detail}, ready=False)]
    return status


EVICTION_MESSAGE = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 64Mi. "
    "Container {container} was using {memory}, request is {memory}, has larger consumption "
    "of memory. "
)
NODE_GONE = "PodGC: node no longer exists"
UNKNOWN_CONTAINER = "The container could not be located when the pod was terminated"
UNSCHEDULABLE = (
    "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: "
    "1 No preemption victims found for incoming pod."
)


def disrupted(pod: Obj, run: Container, kind: str, now: str) -> dict[str, Any]:
    """The pod stopped by the cluster: ``evicted`` by the kubelet under node pressure
    (phase ``Failed``, reason ``Evicted``, a ``DisruptionTarget`` condition with reason
    ``TerminationByKubelet``, its container killed: exit 137), or its node lost
    (``node-lost``: marked ``Failed`` by the pod garbage collector with a
    ``DisruptionTarget`` condition, reason ``DeletionByPodGC``; the container's end unknown)."""
    name = run.container["name"]
    memory = ((run.container.get("resources") or {}).get("requests") or {}).get("memory", "0")
    status = _base(pod, now)
    status["phase"] = "Failed"
    if kind == "evicted":
        message = EVICTION_MESSAGE.format(container=name, memory=memory)
        status["reason"], status["message"] = "Evicted", message
        target = {**condition("DisruptionTarget", True, now, "TerminationByKubelet")}
        ended = {"exitCode": 137, "reason": "Error"}
    else:
        message = NODE_GONE
        target = {**condition("DisruptionTarget", True, now, "DeletionByPodGC")}
        ended = {"exitCode": 137, "reason": "ContainerStatusUnknown", "message": UNKNOWN_CONTAINER}
    target["message"] = message
    status["conditions"] = [
        target,
        condition("PodReadyToStartContainers", False, now),
        condition("Initialized", True, run.started_at or now, "PodFailed"),
        condition("Ready", False, now, "PodFailed"),
        condition("ContainersReady", False, now, "PodFailed"),
        _scheduled(pod),
    ]
    detail = {**ended, "startedAt": run.started_at or now, "finishedAt": now}
    if run.container_id:
        detail["containerID"] = run.container_id
    status["containerStatuses"] = [_container(run, {"terminated": detail}, ready=False)]
    return status


def unschedulable(pod: Obj, now: str) -> dict[str, Any]:
    """A pod no node can take: ``Pending``, ``PodScheduled`` false with reason
    ``Unschedulable`` and the scheduler's message; no node, no container status."""
    entry = condition("PodScheduled", False, now, "Unschedulable")
    entry["message"] = UNSCHEDULABLE
    return {
        "phase": "Pending",
        "conditions": [entry],
        "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort"),
    }


def _scheduled(pod: Obj) -> dict[str, Any]:
    return condition("PodScheduled", True, pod["metadata"]["creationTimestamp"])


def _base(pod: Obj, now: str) -> dict[str, Any]:
    old = pod.get("status") or {}
    ip = old.get("podIP")
    if ip:
        ips = old["podIPs"]
    else:
        bits = random.getrandbits(16)  # one draw, not two randint calls
        ip = f"10.244.{bits >> 8}.{(bits & 0xFF) % 254 + 1}"
        ips = [{"ip": ip}]
    return {
        "hostIP": _HOST_IP,
        "hostIPs": _HOST_IPS,
        "podIP": ip,
        "podIPs": ips,
        "startTime": old.get("startTime") or now,
        "qosClass": old.get("qosClass", "BestEffort"),
    }


def _container(run: Container, state: dict[str, Any], *, ready: bool) -> Obj:
    status: dict[str, Any] = {
        "name": run.container["name"],
        "state": state,
        "lastState": _NO_STATE,
        "ready": ready,
        "restartCount": 0,
        "image": run.image,
        "imageID": f"{run.image}@sha256:{_IMAGE_DIGEST}" if run.container_id else "",
        "started": "running" in state,
    }
    if run.container_id:
        status["containerID"] = run.container_id
    return status
