"""The v1.2 contract as the published clients and existing containers speak it.

The bodies are the fixtures in ``tests/contracts/v12`` (the shapes the Python and .NET
clients serialise, and the completions containers post; see its README), sent as they are
to a whole local system on real PostgreSQL, Redis, S3 and the local cluster. Every answer
a client parses must hold only values it knows: ``status`` from its enumeration, the
result fields it reads.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
from harness import Servers
from support.system import System, local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from receiver.settings import ReceiverSection

FIXTURES = Path(__file__).parent.parent / "contracts" / "v12"
STATUSES = orjson.loads((FIXTURES / "statuses.json").read_bytes())
NAMESPACE = "nexus"
ALGORITHM = "forecast"
MOUNT = "/etc/forecast"


def fixture(name: str, **values: str) -> bytes:
    """A fixture's bytes, its ``{placeholders}`` filled in."""
    text = (FIXTURES / f"{name}.json").read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text.encode()


def forecast_template() -> dict[str, Any]:
    return template(
        ALGORITHM,
        runtimeEnvironment={
            "deadlineSeconds": 60,
            "maximumRetries": 0,
            "environmentVariables": [{"name": "MODE", "value": "slow"}],
            "configuration": {"configMap": "forecast-config", "mountPath": MOUNT},
            "allowedSecrets": ["forecast-credentials"],
        },
    )


def job_of(system: System, request_id: str) -> dict[str, Any] | None:
    stored = system.cluster["shard-0"].store.get("jobs", NAMESPACE, request_id)
    return None if stored is None else dict(stored)


async def dispatched(system: System, request_id: str) -> dict[str, Any]:
    for _ in range(400):
        job = job_of(system, request_id)
        if job is not None:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"no Job for {request_id}")


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"]["containers"][0])


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container_of(job)["env"]}


async def post(system: System, path: str, body: bytes, **headers: str) -> tuple[int, Any]:
    sent = {"Content-Type": "application/json", **headers}
    async with system.session.post(path, data=body, headers=sent) as response:
        return response.status, await response.json()


async def submit(system: System, body: bytes) -> str:
    status, answer = await post(
        system, f"{system.url}/algorithm/v1.2/run/{ALGORITHM}", body, **system.headers()
    )
    assert status == 202, (status, answer)
    assert set(answer) == {"requestId"}, answer
    return str(answer["requestId"])


async def complete(system: System, request_id: str, body: bytes, token: str | None) -> Any:
    """A completion as a container posts it (existing v1.2 containers send no token)."""
    path = f"{system.receiver_url}/algorithm/v1.2/complete/{ALGORITHM}/requests/{request_id}"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await post(system, path, body, **headers)


def assert_parseable(answer: dict[str, Any]) -> None:
    """What both clients need of a result: the fields they read, statuses they know."""
    assert set(answer) == set(STATUSES["result-fields"]), answer
    assert answer["status"] in STATUSES["python"], answer
    assert answer["status"] in STATUSES["dotnet"], answer


def assert_carries_the_overrides(job: dict[str, Any]) -> None:
    container = container_of(job)
    env = env_of(job)
    assert env["MODE"] == "fast"  # over the template's
    assert env["MODEL_CONFIG"] == f"{MOUNT}/models/forecast.json"
    assert env["LEVEL"] == "debug"
    assert {"secretRef": {"name": "forecast-credentials"}} in container["envFrom"]
    assert container["args"][-1] == "--max-iterations=10"
    assert container["args"][0].startswith("--sas-uri=")
    assert container["image"] == f"example.io/algorithms/{ALGORITHM}:2.0"
    assert container["resources"]["limits"]["cpu"] == "500m"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert job["spec"]["activeDeadlineSeconds"] == 300
    mount = {"name": "nexus-configuration", "mountPath": MOUNT, "readOnly": True}
    assert container["volumeMounts"] == [mount]
    assert job["spec"]["template"]["spec"]["volumes"] == [
        {"name": "nexus-configuration", "configMap": {"name": "forecast-config"}}
    ]


async def test_the_clients_run_bodies_are_accepted_and_take_effect(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[forecast_template()],
    ) as system:
        tag = f"contract-{uuid.uuid4().hex[:8]}"
        values = {"algorithm": ALGORITHM, "tag": tag}
        plain = {name: await submit(system, fixture(name, **values)) for name in (
            "python-run-plain", "dotnet-run-plain", "python-run-empty-parent",
        )}  # fmt: skip
        for name, request_id in plain.items():
            job = await dispatched(system, request_id)
            assert env_of(job)["MODE"] == "slow", name
            assert "volumeMounts" in container_of(job), name  # the template's, always
        for name in ("python-run-overrides", "dotnet-run-overrides"):
            request_id = await submit(system, fixture(name, **values))
            assert_carries_the_overrides(await dispatched(system, request_id))
        parent = plain["python-run-plain"]
        child = await submit(system, fixture("python-run-child", parent=parent, **values))
        status, metadata = await system.get(
            f"/algorithm/v1.2/metadata/{ALGORITHM}/requests/{child}"
        )
        assert status == 200 and metadata["parent"] == {
            "requestId": parent,
            "algorithmName": ALGORITHM,
        }, metadata
        assert metadata["configurationOverrides"] is None, metadata  # every field was null
        # the bulk route takes the same bodies, item by item
        bodies = [orjson.loads(fixture(name, **values)) for name in (
            "python-run-overrides", "dotnet-run-overrides", "python-run-plain",
        )]  # fmt: skip
        status, bulk, _ = await system.call(
            "POST", f"/algorithm/v1.2/runs/{ALGORITHM}", json={"runs": bodies}
        )
        assert status == 200 and all(set(item) == {"requestId"} for item in bulk["runs"]), bulk
        assert_carries_the_overrides(await dispatched(system, bulk["runs"][1]["requestId"]))
        status, listed = await system.get(f"/algorithm/v1.2/results/{ALGORITHM}/tags/{tag}")
        assert status == 200 and len(listed) == 2, listed  # tagged: one alone, one in bulk
        for answer in listed:
            assert_parseable(answer)
        status, summary = await system.get(
            f"/algorithm/v1.2/results/{ALGORITHM}/tags/{tag}/summary"
        )
        assert status == 200 and set(summary["byStatus"]) <= set(STATUSES["python"]), summary


