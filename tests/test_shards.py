"""The shard client against the local Kubernetes API emulator (and, for answers the
emulator never gives, a tiny stand-in server): statuses, deletion, paging, watches."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from kubernetes_asyncio import config as kube_config
from support.standin import stand_in_shard

from nexus.core import shards
from nexus.core.errors import ShardRejected, ShardThrottled, ShardUnavailable
from nexus.core.shards import (
    CONFIG_MAPS,
    JOBS,
    PODS,
    SECRETS,
    TEMPLATES,
    Resource,
    ResourceExpired,
    ShardClient,
    WatchEvent,
    created_uid,
    open_shards,
)
from nexus_dev.cluster.emulators import DevCluster, ShardSpec
from nexus_dev.cluster.fairness import Limits
from nexus_dev.cluster.jobcontroller import JobControllerSettings
from nexus_dev.cluster.kubelet import KubeletSettings
from nexus_dev.cluster.simulation import SimulationSettings
from nexus_dev.cluster.watchstreams import WatchSettings

NS = "nexus"


def spec(name: str = "shard", **changes: Any) -> ShardSpec:
    """An emulated shard whose clocks run fast enough for tests."""
    base = ShardSpec(
        name=name,
        namespace=NS,
        events=False,
        simulation=SimulationSettings(duration="fixed:0.01", request_timeout=2.0),
        kubelet=KubeletSettings(image_pull_backoff=0.2),
        jobs=JobControllerSettings(retry_backoff=0.01, retry_backoff_max=0.05),
        watch=WatchSettings(bookmark_interval=60),
    )
    return dataclasses.replace(base, **changes)


def job(
    name: str, *, hang: bool = False, labels: dict[str, str] | None = None, grace: int = 0
) -> bytes:
    container: dict[str, Any] = {"name": name[:63], "image": "algorithms/test:1.0"}
    if hang:
        container["env"] = [{"name": "NEXUS_DEVCLUSTER_FAULT", "value": "hang"}]
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": grace,
                    "containers": [container],
                }
            },
        },
    }
    return orjson.dumps(manifest)


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.02)


async def collect(stream: AsyncIterator[WatchEvent], timeout: float = 5) -> list[WatchEvent]:
    async def drain() -> list[WatchEvent]:
        return [event async for event in stream]

    return await asyncio.wait_for(drain(), timeout)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[DevCluster]:
    async with DevCluster([spec()], kubeconfig_dir=tmp_path) as running:
        yield running


@pytest_asyncio.fixture
async def client(cluster: DevCluster) -> AsyncIterator[ShardClient]:
    shard = cluster["shard"]
    opened = await ShardClient.from_kubeconfig("shard", shard.kubeconfig, NS, timeout=5)
    try:
        yield opened
    finally:
        await opened.close()


async def pods_of(client: ShardClient, name: str) -> list[dict[str, Any]]:
    return (await client.list(PODS, label_selector=f"job-name={name}")).items


# -- creating ------------------------------------------------------------------------------


async def test_create_answers_201_with_the_uid(client: ShardClient) -> None:
    result = await client.create_job(job("run-1"))
    assert (result.status, result.created) == (201, True)
    stored = await client.get(JOBS, "run-1")
    assert stored is not None
    assert result.uid == stored["metadata"]["uid"]
    assert stored["metadata"]["namespace"] == NS


async def test_creating_the_same_job_twice_is_harmless(client: ShardClient) -> None:
    first = await client.create_job(job("run-1"))
    again = await client.create_job(job("run-1"))
    assert again.status == 409
    assert again.created  # the Job exists: that is what the caller wanted
    assert again.uid is None
    assert "already exists" in again.message
    assert len((await client.list(JOBS)).items) == 1
    assert (await client.get(JOBS, "run-1") or {})["metadata"]["uid"] == first.uid


async def test_an_invalid_job_is_422_with_the_servers_message(client: ShardClient) -> None:
    result = await client.create_job(job("Not_A_Valid_Name"))
    assert result.status == 422
    assert not result.created
    assert "Not_A_Valid_Name" in result.message
    assert "metadata.name" in result.message or "RFC 1123" in result.message
    assert await client.get(JOBS, "Not_A_Valid_Name") is None
    garbage = await client.create_job(b"{not json")
    assert garbage.status == 400
    assert not garbage.created


async def test_over_the_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    limits = Limits(mutating_rate=0.5, mutating_burst=2, read_rate=0.5, read_burst=2)
    async with DevCluster([spec(limits=limits)], kubeconfig_dir=tmp_path) as cluster:
        client = await ShardClient.from_kubeconfig("shard", cluster["shard"].kubeconfig, NS)
        try:
            results = [await client.create_job(job(f"run-{i}")) for i in range(4)]
            assert [r.status for r in results] == [201, 201, 429, 429]
            throttled = results[2]
            assert not throttled.created
            assert throttled.retry_after == 1.0
            assert "Too many requests" in throttled.message
            assert await client.get(JOBS, "run-0") is not None
            assert await client.get(JOBS, "run-1") is not None
            with pytest.raises(ShardThrottled) as caught:  # reads: over their own limit
                await client.get(JOBS, "run-2")
            assert caught.value.retry_after == 1.0
            with pytest.raises(ShardThrottled):
                await client.delete_job("run-0")
        finally:
            await client.close()


# -- deleting ------------------------------------------------------------------------------


async def deletion(client: ShardClient, name: str, policy: str) -> list[tuple[str, str, str]]:
    """Delete a running Job with ``policy``; ``(kind, type, detail)`` of what followed, in
    resourceVersion order (one counter for all kinds), for a second."""
    await client.create_job(job(name, hang=True, grace=1))

    async def running() -> bool:
        return [p["status"].get("phase") for p in await pods_of(client, name)] == ["Running"]

    await eventually(running)
    version = (await client.list(JOBS)).resource_version
    assert await client.delete_job(name, policy)
    jobs, pods = await asyncio.gather(
        collect(client.watch(JOBS, version, timeout_seconds=1)),
        collect(client.watch(PODS, version, timeout_seconds=1)),
    )
    changes = []
    for kind, events in (("job", jobs), ("pod", pods)):
        for event in events:
            meta = event.object["metadata"]
            detail = "deleting" if meta.get("deletionTimestamp") else ""
            if kind == "job" and "foregroundDeletion" in meta.get("finalizers", []):
                detail += "+foreground"
            changes.append((int(meta["resourceVersion"]), kind, event.type, detail))
    return [(kind, kind_type, detail) for _, kind, kind_type, detail in sorted(changes)]


async def test_delete_in_the_background_removes_job_then_pods(client: ShardClient) -> None:
    changes = await deletion(client, "bg", "Background")
    deleted = [kind for kind, event, _ in changes if event == "DELETED"]
    assert deleted == ["job", "pod"]  # the Job at once, its pod after
    assert ("job", "MODIFIED", "deleting+foreground") not in changes
    assert await client.get(JOBS, "bg") is None
    assert await pods_of(client, "bg") == []


async def test_delete_in_the_foreground_waits_for_the_pods(client: ShardClient) -> None:
    changes = await deletion(client, "fg", "Foreground")
    assert changes[0] == ("job", "MODIFIED", "deleting+foreground")
    deleted = [kind for kind, event, _ in changes if event == "DELETED"]
    assert deleted == ["pod", "job"]  # the Job only once its pod is gone
    assert await client.get(JOBS, "fg") is None
    assert await pods_of(client, "fg") == []


async def test_delete_orphaning_keeps_the_pods(client: ShardClient) -> None:
    changes = await deletion(client, "orphan", "Orphan")
    assert [kind for kind, event, _ in changes if event == "DELETED"] == ["job"]
    assert await client.get(JOBS, "orphan") is None
    pods = await pods_of(client, "orphan")
    assert len(pods) == 1
    assert pods[0]["status"]["phase"] == "Running"
    assert not pods[0]["metadata"].get("ownerReferences")


async def test_delete_of_a_missing_job_says_so(client: ShardClient) -> None:
    assert not await client.delete_job("never-created")
    with pytest.raises(ShardRejected) as caught:
        await client.delete_job("x", "Sideways")
    assert caught.value.status == 422


# -- reading -------------------------------------------------------------------------------


async def test_get_of_a_missing_object_is_none(client: ShardClient) -> None:
    assert await client.get(JOBS, "nope") is None
    assert await client.get(TEMPLATES, "nope") is None
    assert await client.get(JOBS, "nope", namespace="elsewhere") is None


async def test_list_pages_and_list_all(client: ShardClient) -> None:
    for i in range(7):
        await client.create_job(job(f"run-{i}", labels={"batch": "a" if i < 5 else "b"}))

    async def all_finished() -> bool:  # then nothing changes: one resourceVersion for all lists
        jobs = (await client.list(JOBS)).items
        return len(jobs) == 7 and all(j.get("status", {}).get("succeeded") for j in jobs)

    await eventually(all_finished)
    first = await client.list(JOBS, limit=3)
    assert [j["metadata"]["name"] for j in first.items] == ["run-0", "run-1", "run-2"]
    assert first.next_page
    assert first.resource_version
    second = await client.list(JOBS, limit=3, page=first.next_page)
    assert [j["metadata"]["name"] for j in second.items] == ["run-3", "run-4", "run-5"]
    everything = await client.list_all(JOBS, limit=3)
    assert [j["metadata"]["name"] for j in everything.items] == [f"run-{i}" for i in range(7)]
    assert everything.resource_version == first.resource_version
    assert everything.next_page is None
    selected = await client.list_all(JOBS, label_selector="batch=b", limit=1)
    assert [j["metadata"]["name"] for j in selected.items] == ["run-5", "run-6"]
    assert (await client.list(JOBS, namespace="elsewhere")).items == []
    assert (await client.list(JOBS, field_selector="metadata.name=run-4")).items[0]["metadata"][
        "name"
    ] == "run-4"


async def test_a_resource_the_server_lacks_is_rejected(client: ShardClient) -> None:
    widgets = Resource("example.com", "v1", "widgets")
    with pytest.raises(ShardRejected) as caught:
        await client.list(widgets)
    assert caught.value.status == 404
    with pytest.raises(ShardRejected) as caught:
        await collect(client.watch(widgets, "1", timeout_seconds=1))
    assert caught.value.status == 404


# -- writes of objects (the configuration copies) ---------------------------------------


def _template_copy(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "science.sneaksanddata.com/v1",
        "kind": "NexusAlgorithmTemplate",
        "metadata": {"name": name, "labels": {"owner": "test"}},
        "spec": {"container": {"image": image}},
    }


async def test_objects_are_created_replaced_and_deleted_with_outcomes(
    client: ShardClient,
) -> None:
    created = await client.create_object(TEMPLATES, _template_copy("t", "a"))
    assert created.done and created.status == 201
    assert created.object is not None and created.object["metadata"]["uid"]
    again = await client.create_object(TEMPLATES, _template_copy("t", "b"))
    assert (again.status, again.done) == (409, False) and "already exists" in again.message

    stored = created.object
    changed = {**stored, "spec": {"container": {"image": "b"}}}
    replaced = await client.replace_object(TEMPLATES, changed)
    assert replaced.done and replaced.object is not None
    assert replaced.object["spec"]["container"]["image"] == "b"
    stale = await client.replace_object(TEMPLATES, changed)  # its resourceVersion is old now
    assert stale.status == 409
    missing = await client.replace_object(TEMPLATES, _template_copy("nothing", "x"))
    assert missing.status == 404

    wrong_uid = await client.delete_object(TEMPLATES, "t", uid="another-object")
    assert wrong_uid.status == 409
    assert await client.get(TEMPLATES, "t") is not None
    deleted = await client.delete_object(TEMPLATES, "t", uid=stored["metadata"]["uid"])
    assert deleted.done
    assert (await client.delete_object(TEMPLATES, "t")).status == 404


async def test_secrets_and_config_maps_are_written_in_a_given_namespace(
    client: ShardClient,
) -> None:
    body = {"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}}
    written = await client.create_object(SECRETS, body, namespace="elsewhere")
    assert written.done
    assert await client.get(SECRETS, "s") is None  # not in the client's own namespace
    found = await client.get(SECRETS, "s", namespace="elsewhere")
    assert found is not None and found["data"] == {"k": "dg=="}
    invalid = await client.create_object(CONFIG_MAPS, {"metadata": {"name": "Not Valid"}})
    assert invalid.status == 422 and "Invalid value" in invalid.message
    assert (await client.create_object(CONFIG_MAPS, {"metadata": {"name": "c"}})).done
    listed = await client.list(CONFIG_MAPS)
    assert [c["metadata"]["name"] for c in listed.items] == ["c"]


async def test_writes_raise_for_what_is_not_an_answer(
    stand_in: tuple[Path, dict[str, Any]],
) -> None:
    path, behaviour = stand_in
    client = await ShardClient.from_kubeconfig("s", path, NS)
    try:
        behaviour["POST"] = (503, b'{"kind": "Status", "message": "overloaded"}')
        with pytest.raises(ShardUnavailable, match="overloaded"):
            await client.create_object(SECRETS, {"metadata": {"name": "s"}})
        behaviour["PUT"] = (403, b'{"kind": "Status", "message": "forbidden"}')
        with pytest.raises(ShardRejected) as caught:
            await client.replace_object(SECRETS, {"metadata": {"name": "s"}})
        assert caught.value.status == 403
        behaviour["DELETE"] = (429, b"{}")
        with pytest.raises(ShardThrottled):
            await client.delete_object(SECRETS, "s")
    finally:
        await client.close()


# -- watching ------------------------------------------------------------------------------


async def test_watch_yields_changes_after_a_version(client: ShardClient) -> None:
    await client.create_job(job("before"))
    version = (await client.list(JOBS)).resource_version
    await client.create_job(job("after"))
    await client.delete_job("before", "Background")
    events = await collect(client.watch(JOBS, version, timeout_seconds=1))
    seen = [(e.type, e.object["metadata"]["name"]) for e in events if e.type != "BOOKMARK"]
    assert ("ADDED", "after") in seen
    assert ("DELETED", "before") in seen
    assert ("ADDED", "before") not in seen  # older than the version
    assert all(int(e.object["metadata"]["resourceVersion"]) > int(version) for e in events)


async def test_watch_sees_changes_made_while_it_runs(client: ShardClient) -> None:
    version = (await client.list(JOBS)).resource_version
    stream = client.watch(JOBS, version, label_selector="pick=me", timeout_seconds=5)
    try:
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.1)
        await client.create_job(job("ignored"))
        await client.create_job(job("picked", labels={"pick": "me"}))
        event = await asyncio.wait_for(waiting, 5)
        assert (event.type, event.object["metadata"]["name"]) == ("ADDED", "picked")
    finally:
        await stream.aclose()


async def test_watch_from_a_too_old_version_raises_expired(tmp_path: Path) -> None:
    quiet = spec(history_size=3, mode="off")  # no kubelet: nothing changes but our creates
    async with DevCluster([quiet], kubeconfig_dir=tmp_path) as cluster:
        client = await ShardClient.from_kubeconfig("shard", cluster["shard"].kubeconfig, NS)
        try:
            old = (await client.list(JOBS)).resource_version
            for i in range(5):
                await client.create_job(job(f"run-{i}"))
            with pytest.raises(ResourceExpired):
                await collect(client.watch(JOBS, old, timeout_seconds=1))
            recent = (await client.list(JOBS)).resource_version
            assert await collect(client.watch(JOBS, recent, timeout_seconds=1)) == []
        finally:
            await client.close()


# -- the client itself -----------------------------------------------------------------------


async def test_proxy_settings_of_the_environment_are_ignored(
    cluster: DevCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a proxy that does not exist: a client that looked at the environment would fail
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = await ShardClient.from_kubeconfig("shard", cluster["shard"].kubeconfig, NS)
    try:
        assert (await client.create_job(job("direct"))).status == 201
        assert await client.get(JOBS, "direct") is not None
        assert (await client.list(JOBS)).items
    finally:
        await client.close()


async def test_an_unreachable_shard_is_unavailable(cluster: DevCluster) -> None:
    shard = cluster["shard"]
    client = await ShardClient.from_kubeconfig("shard", shard.kubeconfig, NS, timeout=2)
    try:
        await shard.stop()
        with pytest.raises(ShardUnavailable):
            await client.create_job(job("x"))
        with pytest.raises(ShardUnavailable):
            await client.get(JOBS, "x")
        with pytest.raises(ShardUnavailable):
            await client.list_all(JOBS)
        with pytest.raises(ShardUnavailable):
            await collect(client.watch(JOBS, "1", timeout_seconds=1))
    finally:
        await client.close()


async def test_a_wrong_token_is_rejected(cluster: DevCluster, tmp_path: Path) -> None:
    config = yaml.safe_load(cluster["shard"].kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "wrong"
    path = tmp_path / "wrong.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    client = await ShardClient.from_kubeconfig("wrong", path, NS)
    try:
        with pytest.raises(ShardRejected) as caught:
            await client.get(JOBS, "x")
        assert caught.value.status == 401
        assert (await client.create_job(job("x"))).status == 401
    finally:
        await client.close()


async def test_open_shards_opens_one_client_per_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a kubeconfig")
    shards = [spec("shard-a"), spec("shard-b")]
    async with DevCluster(shards, kubeconfig_dir=tmp_path) as cluster:
        clients = await open_shards(tmp_path, NS, timeout=5)
        try:
            assert sorted(clients) == ["shard-a", "shard-b"]
            assert (await clients["shard-a"].create_job(job("only-on-a"))).status == 201
            assert await clients["shard-b"].get(JOBS, "only-on-a") is None
            assert await clients["shard-a"].get(JOBS, "only-on-a") is not None
            assert clients["shard-b"].name == "shard-b"
            assert cluster["shard-a"].store.count("jobs") == 1
        finally:
            for opened in clients.values():
                await opened.close()
    assert await open_shards(tmp_path / "empty", NS, timeout=5) == {}


async def test_open_shards_closes_what_it_opened_on_failure(tmp_path: Path) -> None:
    async with DevCluster([spec("shard-a")], kubeconfig_dir=tmp_path):
        (tmp_path / "shard-z.kubeconfig").write_text("clusters: [not, a, kubeconfig")
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the loader raises
            await open_shards(tmp_path, NS, timeout=5)
        # nothing left open: ResourceWarning would fail the test


# -- answers the emulator never gives ---------------------------------------------------------


@pytest_asyncio.fixture
async def stand_in(tmp_path: Path) -> AsyncIterator[tuple[Path, dict[str, Any]]]:
    """A server answering what the test puts in ``behaviour``, and its kubeconfig."""
    behaviour: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            response = web.StreamResponse()
            await response.prepare(request)
            stream = behaviour["watch"]
            for chunk in [stream] if isinstance(stream, bytes) else stream:
                await response.write(chunk)
                await asyncio.sleep(0.01)  # each chunk reaches the client on its own
            return response
        status, body, *headers = behaviour[request.method]
        return web.Response(
            status=status, body=body, content_type="application/json", headers=dict(*headers)
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with stand_in_shard(app, tmp_path) as path:
        yield path, behaviour


PLUGIN = """
import json, pathlib, sys, datetime
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": f"token-{n}",
                             "expirationTimestamp": soon.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""


