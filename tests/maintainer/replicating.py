"""What the configuration controller's tests share: a controller cluster and two shards
(emulated API servers), clients to them, the replicator running in this event loop, and
the objects it copies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from maintainer.replication import Replicator
from maintainer.settings import ReplicationSection
from nexus.core.shards import CONFIG_MAPS, SECRETS, TEMPLATES, WORKGROUPS, Resource, ShardClient
from nexus_dev.cluster.emulators import DevCluster, ShardSpec

CONTROLLER_NS = "nexus"
RUNTIME_NS = "runtime"
"""The shards' runtime namespace differs from the controller's: copies go where Jobs run."""
SHARDS = ("shard-a", "shard-b")
GROUP = "science.sneaksanddata.com"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def template(
    name: str, image: str = "algo", *, secret: str | None = None, config_map: str | None = None
) -> dict[str, Any]:
    env_from: list[dict[str, Any]] = []
    if secret:
        env_from.append({"secretRef": {"name": secret}})
    if config_map:
        env_from.append({"configMapRef": {"name": config_map}})
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "NexusAlgorithmTemplate",
        "metadata": {"name": name, "labels": {"team": "ml"}},
        "spec": {
            "container": {"image": image, "registry": "example.io", "versionTag": "1.0"},
            "workgroupRef": {"name": "default", "group": GROUP, "kind": "NexusAlgorithmWorkgroup"},
            "runtimeEnvironment": {"mappedEnvironmentVariables": env_from},
        },
    }


def workgroup(name: str, shard: str, description: str = "") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "NexusAlgorithmWorkgroup",
        "metadata": {"name": name},
        "spec": {"cluster": shard, "description": description},
    }


def secret(name: str, **values: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "type": "Opaque", "stringData": values}


def config_map(name: str, **values: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": values}


@dataclass
class Clusters:
    """A controller cluster and the shards, each an emulated API server."""

    cluster: DevCluster
    controller: ShardClient
    shards: dict[str, ShardClient]
    running: list[Replicator] = field(default_factory=list)

    async def put(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``body`` in the controller namespace; the stored object."""
        name = body["metadata"]["name"]
        found = await self.controller.get(resource, name)
        if found is None:
            written = await self.controller.create_object(resource, body)
        else:
            meta = {**found["metadata"], **body["metadata"]}
            written = await self.controller.replace_object(resource, {**body, "metadata": meta})
        assert written.done and written.object is not None, written
        return written.object

    async def remove(self, resource: Resource, name: str) -> None:
        assert (await self.controller.delete_object(resource, name)).done

    async def copies(self, shard: str, resource: Resource) -> dict[str, dict[str, Any]]:
        """The objects of ``resource`` in the shard's runtime namespace, by name."""
        listing = await self.shards[shard].list_all(resource)
        return {o["metadata"]["name"]: o for o in listing.items}


@contextlib.asynccontextmanager
async def clusters(tmp_path: Path) -> AsyncIterator[Clusters]:
    names = ("controller", *SHARDS)
    specs = [ShardSpec(name=name, mode="off", events=False) for name in names]
    async with (
        DevCluster(specs, tmp_path / "clusters") as cluster,
        contextlib.AsyncExitStack() as stack,
    ):
        opened: dict[str, ShardClient] = {}
        for name in names:
            namespace = CONTROLLER_NS if name == "controller" else RUNTIME_NS
            client = await ShardClient.from_kubeconfig(
                name, cluster[name].kubeconfig, namespace, timeout=2
            )
            stack.push_async_callback(client.close)
            opened[name] = client
        controller = opened.pop("controller")
        yield Clusters(cluster, controller, opened)


def section(**changes: Any) -> ReplicationSection:
    return ReplicationSection(**{"enabled": True, "interval": 0.3, "max_backoff": 0.2, **changes})


@contextlib.asynccontextmanager
async def replicating(
    clusters: Clusters,
    *,
    leading: Callable[[], bool] = lambda: True,
    shards: dict[str, ShardClient] | None = None,
    **changes: Any,
) -> AsyncIterator[Replicator]:
    """A replicator from the controller to the shards, running until the block ends."""
    replicator = Replicator(
        clusters.controller,
        CONTROLLER_NS,
        clusters.shards if shards is None else shards,
        section(**changes),
        leading,
        watch_timeout=5,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(replicator.run(stopping), name="test:replicator")
    try:
        yield replicator
    finally:
        stopping.set()
        await task


async def eventually(probe: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Until ``probe()`` (awaited if need be) returns something truthy; that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}: last {result!r}")
        await asyncio.sleep(0.02)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def copies_of(shard: str, kind: str, state: str) -> float:
    return metric("nexus_configuration_copies", shard=shard, kind=kind, state=state)


def written(shard: str, kind: str, action: str) -> float:
    return metric("nexus_configuration_writes_total", shard=shard, kind=kind, action=action)


RESOURCES = {"template": TEMPLATES, "workgroup": WORKGROUPS, "secret": SECRETS}
RESOURCES["configmap"] = CONFIG_MAPS
