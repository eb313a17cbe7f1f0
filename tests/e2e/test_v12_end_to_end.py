"""A v1.2 client's whole round, through real PostgreSQL, Redis, S3 and local processes.

Submitted as the Python client sends it (every field, null when unset), with overrides:
the Job carries them, the algorithm sees them, the run completes and its result is read;
then a failure and a cancellation are read back in the v1.2 vocabulary.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from harness import Servers
from support.system import NAMESPACE, System, local_system, template

from nexus_dev.cluster.emulators import ShardSpec

FIXTURES = Path(__file__).parent.parent / "contracts" / "v12"
STATUSES = orjson.loads((FIXTURES / "statuses.json").read_bytes())
ALGORITHM = "forecast"
MOUNT = "/etc/forecast"
# Kubernetes expands $(VAR) and reads $$ as $ in env values and arguments: a caller's value
# must reach the algorithm as sent, never with another variable (the run token) spliced in
LITERAL = "debug $(NEXUS__RUN_TOKEN) $$5 $(MODE) $("
# reports what it was given: its input, the overridden environment and its arguments
REPORTER = """
import os, sys, time
from nexus_sdk.algorithm import Run
with Run.from_environment(sys.argv[1:]) as run:
    given = run.input()
    time.sleep(float(given.get("sleepSeconds", 0)))
    if "fail" in given:
        run.fail("RequestedFailure", given["fail"])
    else:
        run.succeed({
            "input": given,
            "env": {k: os.environ.get(k) for k in ("MODE", "MODEL_CONFIG", "LEVEL")},
            "args": sys.argv[1:],
        })
"""


def python_client_body(parameters: dict[str, Any], **configuration: Any) -> dict[str, Any]:
    """A run body as the Python client serialises it (see tests/contracts/v12)."""
    body = orjson.loads((FIXTURES / "python-run-child.json").read_bytes())
    body["algorithmName"] = ALGORITHM
    body["algorithmParameters"] = parameters
    body["parentRequest"] = None
    body["customConfiguration"].update(configuration)
    return dict(body)


def job_of(system: System, request_id: str) -> dict[str, Any] | None:
    stored = system.cluster["shard-0"].store.get("jobs", NAMESPACE, request_id)
    return None if stored is None else dict(stored)


async def read_back(system: System, request_id: str, *statuses: str) -> dict[str, Any]:
    answer = await system.wait_for(ALGORITHM, request_id, *statuses)
    assert set(answer) == set(STATUSES["result-fields"]), answer
    assert answer["status"] in STATUSES["python"], answer
    return answer


async def test_a_v12_client_submits_with_overrides_and_reads_every_outcome(
    servers: Servers,
) -> None:
    forecast = template(
        ALGORITHM,
        command=("python", "-c", REPORTER),
        runtimeEnvironment={
            "deadlineSeconds": 60,
            "maximumRetries": 0,
            "environmentVariables": [{"name": "MODE", "value": "slow"}],
            "configuration": {"configMap": "forecast-config", "mountPath": MOUNT},
            "allowedSecrets": ["forecast-credentials"],
        },
    )
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="process")], templates=[forecast]
    ) as system:
        overrides = {
            "env": [
                {"name": "MODE", "value": "fast", "valueType": "PLAIN"},
                {
                    "name": "MODEL_CONFIG",
                    "value": "m/$(MODE).json",
                    "valueType": "RELATIVE_REFERENCE",
                },
                {"name": "LEVEL", "value": LITERAL, "valueType": None},
            ],
            "args": [{"name": "max-iterations", "value": LITERAL, "valueType": None}],
            "secrets": ["forecast-credentials"],
            "cpuLimit": "250m",
            "deadlineSeconds": 120,
        }
        parameters = {"series": [1, 2, 3]}
        request_id = await system.submit(ALGORITHM, python_client_body(parameters, **overrides))
        for _ in range(200):
            job = job_of(system, request_id)
            if job is not None:
                break
            await asyncio.sleep(0.05)
        assert job is not None
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["MODE"], env["MODEL_CONFIG"], env["LEVEL"]) == (
            "fast",
            f"{MOUNT}/m/$$(MODE).json",
            LITERAL.replace("$", "$$"),  # written for Kubernetes' expansion
        )
        assert container["args"][-1] == f"--max-iterations={LITERAL}".replace("$", "$$")
        assert {"secretRef": {"name": "forecast-credentials"}} in container["envFrom"]
        assert container["resources"]["limits"]["cpu"] == "250m"
        assert job["spec"]["activeDeadlineSeconds"] == 120

        answer = await read_back(system, request_id)
        assert answer["status"] == "COMPLETED" and answer["runErrorMessage"] is None, answer
        async with system.session.get(answer["resultUri"]) as response:
            assert response.status == 200
            result = await response.json()
        assert result["input"] == parameters
        assert result["env"] == {
            "MODE": "fast",
            "MODEL_CONFIG": f"{MOUNT}/m/$(MODE).json",
            "LEVEL": LITERAL,
        }
        assert result["args"][-1] == f"--max-iterations={LITERAL}"

        failing = await system.submit(
            ALGORITHM, python_client_body({"fail": "horizon must be positive"})
        )
        answer = await read_back(system, failing)
        assert answer["status"] == "FAILED" and answer["resultUri"] is None, answer
        assert answer["runErrorMessage"] == "RequestedFailure: horizon must be positive"

        slow = await system.submit(ALGORITHM, python_client_body({"sleepSeconds": 30}))
        await read_back(system, slow, "RUNNING")
        status, body, _ = await system.call(
            "POST",
            f"/algorithm/v1.2/cancel/{ALGORITHM}/requests/{slow}",
            json={"reason": "too slow", "initiator": None, "cancellationPolicy": None},
        )
        assert (status, body) == (200, {"requestId": slow, "status": "CANCELLED"})
        answer = await read_back(system, slow)
        assert answer["status"] == "CANCELLED" and answer["resultUri"] is None, answer
        assert "too slow" in answer["runErrorMessage"], answer
