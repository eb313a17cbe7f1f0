"""Fixtures for the local-cluster tests: a running shard and kubernetes-asyncio clients.

Everything talks to the emulator the way Nexus's services will: through kubernetes-asyncio
loaded from the kubeconfig the shard wrote. Timings are shrunk (back-offs, bookmarks,
simulated durations) so that every test finishes in well under a few seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from kubernetes_asyncio import client, config

from nexus_dev.cluster.emulators import DevCluster, Shard, ShardSpec
from nexus_dev.cluster.jobcontroller import JobControllerSettings
from nexus_dev.cluster.kubelet import KubeletSettings
from nexus_dev.cluster.processes import ProcessSettings
from nexus_dev.cluster.simulation import SimulationSettings
from nexus_dev.cluster.watchstreams import WatchSettings

NS = "nexus"


def fast_spec(name: str = "shard", **overrides: Any) -> ShardSpec:
    """A shard whose clocks run fast enough for tests."""
    spec = ShardSpec(
        name=name,
        simulation=SimulationSettings(duration="fixed:0.01", request_timeout=2.0),
        processes=ProcessSettings(memory_poll_interval=0.05),
        kubelet=KubeletSettings(image_pull_backoff=0.2),
        jobs=JobControllerSettings(retry_backoff=0.01, retry_backoff_max=0.05),
        watch=WatchSettings(bookmark_interval=0.2),
    )
    return dataclasses.replace(spec, **overrides)


async def connect(shard: Shard) -> client.ApiClient:
    """A kubernetes-asyncio client configured from the shard's kubeconfig file."""
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(shard.kubeconfig), client_configuration=configuration
    )
    return client.ApiClient(configuration)


def trusting(shard: Shard) -> aiohttp.TCPConnector:
    """Connections for a plain aiohttp session to the shard: over HTTPS they trust the
    cluster's throwaway authority, as the kubeconfig tells clients that read it."""
    return aiohttp.TCPConnector(ssl=shard.ssl_context or True)


def job_manifest(
    name: str,
    *,
    command: list[str] | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    memory: str | None = None,
    grace: int | None = 1,
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "algorithms/test:1.0"}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if memory:
        container["resources"] = {"limits": {"memory": memory}}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"template": {"spec": pod_spec}, **spec},
    }


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)


async def finished_job(batch: client.BatchV1Api, name: str, timeout: float = 5.0) -> Any:
    """The Job once it has a ``Complete`` or ``Failed`` condition."""

    async def probe() -> Any:
        job = await batch.read_namespaced_job(name, NS)
        kinds = {c.type for c in job.status.conditions or () if c.status == "True"}
        return job if kinds & {"Complete", "Failed"} else None

    return await eventually(probe, timeout)


async def events_for(core: client.CoreV1Api, name: str) -> list[tuple[str, str, str]]:
    """``(type, reason, message)`` of the Events about object ``name``."""
    listed = await core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
    return [(e.type, e.reason, e.message) for e in listed.items]


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[DevCluster]:
    async with DevCluster([fast_spec()], kubeconfig_dir=tmp_path) as running:
        yield running


@pytest_asyncio.fixture
async def shard(cluster: DevCluster) -> Shard:
    return cluster["shard"]


@pytest_asyncio.fixture
async def api(shard: Shard) -> AsyncIterator[client.ApiClient]:
    api_client = await connect(shard)
    async with api_client:
        yield api_client


@pytest_asyncio.fixture
async def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


@pytest_asyncio.fixture
async def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)
