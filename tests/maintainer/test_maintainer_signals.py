"""Kubernetes says how a run ended; the maintainer writes it down (maintainer/signals.py).

Every test runs the real scheduler, receiver and maintainer on the local cluster; the
simulated kubelet plays each fault (OOMKilled, image pull, exit without reporting, hang)
and process-mode pods exit with real codes.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from harness import Servers
from maintaining import (
    create_job,
    delete_job,
    faulty,
    open_store,
    post_event,
    running_maintainer,
    settings_for,
    wait_until,
)
from prometheus_client import REGISTRY
from support.system import NAMESPACE, System, local_system, template

from nexus.core.labels import ALGORITHM_LABEL, ALGORITHM_RUN, COMPONENT_LABEL, REQUEST_LABEL
from nexus.core.runs import NewRun, Stage
from nexus.core.visibility import SYSTEM
from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.jobcontroller import JobControllerSettings
from nexus_dev.cluster.kubelet import KubeletSettings
from nexus_dev.cluster.simulation import SimulationSettings

SIMULATED = ShardSpec(
    name="shard-0",
    mode="simulated",
    simulation=SimulationSettings(duration="fixed:0.2"),
    jobs=JobControllerSettings(retry_backoff=0.1),
    kubelet=KubeletSettings(image_pull_backoff=0.2),
)
PROCESSES = ShardSpec(name="shard-p", mode="process", jobs=JobControllerSettings(retry_backoff=0.1))
MAYBE_FAIL = ("python", "-m", "nexus_sdk.examples", "maybe-fail")


def job_of(system: System, shard: str, name: str) -> dict[str, Any] | None:
    stored = system.cluster[shard].store.get("jobs", NAMESPACE, name)
    return None if stored is None else dict(stored)


async def metadata(system: System, algorithm: str, request_id: str) -> dict[str, Any]:
    status, body = await system.get(f"/algorithm/v1.2/metadata/{algorithm}/requests/{request_id}")
    assert status == 200, body
    return dict(body)


async def test_each_kubernetes_signal_ends_its_run_with_its_cause(servers: Servers) -> None:
    templates = [
        template("echo"),
        faulty(template("oom"), "oom"),
        faulty(template("oom-retried", retries=1), "oom"),
        faulty(template("image"), "image-pull"),
        faulty(template("silent"), "silent"),
        faulty(template("hang", deadline=1), "hang"),
        faulty(template("exit"), "exit"),
    ]
    async with (
        local_system(
            servers,
            shards=[SIMULATED],
            templates=templates,
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        ids = {t["metadata"]["name"]: await system.submit(t["metadata"]["name"]) for t in templates}
        expected = {
            "echo": ("COMPLETED", None),
            "oom": ("FAILED", "OOMKilled"),
            "oom-retried": ("FAILED", "OOMKilled"),
            "image": ("SCHEDULING_TIMEOUT", "ImagePullFailed"),
            "silent": ("FAILED", "NoResult"),
            "hang": ("DEADLINE_EXCEEDED", "DeadlineExceeded"),
            "exit": ("FAILED", "AlgorithmFailed"),  # the algorithm's own report wins
        }
        for algorithm, (status, cause) in expected.items():
            answer = await system.wait_for(algorithm, ids[algorithm], timeout=20)
            found = await metadata(system, algorithm, ids[algorithm])
            assert (answer["status"], found["algorithmFailureCause"]) == (status, cause), found
        details = {a: (await metadata(system, a, ids[a]))["algorithmFailureDetails"] for a in ids}
        assert "memory" in details["oom"] and "137" in details["oom"], details
        assert "without reporting a result" in details["silent"]
        assert "ErrImagePull" in details["image"] and "not found" in details["image"]
        # a Job that will retry is not failed yet: the retried one failed after two attempts
        retried = job_of(system, "shard-0", ids["oom-retried"])
        assert retried is not None and retried["status"]["failed"] == 2
        await wait_until(lambda: job_of(system, "shard-0", ids["image"]) is None, what="job gone")


async def test_a_run_whose_job_is_deleted_as_it_succeeds_waits_for_its_report(
    servers: Servers,
) -> None:
    """With ``ttlSecondsAfterFinished: 0`` a Job is gone the moment it succeeds: its run is
    not taken for a lost one, but given the completion grace, then failed for no result."""
    async with (
        local_system(
            servers,
            shards=[SIMULATED],
            templates=[faulty(template("silent"), "silent")],
            section={"job_ttl_after_finished": 0},
        ) as system,
        running_maintainer(settings_for(system, completion_grace=3)),
    ):
        request_id = await system.submit("silent")
        await wait_until(lambda: job_of(system, "shard-0", request_id), what="the job made")
        await wait_until(lambda: job_of(system, "shard-0", request_id) is None, what="job gone")
        gone = asyncio.get_running_loop().time()
        answer = await system.wait_for("silent", request_id, timeout=20)
        found = await metadata(system, "silent", request_id)
        assert (answer["status"], found["algorithmFailureCause"]) == ("FAILED", "NoResult"), found
        assert asyncio.get_running_loop().time() - gone >= 2  # not before its grace


async def test_exit_codes_fail_runs_when_the_job_gives_up(servers: Servers) -> None:
    fatal = template("fatal", command=MAYBE_FAIL, retries=3, workgroup="processes")
    fatal["spec"]["errorHandlingBehaviour"] = {"transientExitCodes": [], "fatalExitCodes": [3]}
    async with (
        local_system(
            servers,
            shards=[SIMULATED, PROCESSES],
            workgroups=[("default", "shard-0"), ("processes", "shard-p")],
            templates=[template("crash", command=MAYBE_FAIL, workgroup="processes"), fatal],
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        crash = await system.submit("crash", {"algorithmParameters": {"exitCode": 7}})
        answer = await system.wait_for("crash", crash, timeout=30)
        found = await metadata(system, "crash", crash)
        assert (answer["status"], found["algorithmFailureCause"]) == (
            "FAILED",
            "BackoffLimitExceeded",
        )
        assert "exited with code 7" in found["algorithmFailureDetails"]
        # podFailurePolicy FailJob on a fatal code: no retry despite maximumRetries 3
        fails = await system.submit("fatal", {"algorithmParameters": {"exitCode": 3}})
        answer = await system.wait_for("fatal", fails, timeout=30)
        found = await metadata(system, "fatal", fails)
        assert (answer["status"], found["algorithmFailureCause"]) == ("FAILED", "PodFailurePolicy")
        assert "exit code 3" in found["algorithmFailureDetails"]
        job = job_of(system, "shard-p", fails)
        assert job is not None and job["status"]["failed"] == 1


async def test_lost_jobs_failed_creates_and_pods_started_behind_the_scheduler(
    servers: Servers,
) -> None:
    async with (
        local_system(
            servers,
            shards=[SIMULATED],
            templates=[faulty(template("hang"), "hang")],
        ) as system,
        # sweeps leave these runs alone: what moves them here is the watch's own doing
        running_maintainer(settings_for(system, queue_grace=60, running_grace=3600)),
        open_store(system) as store,
    ):
        # a Job deleted behind Nexus's back
        deleted = await system.submit("hang")
        await system.wait_for("hang", deleted, "RUNNING")
        await delete_job(system, "shard-0", deleted)
        answer = await system.wait_for("hang", deleted, timeout=10)
        assert answer["status"] == "FAILED" and answer["runErrorMessage"].startswith("JobLost: ")
        # the job controller could not create the pod
        refused = await system.submit("hang")
        await system.wait_for("hang", refused, "RUNNING")
        job = job_of(system, "shard-0", refused)
        assert job is not None
        await post_event(system, "shard-0", failed_create(job))
        answer = await system.wait_for("hang", refused, timeout=10)
        assert answer["status"] == "SCHEDULING_TIMEOUT"
        assert answer["runErrorMessage"] == 'FailedCreate: pods "x" is forbidden: exceeded quota'
        await wait_until(lambda: job_of(system, "shard-0", refused) is None, what="job deleted")
        # a Job created, its RUNNING never written: the pod's start moves the run on
        run_id = uuid.uuid4()
        await store.insert(
            NewRun(
                algorithm="hang", id=run_id, stage=Stage.BUFFERED, caller="tester",
                received_by_host="elsewhere", payload_inline=b"{}",
                applied_configuration={"shard": "shard-0", "deadlineSeconds": 60},
                payload_valid_for=timedelta(hours=1),
            )
        )  # fmt: skip
        created = await create_job(system, "shard-0", bare_job("hang", str(run_id)))

        async def running() -> bool:
            found = await store.get("hang", run_id, SYSTEM)
            return found is not None and found.stage == Stage.RUNNING

        await wait_until(running, what="RUNNING from the pod's start")
        found = await store.get("hang", run_id, SYSTEM)
        assert found is not None and (found.job_uid, found.shard) == (
            created["metadata"]["uid"],
            "shard-0",
        )


async def test_runs_the_scheduler_dispatched_are_not_written_again_by_the_maintainer(
    servers: Servers,
) -> None:
    """A pod's start moves its run to RUNNING only when the run has not said so for
    ``started_grace``, and a Job's success fails it only when no completion came for
    ``completion_grace``: runs that report before ``started_grace`` are never touched (nor
    tried) by the maintainer."""

    def tried(action: str) -> float:
        labels = {"action": action, "shard": "shard-0"}
        applied = REGISTRY.get_sample_value("nexus_maintainer_actions_total", labels)
        refused = REGISTRY.get_sample_value("nexus_maintainer_unchanged_total", {"action": action})
        return (applied or 0.0) + (refused or 0.0)

    async with (
        local_system(servers, shards=[SIMULATED], templates=[template("echo")]) as system,
        running_maintainer(settings_for(system, started_grace=1.5)),
    ):
        before = {action: tried(action) for action in ("started", "no_result")}
        runs = [await system.submit("echo") for _ in range(5)]
        for run in runs:
            assert (await system.wait_for("echo", run))["status"] == "COMPLETED"
        swept = running_sweeps()
        await asyncio.sleep(2.0)  # past the grace of every pod and Job
        assert running_sweeps() >= swept + 3
        assert {action: tried(action) for action in before} == before


def running_sweeps() -> float:
    count = "nexus_maintainer_sweep_seconds_count"
    return REGISTRY.get_sample_value(count, {"sweep": "running"}) or 0.0


def failed_create(job: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.failed", "namespace": NAMESPACE},
        "involvedObject": {
            "kind": "Job", "namespace": NAMESPACE, "name": meta["name"], "uid": meta["uid"],
            "apiVersion": "batch/v1",
        },
        "reason": "FailedCreate",
        "message": 'pods "x" is forbidden: exceeded quota',
        "type": "Warning",
        "source": {"component": "job-controller"},
        "count": 1,
    }  # fmt: skip


def bare_job(algorithm: str, name: str) -> dict[str, Any]:
    labels = {ALGORITHM_LABEL: algorithm, COMPONENT_LABEL: ALGORITHM_RUN, REQUEST_LABEL: name}
    container = {"name": name, "image": "example.io/hang:1.0"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels, "annotations": {"devcluster.nexus/fault": "hang"}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }
