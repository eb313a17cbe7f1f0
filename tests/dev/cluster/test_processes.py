"""Process mode: the container's command runs locally; exit codes, OOM, logs, kills."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from kubernetes_asyncio import client

from nexus_dev.cluster.emulators import DevCluster

from .conftest import NS, connect, eventually, fast_spec, finished_job, job_manifest


@pytest_asyncio.fixture
async def process_api(tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    async with (
        DevCluster([fast_spec(mode="process")], tmp_path) as cluster,
        await connect(cluster["shard"]) as api,
    ):
        yield api


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.split(") ")[1][0] != "Z"


async def terminated_state(core: client.CoreV1Api, job: str) -> tuple[str, client.V1Pod]:
    pod = (await core.list_namespaced_pod(NS, label_selector=f"job-name={job}")).items[0]
    log = await core.read_namespaced_pod_log(pod.metadata.name, NS)
    return log, pod


async def test_success_with_env_and_logs(process_api: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(process_api), client.CoreV1Api(process_api)
    script = "import os, sys; print('hello', os.environ['GREETING'], sys.argv[1])"
    manifest = job_manifest(
        "ok", command=["python", "-c", script], args=["arg1"], env={"GREETING": "world"}
    )
    await batch.create_namespaced_job(NS, manifest)
    job = await finished_job(batch, "ok")
    assert job.status.succeeded == 1
    log, pod = await terminated_state(core, "ok")
    assert log == "hello world arg1\n"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Completed", 0)
    assert pod.status.phase == "Succeeded"


async def test_exit_code_3(process_api: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(process_api), client.CoreV1Api(process_api)
    script = "import sys; print('failing', file=sys.stderr); sys.exit(3)"
    await batch.create_namespaced_job(
        NS, job_manifest("three", command=["python3", "-c", script], backoffLimit=0)
    )
    job = await finished_job(batch, "three")
    assert job.status.failed == 1
    log, pod = await terminated_state(core, "three")
    assert "failing" in log
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Error", 3)


async def test_memory_limit_is_oom_killed(process_api: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(process_api), client.CoreV1Api(process_api)
    script = (
        "import time; print('allocating', flush=True); b = b'x' * (300 * 2**20); time.sleep(30)"
    )
    manifest = job_manifest(
        "hungry", command=["python", "-c", script], memory="64Mi", backoffLimit=0
    )
    await batch.create_namespaced_job(NS, manifest)
    job = await finished_job(batch, "hungry", timeout=10)
    assert job.status.failed == 1
    log, pod = await terminated_state(core, "hungry")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    assert "allocating" in log


async def test_missing_command_is_start_error(process_api: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(process_api), client.CoreV1Api(process_api)
    manifest = job_manifest("missing", command=["/no/such/binary"], backoffLimit=0)
    await batch.create_namespaced_job(NS, manifest)
    await finished_job(batch, "missing")
    _, pod = await terminated_state(core, "missing")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("StartError", 128)


async def test_deleting_the_job_kills_the_process_tree(
    process_api: client.ApiClient, tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(process_api), client.CoreV1Api(process_api)
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    await batch.create_namespaced_job(NS, job_manifest("tree", command=["python", "-c", script]))

    async def written() -> bool:
        return pids.exists() and " " in pids.read_text()

    await eventually(written)
    await batch.delete_namespaced_job("tree", NS, propagation_policy="Foreground")

    async def dead() -> bool:
        return not any(_alive(pid) for pid in map(int, pids.read_text().split()))

    await eventually(dead, timeout=5)

    async def pods_gone() -> bool:
        return not (await core.list_namespaced_pod(NS)).items

    await eventually(pods_gone)
