"""NexusAlgorithmTemplate and NexusAlgorithmWorkgroup: CRUD, patches and watch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from .conftest import NS

GROUP, VERSION = "science.sneaksanddata.com", "v1"
MERGE = "application/merge-patch+json"


def template(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NexusAlgorithmTemplate",
        "metadata": {"name": name, "labels": {"team": "ml"}},
        "spec": {
            "container": {"image": "algo", "registry": "reg", "versionTag": "1.0"},
            "computeResources": {"cpuLimit": "1", "memoryLimit": "1Gi"},
            "runtimeEnvironment": {"deadlineSeconds": 60, "maximumRetries": 2},
        },
    }


async def test_crud_and_patches(api: client.ApiClient) -> None:
    crd = client.CustomObjectsApi(api)
    plural = "nexusalgorithmtemplates"
    created = await crd.create_namespaced_custom_object(GROUP, VERSION, NS, plural, template("t1"))
    assert created["metadata"]["uid"]
    assert created["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as caught:
        await crd.create_namespaced_custom_object(GROUP, VERSION, NS, plural, template("t1"))
    assert caught.value.status == 409
    with pytest.raises(ApiException) as caught:
        await crd.create_namespaced_custom_object(GROUP, VERSION, NS, plural, template("Bad_1"))
    assert caught.value.status == 422
    got = await crd.get_namespaced_custom_object(GROUP, VERSION, NS, plural, "t1")
    assert got["spec"]["container"]["versionTag"] == "1.0"

    patched = await crd.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        plural,
        "t1",
        {"spec": {"container": {"versionTag": "2.0"}, "computeResources": None}},
        _content_type=MERGE,
    )
    assert patched["spec"]["container"] == {"image": "algo", "registry": "reg", "versionTag": "2.0"}
    assert "computeResources" not in patched["spec"]
    assert patched["metadata"]["generation"] == 2
    json_patched = await crd.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        plural,
        "t1",
        [{"op": "replace", "path": "/spec/runtimeEnvironment/maximumRetries", "value": 5}],
    )
    assert json_patched["spec"]["runtimeEnvironment"]["maximumRetries"] == 5
    with pytest.raises(ApiException) as caught:  # a dict without the merge content type
        await crd.patch_namespaced_custom_object(GROUP, VERSION, NS, plural, "t1", {"spec": {}})
    assert caught.value.status == 400

    replacement = dict(json_patched, spec={"container": {"image": "other"}})
    replaced = await crd.replace_namespaced_custom_object(
        GROUP, VERSION, NS, plural, "t1", replacement
    )
    assert replaced["spec"] == {"container": {"image": "other"}}
    stale = dict(replacement)
    with pytest.raises(ApiException) as caught:  # stale resourceVersion
        await crd.replace_namespaced_custom_object(GROUP, VERSION, NS, plural, "t1", stale)
    assert caught.value.status == 409

    listed = await crd.list_namespaced_custom_object(
        GROUP, VERSION, NS, plural, label_selector="team=ml"
    )
    assert [o["metadata"]["name"] for o in listed["items"]] == ["t1"]
    everywhere = await crd.list_cluster_custom_object(GROUP, VERSION, plural)
    assert len(everywhere["items"]) == 1
    await crd.delete_namespaced_custom_object(GROUP, VERSION, NS, plural, "t1")
    with pytest.raises(ApiException) as caught:
        await crd.get_namespaced_custom_object(GROUP, VERSION, NS, plural, "t1")
    assert caught.value.status == 404


async def test_watch_workgroups(api: client.ApiClient) -> None:
    crd = client.CustomObjectsApi(api)
    plural = "nexusalgorithmworkgroups"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NexusAlgorithmWorkgroup",
        "metadata": {"name": "wg"},
        "spec": {"description": "d", "cluster": "shard-a"},
    }

    listed = await crd.list_namespaced_custom_object(GROUP, VERSION, NS, plural)
    version = listed["metadata"]["resourceVersion"]

    async def changes() -> list[tuple[str, str]]:
        """From the listed version on, however late the watch connects (a loaded machine)."""
        seen: list[tuple[str, str]] = []
        async with watch.Watch() as stream:
            async for event in stream.stream(
                crd.list_namespaced_custom_object, GROUP, VERSION, NS, plural,
                resource_version=version, timeout_seconds=10,
            ):  # fmt: skip
                seen.append((event["type"], event["object"]["spec"]["cluster"]))
                if len(seen) == 3:
                    break
        return seen

    task = asyncio.create_task(changes())
    await crd.create_namespaced_custom_object(GROUP, VERSION, NS, plural, body)
    await crd.patch_namespaced_custom_object(
        GROUP, VERSION, NS, plural, "wg", {"spec": {"cluster": "shard-b"}}, _content_type=MERGE
    )
    await crd.delete_namespaced_custom_object(GROUP, VERSION, NS, plural, "wg")
    assert await task == [("ADDED", "shard-a"), ("MODIFIED", "shard-b"), ("DELETED", "shard-b")]
