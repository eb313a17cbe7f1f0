"""Secrets and ConfigMaps: CRUD, what the server fills in and refuses, selectors, watch."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from nexus_dev.cluster.emulators import DevCluster

from .conftest import NS, connect, fast_spec


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, labels: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        **fields,
    }


def config_map(name: str, labels: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        **fields,
    }


async def test_secret_crud_with_string_data_and_type(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_secret(
        NS, secret("db", data={"user": b64("admin")}, stringData={"password": "s3cret"})
    )
    assert created.type == "Opaque"
    assert created.data == {"user": b64("admin"), "password": b64("s3cret")}
    assert created.string_data is None  # write-only: never stored
    assert created.metadata.uid and created.metadata.generation is None
    read = await core.read_namespaced_secret("db", NS)
    assert read.data == created.data
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_secret(NS, secret("db"))
    assert caught.value.status == 409

    read.data = {"user": b64("root")}
    replaced = await core.replace_namespaced_secret("db", NS, read)
    assert replaced.data == {"user": b64("root")}
    assert int(replaced.metadata.resource_version) > int(read.metadata.resource_version)

    await core.delete_namespaced_secret("db", NS)
    with pytest.raises(ApiException) as caught:
        await core.read_namespaced_secret("db", NS)
    assert caught.value.status == 404


async def test_secret_type_is_immutable_and_data_must_be_base64(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_secret(NS, secret("bad", data={"k": "not base64!"}))
    assert caught.value.status == 400
    assert "illegal base64" in caught.value.body
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_secret(NS, secret("bad", data={"no spaces": b64("x")}))
    assert caught.value.status == 422
    assert "data[no spaces]" in caught.value.body

    created = await core.create_namespaced_secret(
        NS, secret("tls", type="kubernetes.io/tls", stringData={"tls.crt": "c", "tls.key": "k"})
    )
    assert created.type == "kubernetes.io/tls"
    created.type = "Opaque"
    with pytest.raises(ApiException) as caught:
        await core.replace_namespaced_secret("tls", NS, created)
    assert caught.value.status == 422
    assert "field is immutable" in caught.value.body


async def test_immutable_objects_keep_their_data(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_config_map(
        NS, config_map("frozen", data={"a": "1"}, immutable=True)
    )
    created.data = {"a": "2"}
    with pytest.raises(ApiException) as caught:
        await core.replace_namespaced_config_map("frozen", NS, created)
    assert caught.value.status == 422
    assert "immutable" in caught.value.body
    created.data, created.immutable = {"a": "1"}, False
    with pytest.raises(ApiException) as caught:  # nor can the mark be taken off
        await core.replace_namespaced_config_map("frozen", NS, created)
    assert caught.value.status == 422
    # labels may still change
    created.immutable = True
    created.metadata.labels = {"x": "y"}
    relabelled = await core.replace_namespaced_config_map("frozen", NS, created)
    assert relabelled.metadata.labels == {"x": "y"}


async def test_config_map_crud_and_keys(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_config_map(
        NS, config_map("settings", data={"LEVEL": "debug"}, binaryData={"blob": b64("\x00\x01")})
    )
    assert created.data == {"LEVEL": "debug"}
    assert created.binary_data == {"blob": b64("\x00\x01")}
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(
            NS, config_map("twice", data={"k": "1"}, binaryData={"k": b64("1")})
        )
    assert caught.value.status == 422
    assert "duplicate of key present in binaryData" in caught.value.body
    patched = await core.patch_namespaced_config_map(
        "settings", NS, {"data": {"LEVEL": "info", "NEW": "1"}}
    )
    assert patched.data == {"LEVEL": "info", "NEW": "1"}
    await core.delete_namespaced_config_map("settings", NS)
    listed = await core.list_namespaced_config_map(NS)
    assert [c.metadata.name for c in listed.items] == []


async def test_label_selectors_and_deletion_preconditions(core: client.CoreV1Api) -> None:
    for name, owner in (("a", "nexus"), ("b", "other"), ("c", None)):
        labels = {"owner": owner} if owner else {}
        await core.create_namespaced_secret(NS, secret(name, labels, stringData={"k": name}))
    mine = await core.list_namespaced_secret(NS, label_selector="owner=nexus")
    assert [s.metadata.name for s in mine.items] == ["a"]
    typed = await core.list_namespaced_secret(NS, field_selector="type=Opaque")
    assert {s.metadata.name for s in typed.items} == {"a", "b", "c"}
    uid = mine.items[0].metadata.uid
    with pytest.raises(ApiException) as caught:
        await core.delete_namespaced_secret("a", NS, body={"preconditions": {"uid": "other"}})
    assert caught.value.status == 409
    await core.delete_namespaced_secret("a", NS, body={"preconditions": {"uid": uid}})
    left = await core.list_namespaced_secret(NS)
    assert {s.metadata.name for s in left.items} == {"b", "c"}


async def test_watch_config_maps_with_a_selector(core: client.CoreV1Api) -> None:
    listed = await core.list_namespaced_config_map(NS)
    seen: list[tuple[str, str]] = []

    async def follow() -> None:
        stream = watch.Watch().stream(
            core.list_namespaced_config_map,
            NS,
            label_selector="copy=yes",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=5,
        )
        async with stream:
            async for event in stream:
                seen.append((event["type"], event["object"].metadata.name))
                if event["type"] == "DELETED":
                    return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await core.create_namespaced_config_map(NS, config_map("ignored", data={"a": "1"}))
    await core.create_namespaced_config_map(NS, config_map("kept", {"copy": "yes"}, data={}))
    await core.patch_namespaced_config_map("kept", NS, {"data": {"a": "2"}})
    await core.delete_namespaced_config_map("kept", NS)
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "kept"), ("MODIFIED", "kept"), ("DELETED", "kept")]


async def test_a_stopped_shard_starts_again_on_its_port_with_its_objects(tmp_path: Path) -> None:
    async with DevCluster([fast_spec("shard", mode="off")], kubeconfig_dir=tmp_path) as cluster:
        shard = cluster["shard"]
        api = await connect(shard)
        async with api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_secret(NS, secret("kept", stringData={"k": "v"}))
            port = shard.port
            await shard.stop()
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientConnectionError):
                    await session.get(f"http://127.0.0.1:{port}/healthz")
            await shard.start()
            assert shard.port == port
            read = await core.read_namespaced_secret("kept", NS)
            assert read.data == {"k": b64("v")}
