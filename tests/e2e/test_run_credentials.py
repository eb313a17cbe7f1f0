"""A run's credential (``NEXUS__RUN_CREDENTIAL``) against the real local system: it starts
children of its run only while that run is unfinished. A credential that outlives its run
(it is valid until the run's deadline), or one leaked from a pod that a cancellation
orphaned, starts nothing once the run has finished: children started then would escape
the parent's cascading cancel."""

from __future__ import annotations

import time

from harness import Servers
from support.system import SIGNING_KEY, local_system, template

from nexus.core.signing import Signer
from nexus_dev.cluster.emulators import ShardSpec

PARKED = ShardSpec(name="shard-1", mode="off")  # pods stay Pending: runs stay unfinished
ROUTES = (
    ("/algorithm/v1.2/run/echo", {"algorithmParameters": {}}),
    ("/algorithm/v1/run/echo", {"algorithmParameters": {}}),
)


async def test_a_run_credential_starts_no_children_once_its_run_has_finished(
    servers: Servers,
) -> None:
    signer = Signer([SIGNING_KEY])
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("parked", workgroup="parked")],
    ) as system:
        finished = await system.submit("echo")
        await system.wait_for("echo", finished, "COMPLETED")
        cancelled = await system.submit("parked")
        await system.wait_for("parked", cancelled, "RUNNING")
        status, _, _ = await system.call(
            "POST",
            f"/algorithm/v1.2/cancel/parked/requests/{cancelled}",
            json={"cancellationPolicy": "Orphan"},  # its pod may well go on running
        )
        assert status == 200
        later = int(time.time()) + 600
        before = await system.stored()
        for algorithm, parent in (("echo", finished), ("parked", cancelled)):
            credential = signer.run_credential(algorithm, parent, "tester", later)
            for path, body in ROUTES:
                status, answer, _ = await system.call("POST", path, token=credential, json=body)
                assert status == 403, (path, status, answer)
                assert answer["error"] == "forbidden"
                assert f"run {parent}" in answer["message"] and "finished" in answer["message"]
            status, answer, _ = await system.call(
                "POST",
                "/algorithm/v1.2/runs/echo",
                token=credential,
                json={"runs": [{"algorithmParameters": {}}]},
            )
            assert status == 200, answer
            assert answer["runs"][0]["error"] == "forbidden", answer
        assert await system.stored() == before

        # while its run is unfinished, the same kind of credential starts children
        running = await system.submit("parked")
        await system.wait_for("parked", running, "RUNNING")
        credential = signer.run_credential("parked", running, "tester", later)
        child = await system.submit("echo", token=credential)
        assert (await system.wait_for("echo", child))["status"] == "COMPLETED"
