"""Retry policies by failure class, through the whole local system (nexus/core/retrying.py).

Each test runs the real schedulers (several), receiver and maintainer on the local cluster,
whose simulated kubelet shows each failure as a real one reports it: a container
``OOMKilled`` with exit 137 (its memory limit below what the algorithm needs), a pod
``Evicted`` or marked failed for a lost node, an image that does not pull
(``ErrImagePull``/``ImagePullBackOff``) and a pod no node takes (``PodScheduled`` false,
``Unschedulable``). ``devcluster.nexus/fault-pods`` limits a fault to the first pods of a
run, so that a retry can succeed.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from harness import Servers
from maintaining import (
    environment,
    maintainer_sections,
    open_store,
    processes,
    running_maintainer,
    scheduler_sections,
    settings_for,
    spawn,
    wait_ready,
    wait_until,
)
from support.system import System, free_port, local_system, template

from nexus.core.retrying import record
from nexus.core.runs import RunKey
from nexus.core.visibility import SYSTEM
from nexus.scheduler.api import SCHEDULER
from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.jobcontroller import JobControllerSettings
from nexus_dev.cluster.kubelet import (
    FAULT_ANNOTATION,
    FAULT_PODS_ANNOTATION,
    MEMORY_ANNOTATION,
    KubeletSettings,
)
from nexus_dev.cluster.simulation import SimulationSettings

SIMULATED = ShardSpec(
    name="shard-0",
    mode="simulated",
    simulation=SimulationSettings(duration="fixed:0.2"),
    jobs=JobControllerSettings(retry_backoff=0.1),
    kubelet=KubeletSettings(image_pull_backoff=0.2),
)


def retrying(
    name: str,
    policy: dict[str, Any],
    annotations: dict[str, str],
    memory: str = "1Gi",
) -> dict[str, Any]:
    """An echo template with ``policy`` as its retryPolicy, whose pods carry
    ``annotations`` (the faults the simulated kubelet plays)."""
    made = template(name)
    spec = made["spec"]
    spec["retryPolicy"] = copy.deepcopy(policy)
    spec["computeResources"]["memoryLimit"] = memory
    spec["runtimeEnvironment"]["annotations"] = dict(annotations)
    return made


async def metadata(system: System, algorithm: str, request_id: str) -> dict[str, Any]:
    status, body = await system.get(f"/algorithm/v1.2/metadata/{algorithm}/requests/{request_id}")
    assert status == 200, body
    return dict(body)


def jobs_of(system: System, request_id: str, shard: str = "shard-0") -> dict[str, Any]:
    """Every Job of the run on ``shard`` (its attempts), by name."""
    jobs = system.cluster[shard].store.collections["jobs"].objects.values()
    return {
        job["metadata"]["name"]: job
        for job in jobs
        if job["metadata"]["name"].startswith(request_id)
    }


def memory_of(job: dict[str, Any]) -> str:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return str(container["resources"]["limits"]["memory"])


async def finished(system: System, algorithm: str, request_id: str) -> dict[str, Any]:
    return await system.wait_for(algorithm, request_id, timeout=45)


async def test_out_of_memory_is_retried_with_more_memory_up_to_the_cap(servers: Servers) -> None:
    policy = {"outOfMemory": {"maxRetries": 3, "memoryMultiplier": 2, "maxMemory": "2Gi"}}
    templates = [
        retrying("hungry", policy, {MEMORY_ANNOTATION: "1500Mi"}, memory="512Mi"),
        retrying("greedy", policy, {MEMORY_ANNOTATION: "3Gi"}, memory="512Mi"),
        retrying("unlimited", {}, {MEMORY_ANNOTATION: "3Gi"}, memory="512Mi"),
    ]
    async with (
        local_system(servers, shards=[SIMULATED], schedulers=2, templates=templates) as system,
        running_maintainer(settings_for(system)),
    ):
        hungry = await system.submit("hungry", url=system.balancer_url)
        greedy = await system.submit("greedy", url=system.balancer_url)
        unlimited = await system.submit("unlimited", url=system.balancer_url)

        assert (await finished(system, "hungry", hungry))["status"] == "COMPLETED"
        meta = await metadata(system, "hungry", hungry)
        assert meta["attempt"] == 3
        assert meta["appliedConfiguration"]["memoryLimit"] == "2Gi"
        assert [(r["attempt"], r["failureClass"], r["cause"], r["memoryLimit"]) for r in
                meta["retries"]] == [(1, "outOfMemory", "OOMKilled", "512Mi"),
                                     (2, "outOfMemory", "OOMKilled", "1Gi")]  # fmt: skip
        assert [r["job"] for r in meta["retries"]] == [hungry, f"{hungry}-a2"]
        jobs = jobs_of(system, hungry)
        assert {name: memory_of(job) for name, job in jobs.items()} == {
            hungry: "512Mi",
            f"{hungry}-a2": "1Gi",
            f"{hungry}-a3": "2Gi",
        }

        # at the cap and still out of memory: the run fails, as without a policy
        answer = await finished(system, "greedy", greedy)
        assert answer["status"] == "FAILED", answer
        meta = await metadata(system, "greedy", greedy)
        assert meta["algorithmFailureCause"] == "OOMKilled"
        assert "already at the cap of 2Gi" in meta["algorithmFailureDetails"]
        assert meta["attempt"] == 3 and len(meta["retries"]) == 2
        assert set(jobs_of(system, greedy)) == {greedy, f"{greedy}-a2", f"{greedy}-a3"}

        # no policy: one attempt, as before
        answer = await finished(system, "unlimited", unlimited)
        assert answer["status"] == "FAILED", answer
        meta = await metadata(system, "unlimited", unlimited)
        assert (meta["attempt"], meta["retries"], meta["algorithmFailureCause"]) == (
            1,
            [],
            "OOMKilled",
        )
        assert set(jobs_of(system, unlimited)) == {unlimited}


async def test_evicted_and_lost_nodes_are_retried_and_a_retried_run_counts_once(
    servers: Servers,
) -> None:
    """A pod evicted by its kubelet, or marked failed for its lost node, is retried; the
    run holds one concurrency slot through its attempts (here the limit is 1, so the second
    run waits for the first to finish, retry included)."""
    policy = {"nodeLost": {"maxRetries": 2}}
    once = {FAULT_PODS_ANNOTATION: "1"}
    evicted = retrying("evicted", policy, {FAULT_ANNOTATION: "evicted", **once})
    evicted["spec"]["concurrency"] = {"maxRunning": 1}
    lost = retrying("lost", policy, {FAULT_ANNOTATION: "node-lost", **once})
    always = retrying("always-lost", policy, {FAULT_ANNOTATION: "node-lost"})
    async with (
        local_system(
            servers, shards=[SIMULATED], schedulers=2, templates=[evicted, lost, always]
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        first = await system.submit("evicted", url=system.balancer_url)
        second = await system.submit("evicted", url=system.balancer_url)
        lost_run = await system.submit("lost", url=system.balancer_url)
        doomed = await system.submit("always-lost", url=system.balancer_url)
        most = 0
        while True:  # never two runs of the limited algorithm RUNNING, whatever attempt
            stages = await stored_attempts(servers.postgres_dsn, "evicted")
            most = max(most, sum(stage == "RUNNING" for stage, _ in stages.values()))
            if all(stage == "COMPLETED" for stage, _ in stages.values()):
                break
            await asyncio.sleep(0.02)
        assert most == 1
        for request_id in (first, second):
            meta = await metadata(system, "evicted", request_id)
            assert meta["attempt"] == 2, meta
            (failed,) = meta["retries"]
            assert (failed["failureClass"], failed["cause"]) == ("nodeLost", "Evicted")
            assert "low on resource: memory" in failed["details"]
            assert set(jobs_of(system, request_id)) == {request_id, f"{request_id}-a2"}

        assert (await finished(system, "lost", lost_run))["status"] == "COMPLETED"
        meta = await metadata(system, "lost", lost_run)
        (failed,) = meta["retries"]
        assert (failed["failureClass"], failed["cause"]) == ("nodeLost", "NodeLost")
        assert "node no longer exists" in failed["details"]

        answer = await finished(system, "always-lost", doomed)
        assert answer["status"] == "FAILED"
        meta = await metadata(system, "always-lost", doomed)
        assert meta["attempt"] == 3 and meta["algorithmFailureCause"] == "NodeLost"
        assert "retried 2 times for nodeLost" in meta["algorithmFailureDetails"]

        # the caller's quota of unfinished runs counted each run once
        status, usage = await system.get("/algorithm/v1.2/usage")
        assert status == 200 and usage["unfinishedRuns"] == 0, usage


@pytest.mark.slow
async def test_scheduling_failures_are_retried_after_their_delay(servers: Servers) -> None:
    """An image that does not pull and a pod no node takes are scheduling failures: the
    attempt's Job is deleted and the run tried again after the policy's delay; without a
    policy an image that does not pull fails the run, and an unschedulable pod waits."""
    policy = {"schedulingFailure": {"maxRetries": 2, "delaySeconds": 1.5}}
    once = {FAULT_PODS_ANNOTATION: "1"}
    templates = [
        retrying("pull", policy, {FAULT_ANNOTATION: "image-pull", **once}),
        retrying("unplaced", policy, {FAULT_ANNOTATION: "unschedulable", **once}),
        retrying("never-placed", policy, {FAULT_ANNOTATION: "unschedulable"}),
        retrying("waits", {}, {FAULT_ANNOTATION: "unschedulable"}),
        retrying("no-pull", {}, {FAULT_ANNOTATION: "image-pull"}),
    ]
    async with (
        local_system(servers, shards=[SIMULATED], schedulers=2, templates=templates) as system,
        running_maintainer(settings_for(system, unschedulable_grace=1.0)),
    ):
        ids = {
            name: await system.submit(name, url=system.balancer_url)
            for name in ("pull", "unplaced", "never-placed", "waits", "no-pull")
        }
        for name, cause, reason in (
            ("pull", "ImagePullFailed", "ErrImagePull"),
            ("unplaced", "Unschedulable", "Insufficient memory"),
        ):
            request_id = ids[name]
            assert (await finished(system, name, request_id))["status"] == "COMPLETED"
            meta = await metadata(system, name, request_id)
            assert meta["attempt"] == 2, meta
            (failed,) = meta["retries"]
            assert (failed["failureClass"], failed["cause"]) == ("schedulingFailure", cause)
            assert reason in failed["details"]
            # the second attempt waited for the delay after the first was given up
            started = jobs_of(system, request_id)[f"{request_id}-a2"]["metadata"]
            assert started["creationTimestamp"] >= failed["retryAt"][:19]
            assert failed["retryAt"] > failed["endedAt"]
            # the failed attempt's Job, which would have waited on, is gone
            assert set(jobs_of(system, request_id)) == {f"{request_id}-a2"}

        answer = await finished(system, "never-placed", ids["never-placed"])
        assert answer["status"] == "SCHEDULING_TIMEOUT" or answer["status"] == (
            "SCHEDULING_FAILED"
        ), answer
        meta = await metadata(system, "never-placed", ids["never-placed"])
        assert meta["attempt"] == 3 and meta["algorithmFailureCause"] == "Unschedulable"

        answer = await finished(system, "no-pull", ids["no-pull"])
        meta = await metadata(system, "no-pull", ids["no-pull"])
        assert (meta["attempt"], meta["algorithmFailureCause"]) == (1, "ImagePullFailed")

        meta = await metadata(system, "waits", ids["waits"])  # no policy: still waiting
        assert (meta["lifecycleStage"], meta["attempt"]) == ("RUNNING", 1), meta


async def test_algorithm_failures_are_never_retried_unless_the_policy_says_so(
    servers: Servers,
) -> None:
    """A completion with a cause fails the run, whatever else the policy retries; a template
    that asks for it retries the attempt the completion names (its ``NEXUS__ATTEMPT``), and
    a report of an attempt that is over changes nothing."""
    once = {FAULT_ANNOTATION: "exit", FAULT_PODS_ANNOTATION: "1"}
    everything_else = {"outOfMemory": {}, "schedulingFailure": {}, "nodeLost": {}}
    templates = [
        retrying("reported", everything_else, once),
        retrying("asked", {"algorithmFailure": {"maxRetries": 1}}, once),
    ]
    async with (
        local_system(servers, shards=[SIMULATED], schedulers=2, templates=templates) as system,
        running_maintainer(settings_for(system)),
    ):
        reported = await system.submit("reported", url=system.balancer_url)
        asked = await system.submit("asked", url=system.balancer_url)
        answer = await finished(system, "reported", reported)
        assert answer["status"] == "FAILED" and "AlgorithmFailed" in answer["runErrorMessage"]
        meta = await metadata(system, "reported", reported)
        assert (meta["attempt"], meta["retries"]) == (1, [])

        assert (await finished(system, "asked", asked))["status"] == "COMPLETED"
        meta = await metadata(system, "asked", asked)
        assert meta["attempt"] == 2
        (failed,) = meta["retries"]
        assert (failed["failureClass"], failed["cause"]) == ("algorithmFailure", "AlgorithmFailed")
        assert failed["details"] == "simulated failure: exit 1"
        # the first attempt's report again, late: the run stays as it is
        token = (
            system.schedulers[0]
            .app[SCHEDULER]
            .links.run_token(await checkpoint_of(system, "asked", asked))
        )
        async with system.session.post(
            f"{system.receiver_url}/algorithm/v1.2/complete/asked/requests/{asked}",
            json={"cause": "AlgorithmFailed", "message": "late", "attempt": 1},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200
            assert (await response.json())["status"] == "COMPLETED"
        assert (await metadata(system, "asked", asked))["retries"] == meta["retries"]


async def test_an_algorithm_using_the_sdk_is_retried_when_it_reports_a_failure(
    servers: Servers,
) -> None:
    """A real process (the SDK's ``maybe-fail`` example) reports a failure with the attempt
    its Job says it is; its template retries algorithm failures once, so the run fails on
    its second attempt, with the first in its retries."""
    processes_shard = ShardSpec(
        name="shard-p", mode="process", jobs=JobControllerSettings(retry_backoff=0.1)
    )
    asked = template(
        "maybe-fail", command=("python", "-m", "nexus_sdk.examples", "maybe-fail"),
        workgroup="processes",
    )  # fmt: skip
    asked["spec"]["retryPolicy"] = {"algorithmFailure": {"maxRetries": 1}}
    async with (
        local_system(
            servers,
            shards=[SIMULATED, processes_shard],
            workgroups=[("default", "shard-0"), ("processes", "shard-p")],
            templates=[asked],
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        run = await system.submit("maybe-fail", {"algorithmParameters": {"fail": "bad input"}})
        answer = await finished(system, "maybe-fail", run)
        assert answer["status"] == "FAILED", answer
        meta = await metadata(system, "maybe-fail", run)
        assert meta["attempt"] == 2, meta
        (failed,) = meta["retries"]
        assert (failed["attempt"], failed["failureClass"]) == (1, "algorithmFailure")
        assert set(jobs_of(system, run, "shard-p")) == {run, f"{run}-a2"}


async def checkpoint_of(system: System, algorithm: str, request_id: str) -> Any:
    async with open_store(system) as store:
        return await store.get(algorithm, uuid.UUID(request_id), SYSTEM)


async def stored_attempts(dsn: str, algorithm: str) -> dict[str, tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, lifecycle_stage, run_attempt FROM runs WHERE algorithm = $1", algorithm
        )
    finally:
        await conn.close()
    return {str(r["id"]): (r["lifecycle_stage"], r["run_attempt"]) for r in rows}


@pytest.mark.slow
async def test_a_crash_in_the_middle_of_retries_makes_exactly_one_new_attempt_each(
    servers: Servers,
) -> None:
    """SIGKILL of the leading maintainer and of a scheduler pod while runs are being
    retried: a standby maintainer takes over, the dead pod's queue is adopted, and every
    run has exactly one second attempt (one Job more), whoever saw its first fail. A run
    whose new attempt was committed by a maintainer that died before queueing it (made
    here by hand, before any maintainer runs) is queued by the sweep, once."""
    policy = {"outOfMemory": {"maxRetries": 2}, "nodeLost": {"maxRetries": 2}}
    templates = [
        retrying("oom-once", policy, {FAULT_ANNOTATION: "oom", FAULT_PODS_ANNOTATION: "1"}),
        retrying("evicted-once", policy, {FAULT_ANNOTATION: "evicted", FAULT_PODS_ANNOTATION: "1"}),
    ]
    async with local_system(servers, shards=[SIMULATED], templates=templates) as system:
        dsn = servers.postgres_dsn
        stranded = await system.submit("oom-once")

        async def first_attempt_failed() -> bool:
            job = jobs_of(system, stranded).get(stranded)
            return any(
                c["type"] == "Failed"
                for c in ((job or {}).get("status") or {}).get("conditions", [])
            )

        await wait_until(first_attempt_failed, 20, "the first attempt failed")
        async with open_store(system) as store:
            now = datetime.now(UTC)
            failed = record(uuid.UUID(stranded), 1, "outOfMemory", "OOMKilled", "by hand", now)
            assert await store.retry(RunKey("oom-once", uuid.UUID(stranded)), 1, failed)

        with processes() as children:
            port = free_port()
            sections = scheduler_sections(
                system, "doomed", port, heartbeat_ttl=1.5, public_url=system.schedulers[0].url
            )
            doomed = spawn("scheduler", environment(sections), servers.tmp_path / "s.log", port)
            children.append(doomed)
            await wait_ready(system.session, doomed)
            leaders = []
            for name in ("first", "second"):
                mport = free_port()
                env = environment(maintainer_sections(system, name, lease_ttl=1.5))
                children.append(spawn("maintainer", env, servers.tmp_path / f"{name}.log", mport))
                await wait_ready(system.session, children[-1])
                leaders.append(children[-1])
                if name == "first":
                    await wait_until(lambda: leading(leaders[0]), what="first leads")
            first, second = leaders
            ids: dict[str, str] = {stranded: "oom-once"}
            gate = asyncio.Semaphore(16)

            async def submit(i: int) -> None:
                algorithm = ("oom-once", "evicted-once")[i % 2]
                url = (system.schedulers[0].url, f"http://127.0.0.1:{port}")[i // 2 % 2]
                async with gate:
                    ids[await system.submit(algorithm, url=url)] = algorithm

            await asyncio.gather(*(submit(i) for i in range(80)))

            async def some_retried() -> bool:
                attempts = await all_attempts(dsn)
                return sum(a == 2 for _, a in attempts.values()) >= 5

            # early, so that the crash falls among runs retried, failing and not yet tried
            await wait_until(some_retried, 30, "some runs retried", dsn)
            before = await all_attempts(dsn)
            first.kill()
            doomed.kill()
            assert sum(stage != "COMPLETED" for stage, _ in before.values()) >= 20, before

            async def all_completed() -> bool:
                attempts = await all_attempts(dsn)
                return len(attempts) == len(ids) and all(
                    stage == "COMPLETED" for stage, _ in attempts.values()
                )

            await wait_until(all_completed, 90, "every run COMPLETED", dsn)
            assert set((await all_attempts(dsn)).values()) == {("COMPLETED", 2)}
            for request_id in ids:
                # the second attempt's Job, and no third; the first attempt's may be gone: a
                # pod that held the run when it was retried deletes the Job it tried to make
                jobs = set(jobs_of(system, request_id))
                assert f"{request_id}-a2" in jobs, jobs
                assert jobs <= {request_id, f"{request_id}-a2"}, jobs
            retried = Counter(
                line["requestId"]
                for process in (first, second)
                for line in process.lines()
                if line.get("action") == "retried"
            )
            # a maintainer killed right after its commit never logs it: the store tells
            assert set(retried) <= set(ids) - {stranded}
            assert max(retried.values()) == 1
            assert any(line.get("action") == "retried" for line in second.lines())
            async with open_store(system) as store:
                for request_id, algorithm in ids.items():
                    run = await store.get(algorithm, uuid.UUID(request_id), SYSTEM)
                    assert run is not None and len(run.retries) == 1, run


async def all_attempts(dsn: str) -> dict[str, tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, lifecycle_stage, run_attempt FROM runs")
    finally:
        await conn.close()
    return {str(r["id"]): (r["lifecycle_stage"], r["run_attempt"]) for r in rows}


def leading(process: Any) -> bool:
    return any(line.get("message") == "leading" for line in process.lines())
