"""The maintainer passes over watch events unread only when its rules would ignore them.

``pod_matters`` and ``job_matters`` sift the events from their objects' status alone, as
the shard client reads them (:func:`nexus.core.watchevents.sifted_event`, from the line
an API server writes); each case here is also handed, parsed whole, to the real handlers
of :class:`maintainer.shardwatch.ShardWatch`, and an event may be declined only if the
handler leaves no trace of it — and one not declined must leave the same trace when
handed over as the sift reads it (without its spec).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest

from maintainer.settings import MaintainerSection
from maintainer.shardwatch import ShardWatch, Timer
from maintainer.signals import job_matters, pod_matters
from nexus.core.labels import ALGORITHM_LABEL, COMPONENT_LABEL, REQUEST_LABEL
from nexus.core.shards import WatchEvent
from nexus.core.watchevents import sifted_event


class Shard:
    name = "shard-0"

    async def list(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a skipped event would not have been looked into")


class Recorded:
    def __init__(self, refuse: int = 0) -> None:
        self.acts: list[Any] = []
        self.refuse = refuse  # how many acts to drop first, as a full queue does

    def submit(self, act: Any) -> bool:
        if self.refuse:
            self.refuse -= 1
            return False
        self.acts.append(act)
        return True


RUN = str(uuid.uuid4())
LABELS = {ALGORITHM_LABEL: "echo", REQUEST_LABEL: RUN, COMPONENT_LABEL: "algorithm-run"}


def pod(phase: str, state: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if state is not None:
        status["containerStatuses"] = [{"name": RUN, "state": state}]
    meta = {"name": f"{RUN}-abcde", "uid": "p-1", "labels": LABELS, **extra}
    spec = {"containers": [{"name": RUN, "image": "x"}], "nodeName": "node-1"}
    return {"kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def job(conditions: list[dict[str, Any]] | None) -> dict[str, Any]:
    status: dict[str, Any] = {"active": 1}
    if conditions is not None:
        status["conditions"] = conditions
    return {
        "kind": "Job",
        "metadata": {"name": RUN, "uid": "j-1", "labels": LABELS},
        "spec": {"template": {"metadata": {"labels": LABELS}, "spec": {"containers": []}}},
        "status": status,
    }


def ended(code: int, reason: str) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason}}


PODS = {
    "pending, no status yet": ("ADDED", pod("Pending", None)),
    "pending, status text in an annotation": (
        "MODIFIED",
        pod("Pending", None, annotations={"note": '"containerStatuses": [] "phase":"Running"'}),
    ),
    "waiting to be created": (
        "MODIFIED",
        pod("Pending", {"waiting": {"reason": "ContainerCreating"}}),
    ),
    "image pull failing": ("MODIFIED", pod("Pending", {"waiting": {"reason": "ErrImagePull"}})),
    "running": ("MODIFIED", pod("Running", {"running": {"startedAt": "2026-11-29T10:00:00Z"}})),
    "succeeded": ("MODIFIED", pod("Succeeded", ended(0, "Completed"))),
    "failed": ("MODIFIED", pod("Failed", ended(3, "Error"))),
    "out of memory": ("MODIFIED", pod("Failed", ended(137, "OOMKilled"))),
    "out of memory, exit code 0": ("MODIFIED", pod("Succeeded", ended(0, "OOMKilled"))),
    "unschedulable": (
        "MODIFIED",
        {
            **pod("Pending", None),
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
                ],
            },
        },
    ),
    "evicted": (
        "MODIFIED",
        {
            **pod("Failed", ended(137, "Error")),
            "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
        },
    ),
    "node lost, still running as last reported": (
        "MODIFIED",
        {
            **pod("Failed", {"running": {}}),
            "status": {
                "phase": "Failed",
                "conditions": [
                    {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC"}
                ],
                "containerStatuses": [{"name": RUN, "state": {"running": {}}}],
            },
        },
    ),
    "deleted while running": ("DELETED", pod("Running", {"running": {}})),
    "deleted after failing": ("DELETED", pod("Failed", ended(1, "Error"))),
}

COMPLETE = {"type": "Complete", "status": "True"}
FAILED = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "late"}
JOBS = {
    "created": ("ADDED", job(None)),
    "active": ("MODIFIED", job(None)),
    "active, no conditions yet": ("MODIFIED", job([])),
    "succeeded": ("MODIFIED", job([COMPLETE])),
    "failed": ("MODIFIED", job([FAILED])),
    "deleted": ("DELETED", job([COMPLETE])),
}


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "object": obj})


def trace(watch: ShardWatch, actions: Recorded) -> Any:
    """Everything the handlers can change."""
    kept = (
        watch._started,
        watch._pulls,
        watch._unplaced,
        watch._failures,
        watch.succeeded,
        watch._deleted,
    )
    return (dict(watch.jobs), [dict(timers) for timers in kept], list(actions.acts))


def timeless(traced: Any) -> Any:
    """A trace without the loop times in it (when a timer is due, when a success was seen)."""
    jobs, kept, acts = traced

    def value(kept: Any) -> Any:
        if isinstance(kept, Timer):
            return replace(kept, due=0.0)
        return None if isinstance(kept, float) else kept

    return jobs, [{name: value(v) for name, v in timers.items()} for timers in kept], acts


async def watching() -> tuple[ShardWatch, Recorded]:
    actions = Recorded()
    watch = ShardWatch(Shard(), actions, MaintainerSection())  # type: ignore[arg-type]
    await watch._on_job(WatchEvent("ADDED", job(None)))  # the Job is known, as after a list
    return watch, actions


async def judged(resource: str, kind: str, obj: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the event's line is declined, and whether its handler leaves no trace."""
    watch, actions = await watching()
    before = trace(watch, actions)
    handle, sift = (
        (watch._on_pod, pod_matters) if resource == "pod" else (watch._on_job, job_matters)
    )
    await handle(WatchEvent(kind, obj))
    after = trace(watch, actions)
    sifted = sifted_event(line(kind, obj), sift)
    if sifted is not None:  # as the watch hands it over: the same trace
        assert "spec" not in sifted.object
        again, actions_again = await watching()
        await (again._on_pod if resource == "pod" else again._on_job)(sifted)
        assert timeless(trace(again, actions_again)) == timeless(after)
    return sifted is None, after == before


