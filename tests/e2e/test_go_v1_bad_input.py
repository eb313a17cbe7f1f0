"""Bad input on the Go v1 routes: a 4xx JSON error naming the problem, nothing stored, the
server healthy — for every route, and for dry runs of invalid requests.

As in test_bad_input.py, every case goes to a whole running system; afterwards the ``runs``
table and the bucket's ``inputs/`` hold what they held before, ``/health/ready`` answers 200
and a valid v1 run is still accepted. The shard is ``off`` so runs stay where they are.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from harness import Servers
from support.system import SIGNING_KEY, System, local_system, template

from nexus.core.signing import Signer
from nexus_dev.cluster.emulators import ShardSpec

V1 = "/algorithm/v1"
RUN = f"{V1}/run/echo"
ABSENT: Any = object()
VALID = {"algorithmParameters": {"x": 1}}


@dataclass
class Case:
    name: str
    names: str
    """Text the error message must contain (the field or the problem)."""
    json: Any = ABSENT
    data: bytes | None = None
    status: int = 400
    path: str = RUN
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = "default"
    receiver: bool = False


@dataclass
class Checker:
    system: System

    async def send(self, case: Case) -> tuple[int, Any]:
        options: dict[str, Any] = {"headers": dict(case.headers)}
        if case.json is not ABSENT:
            options["data"] = orjson.dumps(case.json)
            options["headers"]["Content-Type"] = "application/json"
        elif case.data is not None:
            options["data"] = io.BytesIO(case.data)
        if case.token != "default":
            options["token"] = case.token
        if case.receiver:
            options["base"] = self.system.receiver_url
        status, body, _ = await self.system.call(case.method, case.path, **options)
        return status, body

    async def refused(self, case: Case) -> None:
        before = await self.system.stored()
        status, body = await self.send(case)
        where = f"case {case.name!r}: answered {status} {body!r}"
        assert status == case.status, where
        assert isinstance(body, dict) and set(body) == {"error", "message"}, where
        assert case.names in body["message"], where
        assert await self.system.stored() == before, f"case {case.name!r} stored something"
        status, body, _ = await self.system.call("GET", "/health/ready", token=None)
        assert status == 200, f"after case {case.name!r}: not ready ({status} {body!r})"
        status, body, _ = await self.system.call("POST", RUN, json=VALID)
        assert status == 202, f"after case {case.name!r}: a valid run got {status} {body!r}"


@asynccontextmanager
async def checker(servers: Servers) -> AsyncIterator[Checker]:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo", inline=False)],
        workgroups=[("default", "shard-0"), ("elsewhere", "shard-9")],
    ) as system:
        yield Checker(system)


def spec(**parts: Any) -> dict[str, Any]:
    return {"algorithmParameters": {}, "customConfiguration": parts}


RUN_CASES = [
    Case("malformed JSON", "not valid JSON", data=b'{"algorithmParameters": {'),
    Case("empty body", "empty", data=b""),
    Case("array body", "JSON object", json=[VALID]),
    Case("null body", "JSON object", json=None),
    Case("missing algorithmParameters", "algorithmParameters", json={"tag": "x"}),
    Case("algorithmParameters null", "algorithmParameters", json={"algorithmParameters": None}),
    Case("algorithmParameters a list", "algorithmParameters", json={"algorithmParameters": [1]}),
    Case("algorithmParameters a string", "algorithmParameters", json={"algorithmParameters": "{}"}),
    Case("customConfiguration a list", "customConfiguration", json={"algorithmParameters": {}, "customConfiguration": []}),
    Case("customConfiguration a string", "customConfiguration", json={"algorithmParameters": {}, "customConfiguration": "big"}),
    Case("container a string", "customConfiguration.container", json=spec(container="img")),
    Case("versionTag not a tag", "customConfiguration.container.versionTag", json=spec(container={"versionTag": "no tag!"})),
    Case("versionTag a number", "customConfiguration.container.versionTag", json=spec(container={"versionTag": 7})),
    Case("image a path trick", "customConfiguration.container.image", json=spec(container={"image": "../x"})),
    Case("serviceAccountName", "customConfiguration.container.serviceAccountName", json=spec(container={"serviceAccountName": "root"})),
    Case("unknown container field", "customConfiguration.container.colour", json=spec(container={"colour": "red"})),
    Case("cpuLimit not a quantity", "customConfiguration.computeResources.cpuLimit", json=spec(computeResources={"cpuLimit": "lots"})),
    Case("cpuLimit a number", "customConfiguration.computeResources.cpuLimit", json=spec(computeResources={"cpuLimit": 2})),
    Case("memoryLimit with a space", "customConfiguration.computeResources.memoryLimit", json=spec(computeResources={"memoryLimit": "1 GB"})),
    Case("limits as a resource list", "customConfiguration.computeResources.limits", json=spec(computeResources={"limits": {"cpu": "1"}})),
    Case("customResources a list", "customConfiguration.computeResources.customResources", json=spec(computeResources={"customResources": ["gpu"]})),
    Case("deadlineSeconds negative", "customConfiguration.runtimeEnvironment.deadlineSeconds", json=spec(runtimeEnvironment={"deadlineSeconds": -1})),
    Case("deadlineSeconds a string", "customConfiguration.runtimeEnvironment.deadlineSeconds", json=spec(runtimeEnvironment={"deadlineSeconds": "60"})),
    Case("deadlineSeconds a bool", "customConfiguration.runtimeEnvironment.deadlineSeconds", json=spec(runtimeEnvironment={"deadlineSeconds": True})),
    Case("maximumRetries too many", "customConfiguration.runtimeEnvironment.maximumRetries", json=spec(runtimeEnvironment={"maximumRetries": 10_000})),
    Case("environment variables not a list", "customConfiguration.runtimeEnvironment.environmentVariables", json=spec(runtimeEnvironment={"environmentVariables": {"A": "b"}})),
    Case("environment value from a Secret", "customConfiguration.runtimeEnvironment.environmentVariables[0].valueFrom", json=spec(runtimeEnvironment={"environmentVariables": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})),
    Case("environment name of the contract", "customConfiguration.runtimeEnvironment.environmentVariables[0].name", json=spec(runtimeEnvironment={"environmentVariables": [{"name": "NEXUS__RUN_TOKEN", "value": "x"}]})),
    Case("environment name missing", "customConfiguration.runtimeEnvironment.environmentVariables[0].name", json=spec(runtimeEnvironment={"environmentVariables": [{"value": "x"}]})),
    Case("mapped ConfigMap", "customConfiguration.runtimeEnvironment.mappedEnvironmentVariables[0].configMapRef", json=spec(runtimeEnvironment={"mappedEnvironmentVariables": [{"configMapRef": {"name": "c"}}]})),
    Case("mapped Secret not allowed", "customConfiguration.runtimeEnvironment.mappedEnvironmentVariables[0]", json=spec(runtimeEnvironment={"mappedEnvironmentVariables": [{"secretRef": {"name": "db-admin"}}]}), status=403),
    Case("annotations", "customConfiguration.runtimeEnvironment.annotations", json=spec(runtimeEnvironment={"annotations": {"a": "b"}})),
    Case("runtimeEnvironment a list", "customConfiguration.runtimeEnvironment", json=spec(runtimeEnvironment=[1])),
    Case("unknown workgroup", "nowhere", json=spec(workgroupRef={"name": "nowhere"})),
    Case("workgroup on an unknown shard", "customConfiguration.workgroup", json=spec(workgroupRef={"name": "elsewhere"})),
    Case("workgroup of another kind", "customConfiguration.workgroupRef.kind", json=spec(workgroupRef={"name": "default", "kind": "Deployment"})),
    Case("command", "customConfiguration.command", json=spec(command="python x.py")),
    Case("args", "customConfiguration.args", json=spec(args=["--x"])),
    Case("errorHandlingBehaviour", "customConfiguration.errorHandlingBehaviour", json=spec(errorHandlingBehaviour={"fatalExitCodes": [1]})),
    Case("payloadSerialization", "customConfiguration.payloadConfiguration.payloadSerialization", json=spec(payloadConfiguration={"payloadSerialization": "backend"})),
    Case("payloadValidFor in the spec", "payloadValidFor", json=spec(payloadConfiguration={"payloadValidFor": "forever"})),
    Case("unknown part", "customConfiguration.colour", json=spec(colour="red")),
    Case("tag a number", "tag", json={"algorithmParameters": {}, "tag": 7}),
    Case("requestApiVersion a number", "requestApiVersion", json={"algorithmParameters": {}, "requestApiVersion": 1}),
    Case("parentRequest a string", "parentRequest", json={"algorithmParameters": {}, "parentRequest": "abc"}),
    Case("parentRequest id not a UUID", "parentRequest.requestId", json={"algorithmParameters": {}, "parentRequest": {"requestId": "x", "algorithmName": "echo"}}),
    Case("parentRequest unknown", "parentRequest", json={"algorithmParameters": {}, "parentRequest": {"requestId": str(uuid.uuid4()), "algorithmName": "echo"}}),
    Case("payloadValidFor a number", "payloadValidFor", json={"algorithmParameters": {}, "payloadValidFor": 3600}),
    Case("unknown algorithm", "'nothing'", json=VALID, path=f"{V1}/run/nothing"),
    Case("algorithm name not a name", "algorithmName", json=VALID, path=f"{V1}/run/Echo_1"),
    Case("no token", "token", json=VALID, token=None, status=401),
]  # fmt: skip


@pytest.mark.slow
async def test_run_requests_and_their_dry_runs(servers: Servers) -> None:
    async with checker(servers) as check:
        for case in RUN_CASES:
            await check.refused(case)
            separator = "&" if "?" in case.path else "?"
            dry = Case(**{**case.__dict__, "name": f"{case.name} (dry run)"})
            dry.path = f"{case.path}{separator}dryRun=true"
            await check.refused(dry)
        await check.refused(
            Case("dryRun not a boolean", "dryRun", json=VALID, path=f"{RUN}?dryRun=maybe")
        )
        # Go's zero values and nulls are absent, not errors
        zeros = {
            "algorithmParameters": {},
            "customConfiguration": {
                "container": None,
                "command": "",
                "args": [],
                "computeResources": {"cpuLimit": "", "limits": None, "requests": {}},
                "runtimeEnvironment": {"environmentVariables": [], "annotations": {}},
                "workgroupRef": {"name": "", "group": "", "kind": ""},
            },
            "tag": "",
            "requestApiVersion": None,
            "parentRequest": None,
            "payloadValidFor": None,
        }
        for query in ("?dryRun=true", ""):
            status, body, _ = await check.system.call("POST", f"{RUN}{query}", json=zeros)
            assert status == 202, (query, status, body)


async def test_reads_cancels_and_completions(servers: Servers) -> None:
    async with checker(servers) as check:
        status, body, _ = await check.system.call("POST", RUN, json=VALID)
        assert status == 202
        known = body["requestId"]
        unknown = str(uuid.uuid4())
        cases = []
        for route in ("results", "metadata", "payload", "buffer"):
            cases += [
                Case(f"{route}: id not a UUID", "requestId", method="GET", path=f"{V1}/{route}/echo/requests/x"),
                Case(f"{route}: unknown run", unknown, method="GET", status=404, path=f"{V1}/{route}/echo/requests/{unknown}"),
                Case(f"{route}: bad algorithm", "algorithmName", method="GET", path=f"{V1}/{route}/Echo/requests/{known}"),
                Case(f"{route}: no token", "token", method="GET", status=401, token=None, path=f"{V1}/{route}/echo/requests/{known}"),
            ]  # fmt: skip
        cancel = f"{V1}/cancel/echo/requests/{known}"
        cases += [
            Case("tag with a control character", "requestTag", method="GET", path=f"{V1}/results/tags/a%01b"),
            Case("tags: no token", "token", method="GET", status=401, token=None, path=f"{V1}/results/tags/x"),
            Case("cancel: body an array", "JSON object", json=[], path=cancel),
            Case("cancel: reason a number", "reason", json={"reason": 1}, path=cancel),
            Case("cancel: unknown policy", "cancellationPolicy", json={"cancellationPolicy": "Sideways"}, path=cancel),
            Case("cancel: unknown run", unknown, json={}, status=404, path=f"{V1}/cancel/echo/requests/{unknown}"),
            Case("cancel: id not a UUID", "requestId", json={}, path=f"{V1}/cancel/echo/requests/x"),
        ]  # fmt: skip
        token = Signer((SIGNING_KEY,)).run_token("echo", unknown)
        complete = f"{V1}/complete/echo/requests/{unknown}"
        bearer = {"Authorization": f"Bearer {token}"}
        cases += [
            Case("complete: id not a UUID", "requestId", json={}, receiver=True, path=f"{V1}/complete/echo/requests/x"),
            Case("complete: no token", "run token", json={}, receiver=True, status=401, token=None, path=complete),
            Case("complete: unknown run", unknown, json={"resultUri": ""}, receiver=True, status=404, token=None, headers=bearer, path=complete),
            Case("complete: errorCause a number", "errorCause", json={"errorCause": 1}, receiver=True, token=None, headers=bearer, path=complete),
            Case("complete: resultUri not a URL", "URL", json={"resultUri": "ftp://x/y"}, receiver=True, token=None, headers=bearer, path=complete),
            Case("complete: body not JSON", "not valid JSON", data=b"{", receiver=True, token=None, headers=bearer, path=complete),
        ]  # fmt: skip
        for case in cases:
            await check.refused(case)
        status, body, _ = await check.system.call("GET", f"{V1}/results/echo/requests/{known}")
        assert status == 200 and body["status"] in {"BUFFERED", "RUNNING"}, body  # not cancelled

        # a client that accepts only text/plain (as the Go scheduler answered) gets the message
        status, text, headers = await check.system.call(
            "GET", f"{V1}/results/echo/requests/{unknown}", headers={"Accept": "text/plain"}
        )
        assert status == 404 and headers["Content-Type"].startswith("text/plain"), headers
        assert unknown in text.decode()