async def test_the_containers_completions_are_read_back_in_the_v12_vocabulary(
    servers: Servers,
) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[forecast_template()],
        receiver=ReceiverSection(allow_tokenless_completions=True),
    ) as system:
        plain = fixture("python-run-plain", algorithm=ALGORITHM)
        runs = [await submit(system, plain) for _ in range(5)]
        succeeded, failed, older, tokened, shouted = runs
        for request_id in runs:
            await dispatched(system, request_id)
        location = "https://results.example.com/forecast/out.json"

        status, answer = await complete(
            system, succeeded, fixture("container-complete-success", resultUri=location), None
        )
        assert (status, answer) == (200, {"requestId": succeeded, "status": "COMPLETED"})
        result = await system.result(ALGORITHM, succeeded)
        assert_parseable(result)
        assert result["status"] == "COMPLETED" and result["resultUri"] == location, result
        assert result["runErrorMessage"] is None

        status, answer = await complete(system, failed, fixture("container-complete-failure"), None)
        assert (status, answer) == (200, {"requestId": failed, "status": "FAILED"})
        result = await system.result(ALGORITHM, failed)
        assert_parseable(result)
        assert result["status"] == "FAILED" and result["resultUri"] is None, result
        assert "ValueError: horizon must be positive" in result["runErrorMessage"], result

        # containers of v1.1 repeat the request id; another run's id is refused
        other = fixture("container-complete-success-v11", requestId=failed, resultUri=location)
        status, answer = await complete(system, older, other, None)
        assert status == 400 and "requestId" in answer["message"], answer
        assert (await system.result(ALGORITHM, older))["status"] in ("BUFFERED", "RUNNING")
        body = fixture("container-complete-success-v11", requestId=older, resultUri=location)
        status, answer = await complete(system, older, body, None)
        assert (status, answer) == (200, {"requestId": older, "status": "COMPLETED"})

        # the same body with the run's token, as Nexus' own containers send it
        token = env_of(await dispatched(system, tokened))["NEXUS__RUN_TOKEN"]
        body = fixture("container-complete-success", resultUri=location)
        status, answer = await complete(system, tokened, body, token)
        assert (status, answer) == (200, {"requestId": tokened, "status": "COMPLETED"})
        # a repeat changes nothing, and says so in the v1.2 vocabulary
        status, answer = await complete(system, failed, body, None)
        assert (status, answer) == (200, {"requestId": failed, "status": "FAILED"})
        # an id spelt otherwise in the path is the run's, answered as the run's own
        status, answer = await complete(system, shouted.upper(), body, None)
        assert (status, answer) == (200, {"requestId": shouted, "status": "COMPLETED"})
        assert (await system.result(ALGORITHM, shouted))["status"] == "COMPLETED"


async def test_a_run_that_cannot_be_scheduled_is_a_scheduling_timeout(servers: Servers) -> None:
    # the shard refuses the Job (an environment variable without a name): the run fails to
    # be scheduled, which v1.2 clients know as SCHEDULING_TIMEOUT
    refused = template(
        ALGORITHM,
        runtimeEnvironment={
            "deadlineSeconds": 60,
            "maximumRetries": 0,
            "environmentVariables": [{"name": "", "value": "x"}],
        },
    )
    async with local_system(servers, templates=[refused]) as system:
        tag = f"refused-{uuid.uuid4().hex[:8]}"
        body = orjson.loads(fixture("python-run-plain", algorithm=ALGORITHM))
        request_id = await submit(system, orjson.dumps({**body, "tag": tag}))
        answer = await system.wait_for(ALGORITHM, request_id)
        assert_parseable(answer)
        assert answer["status"] == "SCHEDULING_TIMEOUT", answer
        assert "refused the job: 422" in answer["runErrorMessage"], answer
        _, listed = await system.get(f"/algorithm/v1.2/results/{ALGORITHM}/tags/{tag}")
        assert [a["status"] for a in listed] == ["SCHEDULING_TIMEOUT"], listed
        _, metadata = await system.get(
            f"/algorithm/v1.2/metadata/{ALGORITHM}/requests/{request_id}"
        )
        assert metadata["lifecycleStage"] == "SCHEDULING_TIMEOUT", metadata
        status, answer, _ = await system.call(
            "POST", f"/algorithm/v1.2/cancel/{ALGORITHM}/requests/{request_id}", json={}
        )
        assert status == 409 and "SCHEDULING_TIMEOUT" in answer["message"], answer
