"""Clients and containers built for the Go Nexus, against the whole local system.

The request, cancellation and completion bodies are the fixtures in tests/fixtures/go-v1
(the shapes the Go SDK and the Go model structs write); every answer is checked for what
the Go SDK's generated client decodes: the field names, strings where it reads strings
(never ``null``), the status codes and content types it switches on.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from harness import Servers
from support.system import NAMESPACE, SIGNING_KEY, System, local_system, template

from nexus.core.signing import Signer
from nexus.scheduler import goapi
from nexus.scheduler.goapi import WITHHELD
from nexus_dev.cluster.emulators import ShardSpec

FIXTURES = Path(__file__).parent.parent / "fixtures" / "go-v1"
V1 = "/algorithm/v1"
MAYBE_FAIL = ("python", "-m", "nexus_sdk.examples", "maybe-fail")
RESULT_FIELDS = {"requestId", "status", "resultUri", "runErrorMessage"}
ALLOWING_SECRET = {"deadlineSeconds": 60, "maximumRetries": 0, "allowedSecrets": ["go-credentials"]}
VALID = {"algorithmParameters": {"x": 1}}
TERMINAL = {"COMPLETED", "FAILED", "SCHEDULING_FAILED", "DEADLINE_EXCEEDED", "CANCELLED"}


def fixture(name: str) -> dict[str, Any]:
    return dict(orjson.loads((FIXTURES / name).read_bytes()))


async def submit_v1(system: System, algorithm: str, body: dict[str, Any], query: str = "") -> str:
    status, answer, headers = await system.call("POST", f"{V1}/run/{algorithm}{query}", json=body)
    assert status == 202, (status, answer)
    assert headers["Content-Type"].startswith("application/json")
    assert all(isinstance(v, str) for v in answer.values()), answer  # a map of strings
    return str(answer["requestId"])


async def result_v1(system: System, algorithm: str, request_id: str) -> dict[str, Any]:
    status, answer, _ = await system.call("GET", f"{V1}/results/{algorithm}/requests/{request_id}")
    assert status == 200, (status, answer)
    assert set(answer) == RESULT_FIELDS and all(isinstance(v, str) for v in answer.values())
    return dict(answer)


async def wait_v1(
    system: System, algorithm: str, request_id: str, *statuses: str, timeout: float = 30.0
) -> dict[str, Any]:
    wanted = set(statuses) or TERMINAL
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await result_v1(system, algorithm, request_id)
        if answer["status"] in wanted:
            return answer
        assert asyncio.get_running_loop().time() < deadline, (answer, wanted)
        await asyncio.sleep(0.05)


async def metadata_v1(system: System, algorithm: str, request_id: str) -> dict[str, Any]:
    status, answer, _ = await system.call("GET", f"{V1}/metadata/{algorithm}/requests/{request_id}")
    assert status == 200, (status, answer)
    return dict(answer)


def job_of(system: System, request_id: str) -> dict[str, Any] | None:
    stored = system.cluster["shard-0"].store.get("jobs", NAMESPACE, request_id)
    return None if stored is None else dict(stored)


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"]["containers"][0])


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_of(job)["env"] if "value" in e}


async def test_a_go_client_runs_with_overrides_and_reads_in_the_go_vocabulary(
    servers: Servers,
) -> None:
    """Submit with overrides (the Go SDK's shape), the Job carries them, the run completes
    and its result, metadata, payload and Job are read through v1; a failure and a
    cancellation are read back; cancelling a finished run changes nothing."""
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="process")],
        templates=[template("echo"), template("maybe-fail", command=MAYBE_FAIL)],
        workgroups=[("default", "shard-0"), ("second", "shard-0")],
    ) as system:
        body = fixture("run-sdk.json")
        request_id = await submit_v1(system, "echo", body)
        # durable before the 202: read at once, through either API
        first = await result_v1(system, "echo", request_id)
        assert first["status"] in {"BUFFERED", "RUNNING", "COMPLETED"}, first
        done = await wait_v1(system, "echo", request_id)
        assert done["status"] == "COMPLETED" and done["runErrorMessage"] == "", done
        async with system.session.get(done["resultUri"]) as response:
            assert response.status == 200
            assert await response.json() == body["algorithmParameters"]
        assert (await system.result("echo", request_id))["status"] == "COMPLETED"

        job = job_of(system, request_id)
        assert job is not None
        container = container_of(job)
        assert container["image"] == "example.io/algorithms/echo:2.0"
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}
        assert job["spec"]["activeDeadlineSeconds"] == 120
        assert job["spec"]["backoffLimit"] == 2
        assert env_of(job)["GO_FEATURE"] == "on"

        metadata = await metadata_v1(system, "echo", request_id)
        assert metadata["id"] == request_id and metadata["algorithm"] == "echo"
        assert metadata["lifecycle_stage"] == "COMPLETED"
        assert metadata["api_version"] == "v1" and metadata["tag"] == "go-sdk-batch"
        applied = metadata["applied_configuration"]
        assert applied["container"] == {
            "image": "algorithms/echo",
            "registry": "example.io",
            "versionTag": "2.0",
        }
        assert applied["computeResources"] == {"cpuLimit": "500m", "memoryLimit": "2Gi"}
        assert applied["workgroupRef"]["name"] == "second"
        assert applied["runtimeEnvironment"]["deadlineSeconds"] == 120
        overrides = metadata["configuration_overrides"]
        assert overrides["container"] == {"versionTag": "2.0"}
        assert overrides["runtimeEnvironment"] == body["customConfiguration"]["runtimeEnvironment"]
        assert {"name": "GO_FEATURE", "value": "on"} in applied["runtimeEnvironment"][
            "environmentVariables"
        ]
        for moment in ("received_at", "sent_at", "last_modified"):
            assert datetime.fromisoformat(metadata[moment]).year > 2000, metadata[moment]
        assert metadata["result_uri"] and metadata["payload_valid_for"] == "1h0m0s"
        for name in ("algorithm_failure_cause", "algorithm_failure_details", "content_hash"):
            assert isinstance(metadata[name], str), name

        status, _, headers = await system.call("GET", f"{V1}/payload/echo/requests/{request_id}")
        assert status == 302
        async with system.session.get(headers["Location"]) as response:
            assert await response.json() == body["algorithmParameters"]

        status, text, headers = await system.call("GET", f"{V1}/buffer/echo/requests/{request_id}")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        buffered = orjson.loads(text)
        assert buffered["metadata"]["name"] == request_id
        assert container_of(buffered)["image"] == container["image"]
        assert env_of(buffered)["NEXUS__RUN_TOKEN"] == WITHHELD
        assert env_of(buffered)["NEXUS__RESULT_UPLOAD_URL"] == WITHHELD

        status, tagged, _ = await system.call("GET", f"{V1}/results/tags/go-sdk-batch")
        assert status == 200
        assert tagged == [{**done, "algorithmName": "echo", "resultUri": tagged[0]["resultUri"]}]

        failing = await submit_v1(
            system, "maybe-fail", {"algorithmParameters": {"fail": "x must be positive"}}
        )
        failed = await wait_v1(system, "maybe-fail", failing)
        assert failed["status"] == "FAILED" and failed["resultUri"] == "", failed
        assert failed["runErrorMessage"], failed
        assert (await metadata_v1(system, "maybe-fail", failing))["algorithm_failure_details"]

        sleeping = await submit_v1(
            system, "maybe-fail", {"algorithmParameters": {"sleepSeconds": 30}}
        )
        await wait_v1(system, "maybe-fail", sleeping, "RUNNING")
        cancel = f"{V1}/cancel/maybe-fail/requests/{sleeping}"
        status, text, headers = await system.call("POST", cancel, json=fixture("cancel.json"))
        assert (status, text) == (200, b""), (status, text)
        assert headers["Content-Type"].startswith("text/plain")
        cancelled = await result_v1(system, "maybe-fail", sleeping)
        assert cancelled["status"] == "CANCELLED" and cancelled["runErrorMessage"], cancelled
        details = (await metadata_v1(system, "maybe-fail", sleeping))["algorithm_failure_details"]
        assert "no longer needed" in details and "go-client" in details
        status, answer, _ = await system.call("POST", cancel, json=fixture("cancel.json"))
        assert status == 409 and set(answer) == {"error", "message"}, answer
        # the Go scheduler overwrote a COMPLETED run with CANCELLED; Nexus leaves it be
        status, answer, _ = await system.call(
            "POST", f"{V1}/cancel/echo/requests/{request_id}", json=fixture("cancel.json")
        )
        assert status == 409 and "COMPLETED" in answer["message"], answer
        assert (await result_v1(system, "echo", request_id))["status"] == "COMPLETED"


async def test_go_containers_complete_through_the_v1_receiver_route(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container reports with the Go receiver's body at /algorithm/v1/complete/…, with its
    run token: 202 once recorded, the first report stands, and a client reads both outcomes
    through v1. The runs are submitted in the shape Go model structs marshal to."""
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],  # Jobs are made; their pods wait
        templates=[template("echo")],
    ) as system:
        body = fixture("run-structs.json")
        runs = [await submit_v1(system, "echo", body) for _ in range(4)]
        jobs: dict[str, dict[str, Any]] = {}
        for request_id in runs:
            await wait_v1(system, "echo", request_id, "RUNNING")
            found = job_of(system, request_id)
            assert found is not None
            jobs[request_id] = found
        container = container_of(jobs[runs[0]])
        assert container["image"] == "example.io/algorithms/echo:2.1"
        assert container["resources"]["limits"] == {"cpu": "250m", "memory": "1Gi"}
        assert jobs[runs[0]]["spec"]["activeDeadlineSeconds"] == 90

        async def complete(request_id: str, name: str, token: str | None = None) -> Any:
            env = env_of(jobs[request_id])
            url = f"{env['NEXUS__RECEIVER_URL']}{V1}/complete/echo/requests/{request_id}"
            status, answer, _ = await system.call(
                "POST",
                url.removeprefix(system.receiver_url),
                base=system.receiver_url,
                token=env["NEXUS__RUN_TOKEN"] if token is None else token,
                json=fixture(name),
            )
            return status, answer

        succeeded, failed, cancelled, unschedulable = runs
        assert await complete(succeeded, "complete-success.json") == (
            202,
            {"requestId": succeeded, "status": "COMPLETED"},
        )
        answer = await result_v1(system, "echo", succeeded)
        assert answer["resultUri"] == fixture("complete-success.json")["resultUri"]
        assert await complete(failed, "complete-failure.json") == (
            202,
            {"requestId": failed, "status": "FAILED"},
        )
        answer = await result_v1(system, "echo", failed)
        assert answer == {**answer, "status": "FAILED", "runErrorMessage": "InputInvalid"}
        metadata = await metadata_v1(system, "echo", failed)
        assert metadata["algorithm_failure_details"] == "x must be positive"
        # a second report changes nothing; the answer says how the run stands
        assert await complete(failed, "complete-success.json") == (
            202,
            {"requestId": failed, "status": "FAILED"},
        )
        other = Signer((SIGNING_KEY,)).run_token("echo", str(uuid.uuid4()))
        status, answer = await complete(cancelled, "complete-success.json", token=other)
        assert status == 401 and set(answer) == {"error", "message"}, answer

        status, text, _ = await system.call(
            "POST",
            f"{V1}/cancel/echo/requests/{cancelled}",
            json=fixture("cancel-structs.json"),
        )
        assert (status, text) == (200, b"")
        assert (await result_v1(system, "echo", cancelled))["status"] == "CANCELLED"
        assert (
            "tester" in (await metadata_v1(system, "echo", cancelled))["algorithm_failure_details"]
        )

        # a run that could not be scheduled, in either vocabulary (as the maintainer or the
        # dispatcher records one)
        connection = await asyncpg.connect(system.postgres_dsn)
        try:
            await connection.execute(
                "UPDATE runs SET lifecycle_stage = 'SCHEDULING_FAILED',"
                " algorithm_failure_cause = 'FailedCreate' WHERE id = $1",
                uuid.UUID(unschedulable),
            )
        finally:
            await connection.close()
        answer = await result_v1(system, "echo", unschedulable)
        assert answer["status"] == "SCHEDULING_FAILED", answer
        assert answer["runErrorMessage"] == "FailedCreate", answer
        assert (await system.result("echo", unschedulable))["status"] == "SCHEDULING_TIMEOUT"
        assert await complete(unschedulable, "complete-success.json") == (
            202,
            {"requestId": unschedulable, "status": "SCHEDULING_FAILED"},
        )
        status, answer, _ = await system.call(
            "POST", f"{V1}/cancel/echo/requests/{unschedulable}", json={}
        )
        assert status == 409 and "SCHEDULING_FAILED" in answer["message"], answer

        status, tagged, _ = await system.call("GET", f"{V1}/results/tags/go-structs-batch")
        assert status == 200
        assert {(r["requestId"], r["status"]) for r in tagged} == {
            (succeeded, "COMPLETED"),
            (failed, "FAILED"),
            (cancelled, "CANCELLED"),
            (unschedulable, "SCHEDULING_FAILED"),
        }
        # a tag with more runs than one answer holds is refused, never cut short
        monkeypatch.setattr(goapi, "MAX_TAG_RESULTS", 3)
        status, answer, _ = await system.call("GET", f"{V1}/results/tags/go-structs-batch")
        assert status == 400 and "requestTag" in answer["message"], answer


