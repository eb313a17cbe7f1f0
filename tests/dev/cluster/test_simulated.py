"""Simulated pods play the algorithm contract against a tiny server; every fault shows."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import web
from kubernetes_asyncio import client

from nexus_dev.cluster.emulators import Shard

from .conftest import NS, events_for, eventually, finished_job, job_manifest


@dataclass
class Recorded:
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    input_status: int = 200
    input_body: bytes = b'{"x": 1}'
    failures: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    """Answers given, one per request, to a method before it is served as usual."""
    times: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Algorithm:
    """What a run needs: the receiver/storage server and the Job manifest that uses it."""

    base: str
    recorded: Recorded

    def manifest(self, name: str, fault: str | None = None, **spec: Any) -> dict[str, Any]:
        env = {
            "NEXUS__RECEIVER_URL": f"{self.base}/",
            "NEXUS__RUN_TOKEN": "run-token",
            "NEXUS__RESULT_UPLOAD_URL": f"{self.base}/results/{name}",
            "NEXUS__ALGORITHM_NAME": "algo",
            "NEXUS__REQUEST_ID": name,
        }
        if fault:
            env["NEXUS_DEVCLUSTER_FAULT"] = fault
        args = [f"--sas-uri={self.base}/inputs/{name}?sig=abc", f"--request-id={name}"]
        return job_manifest(name, args=args, env=env, backoffLimit=0, **spec)


@pytest_asyncio.fixture
async def algorithm() -> AsyncIterator[Algorithm]:
    recorded = Recorded()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        recorded.requests.append((request.method, request.path_qs, dict(request.headers), body))
        recorded.times.append((request.method, asyncio.get_running_loop().time()))
        failures = recorded.failures.get(request.method)
        if failures:
            status, headers = failures.pop(0)
            return web.Response(status=status, headers=headers, text="not now")
        if request.path.startswith("/inputs/"):
            return web.Response(body=recorded.input_body, status=recorded.input_status)
        return web.Response(status=201 if request.method == "PUT" else 200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Algorithm(f"http://127.0.0.1:{port}", recorded)
    finally:
        await runner.cleanup()


async def pod_of(core: client.CoreV1Api, job: str) -> client.V1Pod:
    pods = (await core.list_namespaced_pod(NS, label_selector=f"job-name={job}")).items
    assert len(pods) == 1
    return pods[0]


async def test_contract_requests_exactly(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("run-1"))
    job = await finished_job(batch, "run-1")
    assert job.status.succeeded == 1
    calls = [(m, p) for m, p, _, _ in algorithm.recorded.requests]
    assert calls == [
        ("GET", "/inputs/run-1?sig=abc"),
        ("PUT", "/results/run-1"),
        ("POST", "/algorithm/v1.2/complete/algo/requests/run-1"),
    ]
    _, _, put_headers, put_body = algorithm.recorded.requests[1]
    assert put_body == b'{"x": 1}'
    assert put_headers["Content-Type"] == "application/json"
    _, _, headers, body = algorithm.recorded.requests[2]
    assert headers["Authorization"] == "Bearer run-token"
    assert body == b'{"cause":null,"message":null,"sasUri":null}'
    log = await core.read_namespaced_pod_log((await pod_of(core, "run-1")).metadata.name, NS)
    assert "reported completion" in log


async def test_non_json_input_gets_a_small_result(
    batch: client.BatchV1Api, algorithm: Algorithm
) -> None:
    algorithm.recorded.input_body = b"\x00binary"
    await batch.create_namespaced_job(NS, algorithm.manifest("run-2"))
    await finished_job(batch, "run-2")
    assert algorithm.recorded.requests[1][3] == b'{"requestId":"run-2","ok":true}'


async def test_failed_call_fails_the_pod_with_a_log_line(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    algorithm.recorded.input_status = 403
    await batch.create_namespaced_job(NS, algorithm.manifest("run-3"))
    job = await finished_job(batch, "run-3")
    assert job.status.failed == 1
    pod = await pod_of(core, "run-3")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Error", 1)
    log = await core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert "answered 403" in log
    assert [m for m, *_ in algorithm.recorded.requests] == ["GET"]


async def test_an_input_not_in_storage_is_reported_as_a_failure_saying_so(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    algorithm.recorded.input_status = 404  # expired, or lost by the store
    await batch.create_namespaced_job(NS, algorithm.manifest("lost-input"))
    job = await finished_job(batch, "lost-input")
    assert job.status.failed == 1
    calls = [(m, p) for m, p, _, _ in algorithm.recorded.requests]
    assert calls == [
        ("GET", "/inputs/lost-input?sig=abc"),
        ("POST", "/algorithm/v1.2/complete/algo/requests/lost-input"),
    ]
    report = json.loads(algorithm.recorded.requests[1][3])
    assert report["cause"] == "InputNotFound"
    assert "not in object storage" in report["message"]
    assert "sig=" not in report["message"]  # the presigned URL stays in the pod's log
    pod = await pod_of(core, "lost-input")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Error", 1)


async def test_calls_that_may_pass_are_tried_again_honouring_retry_after(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    """A store away (503), a server error (500) and a receiver asking for time (503 with
    ``Retry-After``) cost the run tries, not its outcome; the wait follows Retry-After."""
    algorithm.recorded.failures = {
        "GET": [(503, {})],
        "PUT": [(500, {}), (502, {})],
        "POST": [(503, {"Retry-After": "0.5"}), (429, {"Retry-After": "0.5"})],
    }
    await batch.create_namespaced_job(NS, algorithm.manifest("again"))
    job = await finished_job(batch, "again")
    assert job.status.succeeded == 1
    assert [m for m, *_ in algorithm.recorded.requests] == [
        "GET", "GET", "PUT", "PUT", "PUT", "POST", "POST", "POST"
    ]  # fmt: skip
    posts = [at for method, at in algorithm.recorded.times if method == "POST"]
    assert posts[1] - posts[0] >= 0.45 and posts[2] - posts[1] >= 0.45
    log = await core.read_namespaced_pod_log((await pod_of(core, "again")).metadata.name, NS)
    assert "answered 503" in log and "trying again" in log and "reported completion" in log


async def test_a_receiver_away_past_the_retries_leaves_the_uploaded_result(
    shard: Shard, batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    """The completion keeps failing until its time is up: the pod exits 0 without
    reporting, its result uploaded (the maintainer completes the run from it); an input
    that keeps failing fails the pod."""
    assert shard.simulated is not None
    settings = shard.simulated.settings
    shard.simulated.settings = dataclasses.replace(settings, retry_for=0.6, retry_cap=0.2)
    try:
        algorithm.recorded.failures = {"POST": [(503, {"Retry-After": "1"})] * 100}
        await batch.create_namespaced_job(NS, algorithm.manifest("away"))
        job = await finished_job(batch, "away")
        assert job.status.succeeded == 1
        methods = [m for m, *_ in algorithm.recorded.requests]
        assert methods[:2] == ["GET", "PUT"] and set(methods[2:]) == {"POST"}
        assert len(methods) >= 4  # tried again, each wait capped below Retry-After
        log = await core.read_namespaced_pod_log((await pod_of(core, "away")).metadata.name, NS)
        assert "gave up" in log and "exiting with the result uploaded" in log

        algorithm.recorded.requests.clear()
        algorithm.recorded.failures = {"GET": [(503, {})] * 100}
        await batch.create_namespaced_job(NS, algorithm.manifest("no-input"))
        job = await finished_job(batch, "no-input")
        assert job.status.failed == 1
        assert {m for m, *_ in algorithm.recorded.requests} == {"GET"}
    finally:
        shard.simulated.settings = settings


async def test_oom_fault(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("oom", "oom"))
    job = await finished_job(batch, "oom")
    assert job.status.failed == 1
    terminated = (await pod_of(core, "oom")).status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    assert not algorithm.recorded.requests


async def test_exit_fault_reports_failure_then_exits_1(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("exit", "exit"))
    await finished_job(batch, "exit")
    terminated = (await pod_of(core, "exit")).status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Error", 1)
    method, path, _, body = algorithm.recorded.requests[-1]
    assert (method, path) == ("POST", "/algorithm/v1.2/complete/algo/requests/exit")
    assert b'"cause":"AlgorithmFailed"' in body


async def test_silent_fault_exits_0_without_reporting(
    batch: client.BatchV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("silent", "silent"))
    job = await finished_job(batch, "silent")
    assert job.status.succeeded == 1
    assert not algorithm.recorded.requests


async def test_hang_fault_runs_until_the_deadline(
    batch: client.BatchV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(
        NS, algorithm.manifest("hang", "hang", activeDeadlineSeconds=1)
    )
    job = await finished_job(batch, "hang")
    assert job.status.conditions[-1].reason == "DeadlineExceeded"
    assert not algorithm.recorded.requests


async def test_image_pull_fault_never_runs(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("pull", "image-pull"))

    async def backing_off() -> Any:
        pod = await pod_of(core, "pull")
        waiting = pod.status.container_statuses and pod.status.container_statuses[0].state.waiting
        return pod if waiting and waiting.reason == "ImagePullBackOff" else None

    pod = await eventually(backing_off)
    assert pod.status.phase == "Pending"
    events = await events_for(core, pod.metadata.name)
    reasons = {(kind, reason) for kind, reason, _ in events}
    assert {("Warning", "Failed"), ("Normal", "BackOff"), ("Normal", "Pulling")} <= reasons
    assert any(message == "Error: ErrImagePull" for *_, message in events)
    assert any(message == "Error: ImagePullBackOff" for *_, message in events)
    assert not algorithm.recorded.requests


async def test_random_fault_mix(shard: Shard, batch: client.BatchV1Api) -> None:
    shard.set_fault_mix({"silent": 0.0, "exit": 1.0})
    await batch.create_namespaced_job(NS, job_manifest("mixed", backoffLimit=0))
    job = await finished_job(batch, "mixed")
    assert job.status.failed == 1


async def test_evicted_fault_fails_the_pod_as_the_kubelet_evicts(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("evicted", "evicted"))
    job = await finished_job(batch, "evicted")
    assert job.status.conditions[-1].reason == "BackoffLimitExceeded"
    pod = await pod_of(core, "evicted")
    assert (pod.status.phase, pod.status.reason) == ("Failed", "Evicted")
    assert "The node was low on resource: memory" in pod.status.message
    target = next(c for c in pod.status.conditions if c.type == "DisruptionTarget")
    assert (target.status, target.reason) == ("True", "TerminationByKubelet")
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 137
    reasons = {(kind, reason) for kind, reason, _ in await events_for(core, pod.metadata.name)}
    assert ("Warning", "Evicted") in reasons
    assert not algorithm.recorded.requests


async def test_node_lost_fault_fails_the_pod_as_the_pod_collector_marks_it(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("lost", "node-lost"))
    await finished_job(batch, "lost")
    pod = await pod_of(core, "lost")
    assert pod.status.phase == "Failed"
    target = next(c for c in pod.status.conditions if c.type == "DisruptionTarget")
    assert (target.status, target.reason, target.message) == (
        "True",
        "DeletionByPodGC",
        "PodGC: node no longer exists",
    )
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("ContainerStatusUnknown", 137)


async def test_unschedulable_fault_leaves_the_pod_pending_on_no_node(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    await batch.create_namespaced_job(NS, algorithm.manifest("unplaced", "unschedulable"))
    pod = await eventually(lambda: pod_of(core, "unplaced"))
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    assert not pod.status.container_statuses
    (scheduled,) = pod.status.conditions
    assert (scheduled.type, scheduled.status, scheduled.reason) == (
        "PodScheduled",
        "False",
        "Unschedulable",
    )
    assert "Insufficient memory" in scheduled.message
    events = await events_for(core, pod.metadata.name)
    assert any(reason == "FailedScheduling" for _, reason, _ in events)
    # deleting the Job takes the pod that never ran with it
    await batch.delete_namespaced_job("unplaced", NS, propagation_policy="Foreground")

    async def gone() -> bool:
        pods = await core.list_namespaced_pod(NS, label_selector="job-name=unplaced")
        return not pods.items

    await eventually(gone)


async def test_memory_needed_and_fault_pods_annotations(
    batch: client.BatchV1Api, core: client.CoreV1Api, algorithm: Algorithm
) -> None:
    """``memory-needed`` kills a container limited to less (OOMKilled, 137) and spares one
    given enough; ``fault-pods`` shows a fault on a run's first pods only."""
    for name, memory in (("small", "512Mi"), ("large", "2Gi")):
        manifest = algorithm.manifest(name)
        template = manifest["spec"]["template"]
        template.setdefault("metadata", {})["annotations"] = {
            "devcluster.nexus/memory-needed": "1Gi"
        }
        template["spec"]["containers"][0]["resources"] = {"limits": {"memory": memory}}
        await batch.create_namespaced_job(NS, manifest)
    assert (await finished_job(batch, "small")).status.failed == 1
    terminated = (await pod_of(core, "small")).status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    assert (await finished_job(batch, "large")).status.succeeded == 1

    manifest = algorithm.manifest("once", "exit")
    manifest["spec"]["backoffLimit"] = 1
    template = manifest["spec"]["template"]
    template.setdefault("metadata", {})["annotations"] = {"devcluster.nexus/fault-pods": "1"}
    await batch.create_namespaced_job(NS, manifest)
    job = await finished_job(batch, "once", timeout=10)
    assert (job.status.failed, job.status.succeeded) == (1, 1)