async def test_an_exec_plugins_token_is_loaded_again_before_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exec plugin (EKS, GKE, OIDC helpers) hands out tokens that expire within
    minutes: the client asks it again, or every call would soon be refused."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "Job", "metadata": {"name": "x", "uid": "u"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with stand_in_shard(app, tmp_path) as path:
        config = yaml.safe_load(path.read_text())
        (tmp_path / "plugin.py").write_text(PLUGIN)
        config["users"][0]["user"] = {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(tmp_path / "plugin.py"), str(tmp_path / "count")],
                "interactiveMode": "Never",
            }
        }
        path.write_text(yaml.safe_dump(config))
        client = await ShardClient.from_kubeconfig("s", path, NS)
        try:
            await client.get(JOBS, "x")
            assert (await client.create_job(job("x"))).created  # the lean path too
            assert (await client.create_job(job("x"))).created  # its headers made once
            # the token expires within the skew kubernetes-asyncio allows: asked again
            monkeypatch.setattr(shards, "CREDENTIALS_CHECK", 0.0)
            await client.get(JOBS, "x")
            assert (await client.create_job(job("x"))).created
        finally:
            await client.close()
    assert seen == [
        "Bearer token-1", "Bearer token-1", "Bearer token-1", "Bearer token-2", "Bearer token-3"
    ]  # fmt: skip


