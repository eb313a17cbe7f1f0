"""The REST surface through kubernetes-asyncio: verbs, answers, selectors, paging, auth."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from nexus_dev.cluster.emulators import Shard

from .conftest import NS, connect, eventually, job_manifest, trusting


async def test_create_fills_what_the_server_adds(batch: client.BatchV1Api) -> None:
    created = await batch.create_namespaced_job(NS, job_manifest("alpha", backoffLimit=2))
    meta = created.metadata
    assert meta.uid
    assert meta.creation_timestamp
    assert meta.generation == 1
    assert int(meta.resource_version) > 0
    labels = created.spec.template.metadata.labels
    assert labels["controller-uid"] == meta.uid
    assert labels["batch.kubernetes.io/job-name"] == "alpha" == labels["job-name"]
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": meta.uid}
    assert created.spec.backoff_limit == 2
    assert created.spec.completions == 1
    fetched = await batch.read_namespaced_job("alpha", NS)
    assert fetched.metadata.uid == meta.uid
    status = await batch.read_namespaced_job_status("alpha", NS)
    assert status.metadata.name == "alpha"


async def test_create_twice_is_409_already_exists(batch: client.BatchV1Api) -> None:
    await batch.create_namespaced_job(NS, job_manifest("twice"))
    with pytest.raises(ApiException) as caught:
        await batch.create_namespaced_job(NS, job_manifest("twice"))
    assert caught.value.status == 409
    assert '"reason":"AlreadyExists"' in caught.value.body
    assert '"kind":"Status"' in caught.value.body
    assert '"code":409' in caught.value.body


async def test_get_missing_is_404_not_found(batch: client.BatchV1Api) -> None:
    with pytest.raises(ApiException) as caught:
        await batch.read_namespaced_job("nope", NS)
    assert caught.value.status == 404
    assert '"reason":"NotFound"' in caught.value.body
    assert 'jobs.batch \\"nope\\" not found' in caught.value.body


def _exit_codes(operator: str, values: list[int]) -> dict[str, Any]:
    return {
        "rules": [{"action": "FailJob", "onExitCodes": {"operator": operator, "values": values}}]
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda j: j["metadata"].update(name="Not_A_Name"), "metadata.name"),
        (lambda j: j["metadata"].update(name="x" * 64), "metadata.name"),
        (
            lambda j: j["spec"]["template"]["spec"].update(containers=[]),
            "spec.template.spec.containers",
        ),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].pop("image"),
            "spec.template.spec.containers[0].image",
        ),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].pop("name"),
            "spec.template.spec.containers[0].name",
        ),
        (
            lambda j: j["spec"]["template"]["spec"].update(restartPolicy="Always"),
            "spec.template.spec.restartPolicy",
        ),
        (lambda j: j["spec"].update(backoffLimit=-1), "spec.backoffLimit"),
        (lambda j: j["spec"].update(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds"),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].update(
                resources={"limits": {"memory": "lots"}}
            ),
            "spec.template.spec.containers[0].resources.limits[memory]",
        ),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].update(
                resources={"limits": {"memory": "1"}, "requests": {"memory": "1Gi"}}
            ),
            "spec.template.spec.containers[0].resources.requests[memory]",
        ),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].update(
                resources={"limits": {"gpu": "1"}}
            ),
            "spec.template.spec.containers[0].resources.limits[gpu]",
        ),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].update(
                resources={"limits": {"nvidia.com/gpu": "500m"}}
            ),
            "spec.template.spec.containers[0].resources.limits[nvidia.com/gpu]",
        ),
        (
            lambda j: j["spec"]["template"]["spec"]["containers"][0].update(
                resources={"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "1"}}
            ),
            "spec.template.spec.containers[0].resources.requests[nvidia.com/gpu]",
        ),
        (
            lambda j: j["spec"].update(podFailurePolicy=_exit_codes("NotIn", [2, 2])),
            "spec.podFailurePolicy.rules[0].onExitCodes.values[1]",
        ),
        (
            lambda j: j["spec"].update(podFailurePolicy=_exit_codes("NotIn", [3, 2])),
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
        ),
        (
            lambda j: j["spec"].update(podFailurePolicy=_exit_codes("NotIn", list(range(256)))),
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
        ),
    ],
)
async def test_invalid_jobs_are_422_with_causes(
    batch: client.BatchV1Api, change: object, field: str
) -> None:
    manifest = job_manifest("invalid")
    change(manifest)  # type: ignore[operator]
    with pytest.raises(ApiException) as caught:
        await batch.create_namespaced_job(NS, manifest)
    assert caught.value.status == 422
    assert '"reason":"Invalid"' in caught.value.body
    assert f'"field":"{field}"' in caught.value.body


async def test_label_and_field_selectors(batch: client.BatchV1Api) -> None:
    for name, labels in [
        ("a1", {"tier": "gold", "team": "x"}),
        ("a2", {"tier": "silver", "team": "x"}),
        ("a3", {"tier": "bronze"}),
    ]:
        await batch.create_namespaced_job(NS, job_manifest(name, labels=labels))

    async def names(**kwargs: str) -> list[str]:
        listed = await batch.list_namespaced_job(NS, **kwargs)
        return sorted(j.metadata.name for j in listed.items)

    assert await names(label_selector="tier=gold") == ["a1"]
    assert await names(label_selector="tier==gold") == ["a1"]
    assert await names(label_selector="tier!=gold") == ["a2", "a3"]
    assert await names(label_selector="tier in (gold, bronze)") == ["a1", "a3"]
    assert await names(label_selector="tier notin (gold)") == ["a2", "a3"]
    assert await names(label_selector="team") == ["a1", "a2"]
    assert await names(label_selector="!team") == ["a3"]
    assert await names(label_selector="team=x,tier!=gold") == ["a2"]
    assert await names(field_selector="metadata.name=a2") == ["a2"]
    assert await names(field_selector="metadata.name!=a2") == ["a1", "a3"]
    assert await names(field_selector=f"metadata.namespace={NS}") == ["a1", "a2", "a3"]
    with pytest.raises(ApiException) as caught:
        await names(label_selector="tier in gold")
    assert caught.value.status == 400
    with pytest.raises(ApiException) as caught:
        await names(field_selector="spec.parallelism=1")
    assert caught.value.status == 400
    assert "field label not supported" in caught.value.body


async def test_all_namespaces_paging_and_list_version(batch: client.BatchV1Api) -> None:
    for i in range(5):
        await batch.create_namespaced_job(NS, job_manifest(f"p{i}"))
    await batch.create_namespaced_job("other", job_manifest("elsewhere"))
    everything = await batch.list_job_for_all_namespaces()
    assert len(everything.items) == 6
    assert int(everything.metadata.resource_version) >= 6
    seen: list[str] = []
    token = None
    while True:
        page = await batch.list_namespaced_job(NS, limit=2, _continue=token)
        seen += [j.metadata.name for j in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert len(page.items) == 2
    assert seen == [f"p{i}" for i in range(5)]
    only_other = await batch.list_namespaced_job("other", resource_version="0")
    assert [j.metadata.name for j in only_other.items] == ["elsewhere"]


async def test_pods_logs_and_pod_delete(batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    await batch.create_namespaced_job(NS, job_manifest("logged"))

    async def succeeded() -> object:
        pods = await core.list_namespaced_pod(NS, label_selector="job-name=logged")
        done = [p for p in pods.items if p.status.phase == "Succeeded"]
        return done[0] if done else None

    pod = await eventually(succeeded)
    assert pod.metadata.name.startswith("logged-")
    assert len(pod.metadata.name) == len("logged-") + 5
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Job", "logged", True)
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Completed", 0)
    assert terminated.started_at
    assert terminated.finished_at
    assert pod.status.start_time
    assert {c.type for c in pod.status.conditions} >= {"Ready", "PodScheduled", "Initialized"}
    everywhere = await core.list_pod_for_all_namespaces(field_selector="status.phase=Succeeded")
    assert pod.metadata.name in [p.metadata.name for p in everywhere.items]
    log = await core.read_namespaced_pod_log(pod.metadata.name, NS)
    assert isinstance(log, str)
    await core.delete_namespaced_pod(pod.metadata.name, NS)
    with pytest.raises(ApiException) as caught:
        await core.read_namespaced_pod(pod.metadata.name, NS)
    assert caught.value.status == 404


async def test_events_of_a_job(batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    await batch.create_namespaced_job(NS, job_manifest("told"))

    async def completed() -> list[tuple[str, str]]:
        listed = await core.list_namespaced_event(NS)
        reasons = [(e.involved_object.kind, e.reason) for e in listed.items]
        return reasons if ("Job", "Completed") in reasons else []

    reasons = await eventually(completed)
    assert ("Job", "SuccessfulCreate") in reasons
    for reason in ("Scheduled", "Pulled", "Created", "Started"):
        assert ("Pod", reason) in reasons
    events = await core.list_event_for_all_namespaces(field_selector="reason=SuccessfulCreate")
    event = events.items[0]
    assert event.involved_object.name == "told"
    assert event.involved_object.uid
    assert event.source.component == "job-controller"
    assert event.type == "Normal"
    assert event.count == 1
    assert event.first_timestamp
    assert event.last_timestamp


async def test_discovery_namespace_and_version(api: client.ApiClient) -> None:
    version = await client.VersionApi(api).get_code()
    assert version.major == "1"
    groups = await client.ApisApi(api).get_api_versions()
    assert {"batch", "science.sneaksanddata.com"} <= {g.name for g in groups.groups}
    resources = await client.BatchV1Api(api).get_api_resources()
    assert "jobs" in [r.name for r in resources.resources]
    namespace = await client.CoreV1Api(api).read_namespace("anything")
    assert namespace.status.phase == "Active"


async def test_wrong_token_is_401(shard: Shard) -> None:
    async with aiohttp.ClientSession(connector=trusting(shard)) as session:
        url = f"{shard.url}/apis/batch/v1/namespaces/{NS}/jobs"
        async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
            assert (await response.json())["reason"] == "Unauthorized"
        async with session.get(url) as response:
            assert response.status == 401
    api = await connect(shard)
    async with api:
        api.configuration.api_key["BearerToken"] = "Bearer wrong"
        with pytest.raises(ApiException) as caught:
            await client.BatchV1Api(api).list_namespaced_job(NS)
        assert caught.value.status == 401
