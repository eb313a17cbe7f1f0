"""The simulated kubelet: takes a created pod through Pending → Running → Succeeded/Failed.

The kubelet owns everything that happens to a pod after the Job controller creates it:
starting its container through the shard's runtime (:mod:`.processes` runs the command as
a local process, :mod:`.simulation` plays the algorithm contract without one), writing
``status`` the way a real kubelet does (:mod:`.podstatus`: ``phase``, ``conditions``,
``containerStatuses[].state`` with ``waiting``/``running``/``terminated``, reasons and exit
codes), emitting its Events (``Pulling``, ``Pulled``, ``Created``, ``Started``,
``Killing``, image-pull ``Failed``/``BackOff``) and stopping the container when the pod is
deleted (``Killing``, then gone).

Guarantees:

* a pod is removed from the store only once its container has stopped; a deleted pod
  whose container was still running ends ``Failed`` first (exit 143 after SIGTERM, 137
  after SIGKILL), as in Kubernetes;
* the kubelet runs on timers (``loop.call_later``) — no task per pod; the runtimes decide
  how many tasks they need (a fixed worker pool for simulated pods);
* a started container is reported ``Running`` at the kubelet's next relist of its
  containers (``relist_interval``), not at once: a pod whose container ends before that
  goes from ``Pending`` to ``Succeeded``/``Failed`` in one status write, as on a real node;
* container logs are kept per pod, bounded to ``log_limit`` bytes (the newest kept), until
  the pod is deleted.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from nexus.core.waiting import Backoff
from nexus_dev.cluster import podstatus
from nexus_dev.cluster.events import EventRecorder
from nexus_dev.cluster.expansion import container_env
from nexus_dev.cluster.statuses import ApiError, now_iso
from nexus_dev.cluster.store import Obj, ObjectStore
from nexus_dev.cluster.validation import memory_bytes

#: Env variable or annotation naming the fault a pod must show (see :mod:`.simulation`).
FAULT_ENV = "NEXUS_DEVCLUSTER_FAULT"
FAULT_ANNOTATION = "devcluster.nexus/fault"
#: Annotation: only the first N pods of a run (by request id, else Job) show the fault.
FAULT_PODS_ANNOTATION = "devcluster.nexus/fault-pods"
#: Annotation: the memory the algorithm needs; a container limited to less is OOMKilled.
MEMORY_ANNOTATION = "devcluster.nexus/memory-needed"
REQUEST_LABEL = "science.sneaksanddata.com/request-id"
_NO_ANNOTATIONS: dict[str, str] = {}
_BIT_256 = 1 << 256
MAX_PULL_BACKOFF = 300.0
"""The longest image-pull back-off, in seconds, as the kubelet's."""


@dataclass(frozen=True)
class KubeletSettings:
    """How the simulated kubelet of a shard behaves."""

    start_delay: float = 0.0
    """Seconds from pod creation to a running container (image cached, no real pull)."""
    image_pull_backoff: float = 10.0
    """First image-pull back-off in seconds; doubles per retry up to 300, as the kubelet."""
    log_limit: int = 1024 * 1024
    """Bytes of container output kept per pod (the newest)."""
    relist_interval: float = 1.0
    """Seconds between the kubelet's looks at its containers (the PLEG relist, 1 s in the
    kubelet), which is when a started container is first reported ``Running``. A container
    that ends before the next look goes from ``Pending`` straight to ``Succeeded`` or
    ``Failed``, as on a real node; its ``Started`` Event and its terminated state's
    ``startedAt`` still say when it started. 0 reports ``Running`` at once."""


@dataclass(eq=False, slots=True)
class PodRun:
    """One pod's container as the kubelet runs it."""

    namespace: str
    name: str
    uid: str
    container: dict[str, Any]
    env: dict[str, str]
    fault: str | None
    grace: float
    image: str
    started_at: str = ""
    container_id: str = ""
    log: bytearray = field(default_factory=bytearray)
    timer: asyncio.TimerHandle | None = None
    exited: bool = False
    deleting: bool = False
    reported: bool = False
    """Reported ``Running`` in the pod's status."""
    pulls_failed: int = 0
    handle: Any = None  # runtime-specific state

    def write_log(self, data: bytes, limit: int) -> None:
        self.log += data
        if len(self.log) > limit:
            del self.log[: len(self.log) - limit]


