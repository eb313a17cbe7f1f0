"""Speculative attempts (``customConfiguration.speculativeAttempts``): N copies of a run,
the first report decides it, the others are deleted; a cancellation deletes every copy.

Local processes run the copies; the maintainer watches their Jobs, as in a deployment.
"""

from __future__ import annotations

from typing import Any

import pytest
from harness import Servers
from maintaining import running_maintainer, settings_for, wait_until
from support.system import NAMESPACE, System, local_system, template

from nexus_dev.cluster.emulators import ShardSpec

# copy 2 reports at once, with its copy number; the others (and all, if slow) take a minute;
# the copies listed in "crash" exit at once without a report
COPIES = """
import os, sys, time
from nexus_sdk.algorithm import Run
copy = os.environ.get("NEXUS__SPECULATIVE_COPY", "1/1")
with Run.from_environment(sys.argv[1:]) as run:
    given = run.input()
    if copy.split("/")[0] in given.get("crash", ""):
        sys.exit(3)
    time.sleep(given.get("wait", 0))
    if given.get("slow") or not copy.startswith("2/"):
        time.sleep(60)
    run.succeed({"copy": copy, "input": given})
"""


def job_of(system: System, name: str) -> dict[str, Any] | None:
    stored = system.cluster["shard-0"].store.get("jobs", NAMESPACE, name)
    return None if stored is None else dict(stored)


def copies(request_id: str) -> list[str]:
    return [request_id, f"{request_id}-copy-2", f"{request_id}-copy-3"]


async def test_the_first_copy_to_report_wins_and_the_others_are_deleted(
    servers: Servers,
) -> None:
    racing = template("racing", command=("python", "-c", COPIES))
    async with (
        local_system(
            servers, shards=[ShardSpec(name="shard-0", mode="process")], templates=[racing]
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        body = {
            "algorithmParameters": {"x": 1},
            "customConfiguration": {"speculativeAttempts": 3, "env": None},
        }
        request_id = await system.submit("racing", body)
        answer = await system.wait_for("racing", request_id, timeout=30)
        assert answer["status"] == "COMPLETED", answer
        async with system.session.get(answer["resultUri"]) as response:
            assert await response.json() == {"copy": "2/3", "input": {"x": 1}}
        first, second, third = copies(request_id)
        for name, copy in ((first, "1/3"), (second, "2/3"), (third, "3/3")):
            job = job_of(system, name)
            if job is not None:  # each copy carries its number (unless deleted already)
                annotations = job["metadata"]["annotations"]
                assert annotations["science.sneaksanddata.com/speculative-copy"] == copy
        await wait_until(
            lambda: job_of(system, first) is None and job_of(system, third) is None,
            timeout=20,
            what="the copies that lost deleted",
        )
        assert (await system.result("racing", request_id))["status"] == "COMPLETED"

        # a cancellation deletes every copy
        slow = await system.submit(
            "racing",
            {
                "algorithmParameters": {"slow": True},
                "customConfiguration": {"speculativeAttempts": 3},
            },
        )
        await wait_until(
            lambda: all(job_of(system, name) is not None for name in copies(slow)),
            what="three copies",
        )
        status, answer, _ = await system.call(
            "POST", f"/algorithm/v1.2/cancel/racing/requests/{slow}", json={}
        )
        assert (status, answer) == (200, {"requestId": slow, "status": "CANCELLED"})
        await wait_until(
            lambda: all(job_of(system, name) is None for name in copies(slow)),
            what="every copy of the cancelled run deleted",
        )


@pytest.mark.slow
async def test_a_copy_that_crashes_leaves_the_run_to_the_others(servers: Servers) -> None:
    racing = template("racing", command=("python", "-c", COPIES))
    async with (
        local_system(
            servers, shards=[ShardSpec(name="shard-0", mode="process")], templates=[racing]
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        # the first copy crashes at once; the second reports 2 s later; the third is slow
        parameters = {"crash": "1", "wait": 2}
        request_id = await system.submit(
            "racing",
            {"algorithmParameters": parameters, "customConfiguration": {"speculativeAttempts": 3}},
        )
        answer = await system.wait_for("racing", request_id, timeout=30)
        assert answer["status"] == "COMPLETED", answer
        async with system.session.get(answer["resultUri"]) as response:
            assert (await response.json())["copy"] == "2/3"
        await wait_until(
            lambda: job_of(system, f"{request_id}-copy-3") is None, what="the slow copy deleted"
        )
        # every copy crashing fails the run, with the last failure
        doomed = await system.submit(
            "racing",
            {
                "algorithmParameters": {"crash": "12"},
                "customConfiguration": {"speculativeAttempts": 2},
            },
        )
        answer = await system.wait_for("racing", doomed, timeout=30)
        assert answer["status"] == "FAILED", answer
        assert answer["runErrorMessage"].startswith("BackoffLimitExceeded: "), answer
        assert answer["runErrorMessage"].endswith("exited with code 3"), answer