@pytest.mark.parametrize("case", PODS)
async def test_a_pod_event_is_skipped_only_if_the_rules_ignore_it(case: str) -> None:
    skipped, ignored = await judged("pod", *PODS[case])
    assert not skipped or ignored, f"{case}: skipped, but it matters"
    # and the sift is worth having: what is ignored for sure is declined
    if case in (
        "pending, no status yet",
        "pending, status text in an annotation",
        "waiting to be created",
        "succeeded",
        "deleted while running",
        "deleted after failing",
    ):
        assert skipped
    if case in ("unschedulable", "evicted", "node lost, still running as last reported"):
        assert not ignored  # timed, or remembered as the failed attempt


@pytest.mark.parametrize("case", JOBS)
async def test_a_job_event_is_skipped_only_if_the_rules_ignore_it(case: str) -> None:
    skipped, ignored = await judged("job", *JOBS[case])
    assert not skipped or ignored, f"{case}: skipped, but it matters"
    if case == "active":
        assert skipped


async def test_deletions_are_sifted_by_their_type_alone_pods_unread_jobs_read() -> None:
    """A pod's deletion is declined before its status is read (the rules ignore every one,
    whatever it says: here a failure they would act on while the pod was there); a Job's
    deletion, whatever its status says, is read and handled."""
    failed = pod("Failed", ended(3, "Error"))
    assert pod_matters("DELETED", None) is False
    assert pod_matters("MODIFIED", failed["status"])  # a change that says as much matters
    assert sifted_event(line("DELETED", failed), pod_matters) is None
    unread = line("DELETED", failed).replace(b'"phase":"Failed"', b'"phase" [')
    assert sifted_event(unread, pod_matters) is None  # not a byte of it parsed
    for status in (None, {}, {"active": 1}):
        assert job_matters("DELETED", status) is True
    for deleted in (job(None), job([COMPLETE]), {**job(None), "status": {}}):
        watch, _ = await watching()
        sifted = sifted_event(line("DELETED", deleted), job_matters)
        assert sifted is not None and sifted.type == "DELETED"
        await watch._on_job(sifted)
        assert RUN not in watch.jobs and RUN in watch._deleted  # gone, under a running run
