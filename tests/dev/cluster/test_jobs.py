"""Job semantics: backoffLimit, podFailurePolicy, activeDeadlineSeconds, ttlSecondsAfterFinished."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from nexus_dev.cluster.emulators import DevCluster
from nexus_dev.cluster.kubelet import KubeletSettings
from nexus_dev.cluster.store import Watcher

from .conftest import NS, connect, events_for, eventually, fast_spec, finished_job, job_manifest

FAULT = "NEXUS_DEVCLUSTER_FAULT"


def conditions(job: client.V1Job) -> dict[str, str]:
    return {c.type: c.reason for c in job.status.conditions or ()}


async def test_backoff_limit_retries_then_fails(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    await batch.create_namespaced_job(
        NS, job_manifest("retry", env={FAULT: "exit"}, backoffLimit=2)
    )
    job = await finished_job(batch, "retry")
    assert conditions(job) == {
        "FailureTarget": "BackoffLimitExceeded",
        "Failed": "BackoffLimitExceeded",
    }
    assert job.status.failed == 3
    assert not job.status.active
    assert not job.status.completion_time
    pods = (await core.list_namespaced_pod(NS, label_selector="job-name=retry")).items
    assert len(pods) == 3
    assert {p.status.phase for p in pods} == {"Failed"}
    for pod in pods:
        terminated = pod.status.container_statuses[0].state.terminated
        assert (terminated.reason, terminated.exit_code) == ("Error", 1)
    events = await events_for(core, "retry")
    assert sum(reason == "SuccessfulCreate" for _, reason, _ in events) == 3
    assert (
        "Warning",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    ) in events


async def test_pod_failure_policy_fail_job(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [137]}}]}
    manifest = job_manifest("fatal", env={FAULT: "oom"}, backoffLimit=5, podFailurePolicy=policy)
    await batch.create_namespaced_job(NS, manifest)
    job = await finished_job(batch, "fatal")
    assert conditions(job) == {"FailureTarget": "PodFailurePolicy", "Failed": "PodFailurePolicy"}
    assert job.status.failed == 1
    message = job.status.conditions[-1].message
    assert "failed with exit code 137 matching FailJob rule at index 0" in message
    pods = (await core.list_namespaced_pod(NS, label_selector="job-name=fatal")).items
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)


async def test_pod_failure_policy_ignore_does_not_count(
    shard: object, batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    policy = {"rules": [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}]}
    manifest = job_manifest("ignored", env={FAULT: "exit"}, backoffLimit=0, podFailurePolicy=policy)
    await batch.create_namespaced_job(NS, manifest)

    async def retried() -> bool:
        pods = (await core.list_namespaced_pod(NS, label_selector="job-name=ignored")).items
        return len(pods) >= 3

    await eventually(retried)
    job = await batch.read_namespaced_job("ignored", NS)
    assert not job.status.failed
    assert not job.status.conditions
    await batch.delete_namespaced_job("ignored", NS, propagation_policy="Foreground")


async def test_active_deadline_kills_running_pods(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    manifest = job_manifest("slow", env={FAULT: "hang"}, activeDeadlineSeconds=1)
    await batch.create_namespaced_job(NS, manifest)
    job = await finished_job(batch, "slow")
    assert conditions(job) == {"FailureTarget": "DeadlineExceeded", "Failed": "DeadlineExceeded"}
    assert job.status.failed == 1
    assert not job.status.active
    events = await events_for(core, "slow")
    assert (
        "Warning",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    ) in events
    assert any(reason == "SuccessfulDelete" for _, reason, _ in events)
    pod_events = (await core.list_namespaced_event(NS, field_selector="reason=Killing")).items
    assert pod_events
    assert pod_events[0].involved_object.kind == "Pod"

    async def pods_gone() -> bool:
        return not (await core.list_namespaced_pod(NS, label_selector="job-name=slow")).items

    await eventually(pods_gone)


async def test_ttl_after_finished_deletes_job_and_pods(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    await batch.create_namespaced_job(NS, job_manifest("brief", ttlSecondsAfterFinished=0))

    async def gone() -> bool:
        try:
            await batch.read_namespaced_job("brief", NS)
        except ApiException as exc:
            return exc.status == 404
        return False

    await eventually(gone)
    await asyncio.sleep(0.05)
    assert not (await core.list_namespaced_pod(NS, label_selector="job-name=brief")).items


async def test_completion_status(batch: client.BatchV1Api) -> None:
    await batch.create_namespaced_job(NS, job_manifest("fine", completions=2, parallelism=2))
    job = await finished_job(batch, "fine")
    assert conditions(job) == {
        "SuccessCriteriaMet": "CompletionsReached",
        "Complete": "CompletionsReached",
    }
    assert job.status.succeeded == 2
    assert job.status.completion_time >= job.status.start_time


@pytest.mark.parametrize("hint", ["env", "annotation", "python"])
async def test_fault_hints(
    shard: object, batch: client.BatchV1Api, core: client.CoreV1Api, hint: str
) -> None:
    manifest = job_manifest("hinted", backoffLimit=0)
    if hint == "env":
        manifest = job_manifest("hinted", env={FAULT: "silent"}, backoffLimit=0)
    elif hint == "annotation":
        manifest["metadata"]["annotations"] = {"devcluster.nexus/fault": "silent"}
    else:
        shard.inject_fault("hinted", "oom")  # type: ignore[attr-defined]
    await batch.create_namespaced_job(NS, manifest)
    job = await finished_job(batch, "hinted")
    expected = "Failed" if hint == "python" else "Complete"
    assert expected in conditions(job)


@pytest.mark.parametrize(
    ("start_delay", "relist", "phases", "statuses"),
    [
        (0.0, 0.0, ["Pending", "Running", "Succeeded"], [(1, 1), (None, 0)]),
        (0.05, 0.0, ["Pending", "Running", "Succeeded"], [(1, 0), (1, 1), (None, 0)]),
        (0.0, 0.5, ["Pending", "Succeeded"], [(1, 0), (None, 0)]),
        (0.0, 0.005, ["Pending", "Running", "Succeeded"], [(1, 0), (1, 1), (None, 0)]),
    ],
    ids=["at-once", "start-delay", "ended-before-relist", "running-at-relist"],
)
async def test_status_writes_of_a_quick_pod(
    tmp_path: Path,
    start_delay: float,
    relist: float,
    phases: list[str],
    statuses: list[tuple[int | None, int]],
) -> None:
    """Pods show Pending, Running (if still running at the kubelet's next relist),
    Succeeded; a Job's status is written once per decision.

    Reported Running at once, the pod runs before the Job controller writes the Job's
    status, which then says active and ready at once — as the real controller's batched
    sync does. A 10 ms container that ends before the relist is never reported Running.
    """
    kubelet = KubeletSettings(start_delay=start_delay, relist_interval=relist)
    spec = fast_spec(kubelet=kubelet)
    async with DevCluster([spec], tmp_path) as cluster:
        store = cluster["shard"].store
        pods, jobs = Watcher(NS, None, 1 << 24), Watcher(NS, None, 1 << 24)
        store.collection("pods").watchers.add(pods)
        store.collection("jobs").watchers.add(jobs)
        api = await connect(cluster["shard"])
        async with api:
            batch = client.BatchV1Api(api)
            await batch.create_namespaced_job(NS, job_manifest("quick"))
            await finished_job(batch, "quick")
    pod_events = [orjson.loads(line) for line in pods.take().splitlines()]
    seen = [(e["type"], e["object"]["status"]["phase"]) for e in pod_events]
    assert seen == [("ADDED", "Pending")] + [("MODIFIED", phase) for phase in phases[1:]]
    terminated = pod_events[-1]["object"]["status"]["containerStatuses"][0]["state"]
    assert terminated["terminated"]["startedAt"]
    job_events = [orjson.loads(line) for line in jobs.take().splitlines()]
    assert [
        (e["object"]["status"].get("active"), e["object"]["status"].get("ready"))
        for e in job_events[1:]
    ] == statuses
    assert job_events[-1]["object"]["status"]["succeeded"] == 1