class Runtime(Protocol):
    """Runs containers for the kubelet; reports each exit with ``kubelet.exited``."""

    def start(self, run: PodRun) -> None: ...

    def kill(self, run: PodRun, grace: float) -> None: ...

    def draw_fault(self) -> str | None: ...

    async def close(self) -> None: ...


class Kubelet:
    """The node agent of one shard: one node, ``devcluster-node``, as big as needed."""

    def __init__(
        self, store: ObjectStore, recorder: EventRecorder, settings: KubeletSettings
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.settings = settings
        self.runtime: Runtime | None = None
        self.runs: dict[tuple[str, str], PodRun] = {}
        self.forced_faults: dict[tuple[str, str], str] = {}
        """Faults injected from Python for every pod of a Job: (namespace, job) → fault."""
        self.terminated: dict[str, int] = {}
        """Containers ended, by reason (Completed, Error, OOMKilled, StartError)."""
        self.faulted: dict[tuple[str, str], int] = {}
        """Pods that showed a hinted fault, by (namespace, run): for ``fault-pods``."""
        self._unreported: list[PodRun] = []
        """Containers started since the last relist, not yet reported ``Running``."""
        self._relist: asyncio.TimerHandle | None = None
        store.subscribe("pods", self._on_pod_change)

    # -- starting ------------------------------------------------------------------------

    def fault_for(self, pod: Obj, owner: Obj | None = None) -> str | None:
        """The fault a new pod must show: injected for its Job, hinted by its env or its
        (or its Job's) annotations — for the first ``fault-pods`` pods of its run only,
        when that is given — or ``oom`` when its memory limit is below ``memory-needed``.
        Counts the pod: ask once per pod. ``owner``: its Job, when the caller has it."""
        # typed as the dicts they are: compiled, their own lookups rather than method calls
        metadata: Obj = pod["metadata"]
        container: Obj = pod["spec"]["containers"][0]
        hinted = None
        entries: list[Obj] = container.get("env") or []
        for entry in entries:
            if entry["name"] == FAULT_ENV:
                hinted = str(entry.get("value", ""))
                break
        annotations: dict[str, Any] = metadata.get("annotations") or _NO_ANNOTATIONS
        labels: dict[str, Any] = metadata.get("labels") or _NO_ANNOTATIONS
        namespace, job = metadata["namespace"], labels.get("batch.kubernetes.io/job-name", "")
        if self.forced_faults:
            forced = self.forced_faults.get((namespace, job))
            if forced:
                return forced
        if job:
            if owner is None:
                owner = self.store.get("jobs", namespace, job)
            owned = owner["metadata"].get("annotations") if owner is not None else None
            if owned:  # the pod's own annotations win over its Job's
                annotations = {**owned, **annotations}
        fault = hinted or annotations.get(FAULT_ANNOTATION) or None
        if fault is not None and annotations.get(FAULT_PODS_ANNOTATION):
            key = (namespace, labels.get(REQUEST_LABEL) or job)
            seen = self.faulted[key] = self.faulted.get(key, 0) + 1
            if seen > int(annotations[FAULT_PODS_ANNOTATION]):
                fault = None
        needed = annotations.get(MEMORY_ANNOTATION)
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if fault is None and needed and limit and memory_bytes(limit) < memory_bytes(needed):
            fault = "oom"
        return fault

    def admit(self, pod: Obj, fault: str | None = None, *, asked: bool = False) -> None:
        """Take a newly created pod (showing ``fault``, else the one :meth:`fault_for`
        finds, unless the caller ``asked`` it already); its container starts after
        ``start_delay``."""
        metadata: Obj = pod["metadata"]
        spec: Obj = pod["spec"]
        container = spec["containers"][0]
        env = container_env(container)  # $(VAR) and $$ resolved, as a real kubelet does
        if fault is None and not asked:
            fault = self.fault_for(pod)
        run = PodRun(
            namespace=metadata["namespace"],
            name=metadata["name"],
            uid=metadata["uid"],
            container=container,
            env=env,
            fault=fault,
            grace=float(spec.get("terminationGracePeriodSeconds", 30)),
            image=str(container.get("image", "")),
        )
        self.runs[(run.namespace, run.name)] = run
        if self.runtime is None:
            return  # kubelet off: pods stay Pending, as on a cluster without nodes
        if self.settings.start_delay > 0:
            loop = asyncio.get_running_loop()
            run.timer = loop.call_later(self.settings.start_delay, self._start, run)
        else:
            # An image already on the node: the container starts at once; the pod is
            # reported Running at the next relist, if it still runs then.
            self._start(run)

    def stop(self) -> None:
        """Cancel the relist timer (a shard stopping)."""
        if self._relist is not None:
            self._relist.cancel()
            self._relist = None

    def _pod(self, run: PodRun) -> Obj | None:
        return self.store.get("pods", run.namespace, run.name)

    def _start(self, run: PodRun) -> None:
        run.timer = None
        pod = self._pod(run)
        if pod is None or run.deleting or self.runtime is None:
            return
        container_path = f"spec.containers{{{run.container['name']}}}"
        if run.fault is None:
            run.fault = self.runtime.draw_fault()
        if run.fault == "image-pull":
            self._pull_failed(run)
            return
        image, name = run.image, run.container["name"]
        if run.container.get("imagePullPolicy") == "Always":
            pulled: tuple[tuple[str, str, str], ...] = (
                ("Normal", "Pulling", f'Pulling image "{image}"'),
                ("Normal", "Pulled", f'Successfully pulled image "{image}" in 0s'),
            )
        else:
            pulled = (
                ("Normal", "Pulled", f'Container image "{image}" already present on machine'),
            )
        self.recorder.record_unique(
            pod,
            "kubelet",
            (
                *pulled,
                ("Normal", "Created", f"Created container: {name}"),
                ("Normal", "Started", f"Started container {name}"),
            ),
            field_path=container_path,
        )
        run.started_at = now_iso()
        # 64 hex digits, zero-padded: those of a 257-bit number whose top bit is set
        run.container_id = "containerd://" + hex(random.getrandbits(256) | _BIT_256)[3:]
        interval = self.settings.relist_interval
        if interval > 0:
            self._unreported.append(run)
            if self._relist is None:  # armed only while containers wait: nothing at rest
                self._relist = asyncio.get_running_loop().call_later(interval, self._relisted)
        else:
            self._report_running(run)
        self.runtime.start(run)

    def _relisted(self) -> None:
        """The relist: every container started since the last one and still running is
        reported ``Running`` now."""
        self._relist = None
        started, self._unreported = self._unreported, []
        for run in started:
            self._report_running(run)

    def _report_running(self, run: PodRun) -> None:
        if run.exited or run.deleting or run.reported:
            return
        pod = self._pod(run)
        if pod is None:
            return
        run.reported = True
        status = podstatus.running(pod, run, now_iso())
        self.store.update("pods", run.namespace, run.name, status=status)

    def _pull_failed(self, run: PodRun, pulling: bool = True) -> None:
        """Image pull fails forever: each attempt ErrImagePull, then ImagePullBackOff."""
        run.timer = None
        pod = self._pod(run)
        if pod is None or run.deleting:
            return
        path = f"spec.containers{{{run.container['name']}}}"

        def record(event_type: str, reason: str, message: str) -> None:
            self.recorder.record(pod, event_type, reason, message, "kubelet", field_path=path)

        if pulling:
            record("Normal", "Pulling", f'Pulling image "{run.image}"')
            record(
                "Warning",
                "Failed",
                f'Failed to pull image "{run.image}": rpc error: code = '
                f'NotFound desc = failed to pull and unpack image "{run.image}": not found',
            )
            record("Warning", "Failed", "Error: ErrImagePull")
            reason = "ErrImagePull"
            message = f'failed to pull and unpack image "{run.image}": not found'
        else:
            record("Normal", "BackOff", f'Back-off pulling image "{run.image}"')
            record("Warning", "Failed", "Error: ImagePullBackOff")
            reason = "ImagePullBackOff"
            message = f'Back-off pulling image "{run.image}"'
        status = podstatus.waiting(pod, run, reason, message, now_iso())
        self.store.update("pods", run.namespace, run.name, status=status)
        base = self.settings.image_pull_backoff
        if pulling:
            delay = min(1.0, base / 10)  # the kubelet backs off right after a failed pull
        else:
            run.pulls_failed += 1
            delay = Backoff(first=base, cap=MAX_PULL_BACKOFF).delay(run.pulls_failed)
        run.timer = asyncio.get_running_loop().call_later(
            delay, self._pull_failed, run, not pulling
        )

    # -- stopping ------------------------------------------------------------------------

    def disrupted(self, run: PodRun, kind: str) -> None:
        """The pod is stopped by the cluster, not its container: ``evicted`` by this
        kubelet under memory pressure, or its node lost (``node-lost``: marked failed by
        the pod garbage collector), as :func:`.podstatus.disrupted` writes it."""
        if run.exited:
            return
        run.exited = True
        reason = "Evicted" if kind == "evicted" else "ContainerStatusUnknown"
        self.terminated[reason] = self.terminated.get(reason, 0) + 1
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        pod = self._pod(run)
        if pod is not None:
            status = podstatus.disrupted(pod, run, kind, now_iso())
            self.store.update("pods", run.namespace, run.name, status=status)
            if kind == "evicted":
                self.recorder.record(pod, "Warning", "Evicted", status["message"], "kubelet")
        if run.deleting:
            self.store.delete("pods", run.namespace, run.name)

    def exited(self, run: PodRun, exit_code: int, reason: str, message: str | None = None) -> None:
        """The runtime reports that ``run``'s container stopped with ``exit_code``."""
        if run.exited:
            return
        run.exited = True
        self.terminated[reason] = self.terminated.get(reason, 0) + 1
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        pod = self._pod(run)
        if pod is not None:
            succeeded = exit_code == 0 and not run.deleting
            status = podstatus.terminated(
                pod, run, exit_code, reason, message, succeeded=succeeded, now=now_iso()
            )
            self.store.update("pods", run.namespace, run.name, status=status)
        if run.deleting:
            self.store.delete("pods", run.namespace, run.name)

    def terminate(self, pod: Obj, grace: float | None) -> Obj:
        """Delete ``pod``: stop its container (``Killing``), then remove it; the answer body."""
        metadata = pod["metadata"]
        key = (metadata["namespace"], metadata["name"])
        run = self.runs.get(key)
        if run is None or run.exited or not run.started_at:
            if run is not None:
                run.deleting = True
                if run.timer is not None:
                    run.timer.cancel()
            change = self.store.delete("pods", *key)
            if change is None:
                raise ApiError.not_found("", "pods", metadata["name"])
            return change.final()
        if run.deleting:
            return pod
        run.deleting = True
        seconds = run.grace if grace is None else grace
        self.recorder.record(
            pod,
            "Normal",
            "Killing",
            f"Stopping container {run.container['name']}",
            "kubelet",
            field_path=f"spec.containers{{{run.container['name']}}}",
        )
        marked = self.store.replace(
            "pods",
            {
                **pod,
                "metadata": {
                    **metadata,
                    "deletionTimestamp": now_iso(),
                    "deletionGracePeriodSeconds": int(seconds),
                },
            },
        )
        assert self.runtime is not None
        self.runtime.kill(run, seconds)
        return marked

    def _on_pod_change(self, change: Any) -> None:
        if change.type == "DELETED":
            metadata = change.obj["metadata"]
            run = self.runs.pop((metadata["namespace"], metadata["name"]), None)
            if run is not None and not run.exited:
                run.deleting = True
                if run.timer is not None:
                    run.timer.cancel()
                if self.runtime is not None and run.started_at:
                    self.runtime.kill(run, 0.0)

    def read_log(self, namespace: str, name: str) -> bytes:
        """The container's output, as ``GET …/pods/{name}/log`` answers it."""
        pod = self.store.require("pods", namespace, name)
        run = self.runs.get((namespace, name))
        if run is None or not run.started_at:
            container = pod["spec"]["containers"][0]["name"]
            statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
            waiting = statuses[0].get("state", {}).get("waiting", {})
            reason = waiting.get("reason", "ContainerCreating")
            raise ApiError.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        return bytes(run.log)
