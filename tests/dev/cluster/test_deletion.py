"""Cascading deletion: Background, Foreground and Orphan, from query and DeleteOptions body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from .conftest import NS, eventually, job_manifest


async def _parent_with_children(batch: client.BatchV1Api) -> Any:
    """A running (hanging) Job with a pod, and a child Job that names it as owner."""
    parent = await batch.create_namespaced_job(
        NS, job_manifest("parent", env={"NEXUS_DEVCLUSTER_FAULT": "hang"})
    )
    child = job_manifest("child", env={"NEXUS_DEVCLUSTER_FAULT": "hang"})
    child["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "parent",
            "uid": parent.metadata.uid,
        }
    ]
    await batch.create_namespaced_job(NS, child)
    return parent


async def _names(batch: client.BatchV1Api, core: client.CoreV1Api) -> tuple[set[str], set[str]]:
    jobs = {j.metadata.name for j in (await batch.list_namespaced_job(NS)).items}
    pods = {p.metadata.labels["job-name"] for p in (await core.list_namespaced_pod(NS)).items}
    return jobs, pods


async def _running(core: client.CoreV1Api, count: int) -> bool:
    pods = (await core.list_namespaced_pod(NS)).items
    return sum(p.status.phase == "Running" for p in pods) == count


@pytest.mark.parametrize("via_body", [False, True])
async def test_background_deletes_owner_then_dependents(
    batch: client.BatchV1Api, core: client.CoreV1Api, via_body: bool
) -> None:
    await _parent_with_children(batch)
    await eventually(lambda: _running(core, 2))
    if via_body:
        options = client.V1DeleteOptions(propagation_policy="Background")
        status = await batch.delete_namespaced_job("parent", NS, body=options)
    else:
        status = await batch.delete_namespaced_job("parent", NS, propagation_policy="Background")
    assert status.status == "Success"
    assert status.details.name == "parent"

    async def all_gone() -> bool:
        return await _names(batch, core) == (set(), set())

    await eventually(all_gone)


async def test_foreground_keeps_owner_until_dependents_are_gone(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    await _parent_with_children(batch)
    await eventually(lambda: _running(core, 2))
    answer = await batch.delete_namespaced_job(
        "parent", NS, propagation_policy="Foreground", _preload_content=False
    )
    body = await answer.json()
    assert body["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in body["metadata"]["finalizers"]

    async def all_gone() -> bool:
        return await _names(batch, core) == (set(), set())

    await eventually(all_gone)
    reasons = [e.reason for e in (await core.list_namespaced_event(NS)).items]
    assert "Killing" in reasons


async def test_orphan_keeps_dependents_without_owner_reference(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    await _parent_with_children(batch)
    await eventually(lambda: _running(core, 2))
    await batch.delete_namespaced_job("parent", NS, propagation_policy="Orphan")

    async def parent_gone() -> bool:
        jobs, _ = await _names(batch, core)
        return jobs == {"child"}

    await eventually(parent_gone)
    child = await batch.read_namespaced_job("child", NS)
    assert not child.metadata.owner_references
    pods = (await core.list_namespaced_pod(NS)).items
    assert {p.metadata.labels["job-name"] for p in pods} == {"parent", "child"}
    orphan = next(p for p in pods if p.metadata.labels["job-name"] == "parent")
    assert not orphan.metadata.owner_references
    assert orphan.status.phase == "Running"


async def test_jobs_are_orphaned_by_default_as_in_kubernetes(
    batch: client.BatchV1Api, core: client.CoreV1Api
) -> None:
    await batch.create_namespaced_job(
        NS, job_manifest("lonely", env={"NEXUS_DEVCLUSTER_FAULT": "hang"})
    )
    await eventually(lambda: _running(core, 1))
    await batch.delete_namespaced_job("lonely", NS)
    await asyncio.sleep(0.05)
    jobs, pods = await _names(batch, core)
    assert jobs == set()
    assert pods == {"lonely"}


async def test_delete_missing_is_404_and_preconditions_conflict(batch: client.BatchV1Api) -> None:
    with pytest.raises(ApiException) as caught:
        await batch.delete_namespaced_job("ghost", NS)
    assert caught.value.status == 404
    await batch.create_namespaced_job(NS, job_manifest("guarded", suspend=True))
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-it"))
    with pytest.raises(ApiException) as caught:
        await batch.delete_namespaced_job("guarded", NS, body=options)
    assert caught.value.status == 409