async def test_a_dry_run_answers_the_job_and_stores_nothing(servers: Servers) -> None:
    """``?dryRun=true`` passes the checks of a real request and answers the Job it would
    create, with the overrides; no row, input or Job is made, and its id names no run."""
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo", inline=False, runtimeEnvironment=ALLOWING_SECRET)],
        workgroups=[("default", "shard-0"), ("second", "shard-0")],
    ) as system:
        before = await system.stored()
        status, answer, _ = await system.call(
            "POST", f"{V1}/run/echo?dryRun=true", json=fixture("run-sdk.json")
        )
        assert status == 202 and set(answer) == {"requestId", "job"}, answer
        job = orjson.loads(answer["job"])
        assert job["kind"] == "Job" and job["metadata"]["name"] == answer["requestId"]
        container = container_of(job)
        assert container["image"] == "example.io/algorithms/echo:2.0"
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}
        assert job["spec"]["activeDeadlineSeconds"] == 120 and job["spec"]["backoffLimit"] == 2
        assert env_of(job)["NEXUS__RUN_TOKEN"] == WITHHELD
        assert env_of(job)["GO_FEATURE"] == "on"
        await asyncio.sleep(0.3)  # time for a dispatcher to act, had anything been queued
        assert await system.stored() == before
        assert job_of(system, answer["requestId"]) is None
        for route in ("results", "metadata", "buffer"):
            status, _, _ = await system.call(
                "GET", f"{V1}/{route}/echo/requests/{answer['requestId']}"
            )
            assert status == 404, route
        # dryRun=false is a real run
        request_id = await submit_v1(system, "echo", fixture("run-sdk.json"), "?dryRun=false")
        assert (await system.stored())[0] == before[0] + 1
        assert (await result_v1(system, "echo", request_id))["status"] in {"BUFFERED", "RUNNING"}

        # an Idempotency-Key works as on v1.2: a repeat names the first run; a dry run with
        # the key first reserves nothing
        keyed = {"Idempotency-Key": "go-batch-7"}
        rows = (await system.stored())[0]
        dry = await system.call("POST", f"{V1}/run/echo?dryRun=true", json=VALID, headers=keyed)
        first = await system.call("POST", f"{V1}/run/echo", json=VALID, headers=keyed)
        again = await system.call("POST", f"{V1}/run/echo", json=VALID, headers=keyed)
        assert dry[0] == first[0] == again[0] == 202, (dry, first, again)
        assert first[1]["requestId"] == again[1]["requestId"] != dry[1]["requestId"]
        assert (await system.stored())[0] == rows + 1

        # the rest of what a run may set: more resources, a parent, the input's validity
        child = {
            "algorithmParameters": {},
            "parentRequest": {"requestId": request_id, "algorithmName": "echo"},
            "customConfiguration": {
                "computeResources": {"customResources": {"nvidia.com/gpu": "1"}},
                "payloadConfiguration": {"payloadValidFor": "30m"},
                "runtimeEnvironment": {
                    "mappedEnvironmentVariables": [{"secretRef": {"name": "go-credentials"}}]
                },
            },
        }
        status, answer, _ = await system.call("POST", f"{V1}/run/echo?dryRun=true", json=child)
        assert status == 202, answer
        job = orjson.loads(answer["job"])
        assert container_of(job)["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert env_of(job)["NEXUS__PARENT_REQUEST_ID"] == request_id
        assert {"secretRef": {"name": "go-credentials"}} in container_of(job)["envFrom"]
        child_id = await submit_v1(system, "echo", child)
        metadata = await metadata_v1(system, "echo", child_id)
        assert metadata["payload_valid_for"] == "30m0s"
        assert metadata["parent"] == {"requestId": request_id, "algorithmName": "echo"}
        assert metadata["configuration_overrides"] == {
            "computeResources": {"customResources": {"nvidia.com/gpu": "1"}},
            "runtimeEnvironment": child["customConfiguration"]["runtimeEnvironment"],
        }
