"""Watches through kubernetes_asyncio.watch.Watch: events, resume, 410, bookmarks, selectors."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from nexus_dev.cluster.emulators import DevCluster

from .conftest import NS, connect, fast_spec, job_manifest


async def collect(func: Any, *args: Any, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """The first ``count`` events of a watch (bounded by its ``timeout_seconds``)."""
    events: list[dict[str, Any]] = []
    async with watch.Watch() as stream:
        async for event in stream.stream(func, *args, **kwargs):
            events.append(event)
            if len(events) >= count:
                break
    return events


async def test_watch_sees_added_modified_deleted(batch: client.BatchV1Api) -> None:
    listed = await batch.list_namespaced_job(NS)
    task = asyncio.create_task(
        collect(
            batch.list_namespaced_job,
            NS,
            count=100,
            timeout_seconds=1,
            resource_version=listed.metadata.resource_version,
        )
    )
    await asyncio.sleep(0.05)
    await batch.create_namespaced_job(NS, job_manifest("watched"))
    await asyncio.sleep(0.2)
    await batch.delete_namespaced_job("watched", NS, propagation_policy="Background")
    events = await task
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ADDED"
    assert "MODIFIED" in kinds
    assert kinds[-1] == "DELETED"
    assert all(e["object"].metadata.name == "watched" for e in events)
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    final = events[-2]["object"]
    assert {c.type for c in final.status.conditions} == {"SuccessCriteriaMet", "Complete"}


async def test_watch_without_version_lists_first(batch: client.BatchV1Api) -> None:
    await batch.create_namespaced_job(NS, job_manifest("existing"))
    events = await collect(batch.list_job_for_all_namespaces, count=1, timeout_seconds=1)
    assert events[0]["type"] == "ADDED"
    assert events[0]["object"].metadata.name == "existing"


async def test_resume_from_a_version(batch: client.BatchV1Api) -> None:
    first = await batch.create_namespaced_job(NS, job_manifest("r1", suspend=True))
    await batch.create_namespaced_job(NS, job_manifest("r2", suspend=True))
    events = await collect(
        batch.list_namespaced_job,
        NS,
        count=10,
        timeout_seconds=0.5,
        resource_version=first.metadata.resource_version,
    )
    seen = [(e["type"], e["object"].metadata.name) for e in events]
    assert ("ADDED", "r2") in seen
    assert ("ADDED", "r1") not in seen


async def test_too_old_version_is_410_expired(tmp_path: Path) -> None:
    async with (
        DevCluster([fast_spec(history_size=3)], tmp_path) as cluster,
        await connect(cluster["shard"]) as api,
    ):
        batch = client.BatchV1Api(api)
        for i in range(6):
            await batch.create_namespaced_job(NS, job_manifest(f"old{i}", suspend=True))
        for kwargs in ({"timeout_seconds": 1}, {}):  # with and without the client's retry
            with pytest.raises(ApiException) as caught:
                await collect(
                    batch.list_namespaced_job, NS, count=1, resource_version="2", **kwargs
                )
            assert caught.value.status == 410
            assert "Expired" in caught.value.reason


async def test_bookmarks_carry_the_current_version(batch: client.BatchV1Api) -> None:
    await batch.create_namespaced_job(NS, job_manifest("quiet", suspend=True))
    await asyncio.sleep(0.05)
    listed = await batch.list_namespaced_job(NS)
    events = await collect(
        batch.list_namespaced_job,
        NS,
        count=2,
        timeout_seconds=2,
        allow_watch_bookmarks=True,
        resource_version=listed.metadata.resource_version,
    )
    assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]  # every 0.2 s
    version = int(events[0]["raw_object"]["metadata"]["resourceVersion"])
    assert version >= int(listed.metadata.resource_version)


async def test_selector_transitions_and_namespaces(
    batch: client.BatchV1Api, api: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(api)
    await batch.create_namespaced_job(NS, job_manifest("sel", suspend=True))
    task = asyncio.create_task(
        collect(
            batch.list_namespaced_job, NS, count=2, timeout_seconds=1, label_selector="stage=hot"
        )
    )
    await asyncio.sleep(0.05)
    await batch.create_namespaced_job(
        "elsewhere", job_manifest("sel2", labels={"stage": "hot"}, suspend=True)
    )
    patch = {"metadata": {"labels": {"stage": "hot"}}}
    await batch.patch_namespaced_job("sel", NS, patch)
    await batch.patch_namespaced_job("sel", NS, {"metadata": {"labels": {"stage": "cold"}}})
    events = await task
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "sel"),
        ("DELETED", "sel"),
    ]
    del custom


async def test_slow_watcher_is_dropped_not_buffered(tmp_path: Path) -> None:
    spec = fast_spec()
    spec = dataclasses.replace(spec, watch=dataclasses.replace(spec.watch, buffer_budget=2000))
    async with DevCluster([spec], tmp_path) as cluster:
        shard = cluster["shard"]
        async with await connect(shard) as api:
            batch = client.BatchV1Api(api)
            response = await batch.list_namespaced_job(
                NS, watch=True, resource_version="1", _preload_content=False
            )
            for i in range(20):  # written before the client reads a byte
                shard.store.create(
                    "jobs",
                    job_manifest(f"slow{i}")
                    | {"metadata": {"name": f"slow{i}", "namespace": NS, "uid": str(i)}},
                )
            body = await asyncio.wait_for(response.read(), 5)
            response.release()
            assert body.count(b"\n") < 20  # closed early instead of growing without bound
            assert not shard.store.collection("jobs").watchers