async def test_credentials_that_cannot_be_loaded_make_the_shard_unavailable(
    stand_in: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = stand_in
    client = await ShardClient.from_kubeconfig("s", path, NS)
    try:

        async def unreadable(*args: Any, **kwargs: Any) -> None:
            raise kube_config.ConfigException("Token file exists but empty.")

        monkeypatch.setattr(client._api, "call_api", unreadable)
        with pytest.raises(ShardUnavailable, match="Token file exists but empty"):
            await client.get(JOBS, "x")
    finally:
        await client.close()


async def test_server_errors(stand_in: tuple[Path, dict[str, Any]]) -> None:
    path, behaviour = stand_in
    client = await ShardClient.from_kubeconfig("s", path, NS)
    try:
        failure = b'{"kind": "Status", "message": "etcdserver: request timed out"}'
        behaviour["POST"] = (503, failure)
        result = await client.create_job(job("x"))
        assert (result.status, result.created) == (503, False)
        assert result.message == "etcdserver: request timed out"
        behaviour["GET"] = (500, failure)
        with pytest.raises(ShardUnavailable, match="etcdserver"):
            await client.get(JOBS, "x")
        behaviour["GET"] = (200, b"<html>a proxy's error page</html>")
        with pytest.raises(ShardUnavailable):
            await client.get(JOBS, "x")
        behaviour["POST"] = (201, b"not json")
        assert (await client.create_job(job("x"))).created
    finally:
        await client.close()


async def test_a_429_carries_the_servers_retry_after(stand_in: tuple[Path, dict[str, Any]]) -> None:
    path, behaviour = stand_in
    client = await ShardClient.from_kubeconfig("s", path, NS)
    try:
        busy = b'{"kind": "Status", "message": "too many requests"}'
        behaviour["POST"] = (429, busy, {"Retry-After": "7"})
        result = await client.create_job(job("x"))
        assert (result.status, result.retry_after) == (429, 7.0)
        behaviour["DELETE"] = (429, busy, {"Retry-After": "7"})
        with pytest.raises(ShardThrottled) as caught:
            await client.delete_job("x")
        assert caught.value.retry_after == 7.0
        # what is not a number of seconds waits 1 s; what is more waits at most a minute
        for said, waited in (("inf", 60.0), ("1e12", 60.0), ("nan", 1.0), ("-5", 0.0),
                             ("Wed, 21 Oct 2026 07:28:00 GMT", 1.0)):  # fmt: skip
            behaviour["POST"] = (429, busy, {"Retry-After": said})
            result = await client.create_job(job("x"))
            assert (result.status, result.retry_after) == (429, waited), said
        behaviour["DELETE"] = (403, b"forbidden\x00 by policy")  # not a Status: raw text
        with pytest.raises(ShardRejected) as refused:
            await client.delete_job("x")
        assert refused.value.reason == "forbidden\ufffd by policy"
    finally:
        await client.close()


async def test_a_broken_watch_stream_is_unavailable(stand_in: tuple[Path, dict[str, Any]]) -> None:
    path, behaviour = stand_in
    client = await ShardClient.from_kubeconfig("s", path, NS)
    try:
        added = {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}}
        behaviour["watch"] = orjson.dumps(added) + b'\n{"type": "MODIFIED", "obj'
        stream = client.watch(JOBS, "1", timeout_seconds=1)
        first = await asyncio.wait_for(anext(stream), 5)
        assert first.object["metadata"]["name"] == "a"
        with pytest.raises(ShardUnavailable, match="broken event"):
            await asyncio.wait_for(anext(stream), 5)
        behaviour["watch"] = b'{"kind": "Status", "message": "not a stream"}\n'
        with pytest.raises(ShardUnavailable, match="not an event"):
            await collect(client.watch(JOBS, "1", timeout_seconds=1))
        error = {"type": "ERROR", "object": {"code": 500, "message": "internal error"}}
        behaviour["watch"] = orjson.dumps(error) + b"\n"
        with pytest.raises(ShardUnavailable, match="internal error"):
            await collect(client.watch(JOBS, "1", timeout_seconds=1))
    finally:
        await client.close()


async def test_watch_events_are_whole_however_the_stream_is_cut_and_sifted_by_status(
    stand_in: tuple[Path, dict[str, Any]],
) -> None:
    path, behaviour = stand_in
    client = await ShardClient.from_kubeconfig("s", path, NS)
    try:
        events: list[dict[str, Any]] = [
            {
                "type": "ADDED",
                "object": {
                    "metadata": {"name": f"j{i}", "resourceVersion": str(i)},
                    "spec": {"n": i},
                    "status": {"i": i},
                },
            }
            for i in range(6)
        ]
        events[3]["object"]["spec"]["data"] = "x" * 300_000  # spans many chunks
        stream = b"\n".join(orjson.dumps(event) for event in events) + b"\n\r\n"
        cuts = [0, 7, 8, 40, 41, len(stream) // 3, len(stream) - 30, len(stream) - 1, len(stream)]
        behaviour["watch"] = [stream[a:b] for a, b in itertools.pairwise(cuts)]
        got = await collect(client.watch(JOBS, "1", timeout_seconds=1))
        assert [event.object for event in got] == [event["object"] for event in events]

        sifted: list[tuple[str, dict[str, Any]]] = []

        def sift(kind: str, status: dict[str, Any]) -> bool:
            sifted.append((kind, status))
            return status["i"] not in (1, 3)

        got = await collect(client.watch(JOBS, "1", timeout_seconds=1, sift=sift))
        assert [event.object for event in got] == [
            {"metadata": event["object"]["metadata"], "status": event["object"]["status"]}
            for event in events
            if event["object"]["status"]["i"] not in (1, 3)
        ]  # without their spec
        assert sifted == [("ADDED", {"i": i}) for i in range(6)]  # each event once

        # a BOOKMARK and an ERROR are always read, whatever the sift says
        bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
        behaviour["watch"] = [orjson.dumps(events[0]) + b"\n", orjson.dumps(bookmark) + b"\n"]
        got = await collect(client.watch(JOBS, "1", timeout_seconds=1, sift=lambda *_: False))
        assert [(event.type, event.object) for event in got] == [("BOOKMARK", bookmark["object"])]
        error = {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}
        behaviour["watch"] = [orjson.dumps(events[0]) + b"\n", orjson.dumps(error) + b"\n"]
        with pytest.raises(ResourceExpired):
            await collect(client.watch(JOBS, "1", timeout_seconds=1, sift=lambda *_: False))
    finally:
        await client.close()


def test_a_created_objects_uid_is_read_from_its_top_level_metadata_only() -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "r", "namespace": "n", "uid": "top-1", "labels": {"a": "b"}},
        "spec": {"template": {"metadata": {"annotations": {"uid": "annotation"}}}},
        "status": {},
    }
    assert created_uid(orjson.dumps(job)) == "top-1"
    assert created_uid(json.dumps(job, indent=2).encode()) == "top-1"
    spec_first = {"spec": job["spec"], "metadata": job["metadata"], "kind": "Job"}
    assert created_uid(orjson.dumps(spec_first)) == "top-1"  # parsed whole
    no_uid = {**job, "metadata": {"name": "r", "annotations": {"spec": "x"}}}
    assert created_uid(orjson.dumps(no_uid)) is None
    escaped = {**job, "metadata": {"name": "r", "uid": 'a"b'}}
    assert created_uid(orjson.dumps(escaped)) == 'a"b'  # parsed whole
    assert created_uid(b"{not json") is None
    assert created_uid(b"[]") is None
