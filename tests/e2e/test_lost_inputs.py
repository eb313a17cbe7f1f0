"""A run whose input is gone from object storage ends FAILED saying so, never stuck.

An input can leave storage after its run was acknowledged: it expired (``payloadValidFor``)
while the run waited, or a store that acknowledged it before it was durable lost it in a
crash. The run's container finds out when it reads the input (404); the algorithm
contract then reports the failure with cause ``InputNotFound``, and the run ends FAILED
with that cause and a message a person can act on.
"""

from __future__ import annotations

import asyncio

from harness import Servers
from support.system import local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.simulation import SimulationSettings


async def test_a_run_whose_input_is_lost_ends_failed_saying_so(servers: Servers) -> None:
    slow = SimulationSettings(duration="fixed:2")  # the input is read 2 s after the start
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated", simulation=slow)],
        templates=[template("stored", inline=False)],
    ) as system:
        request_id = await system.submit("stored", {"algorithmParameters": {"x": 1}})
        key = f"inputs/algorithm=stored/{request_id}"
        assert servers.s3.get(key)  # acknowledged: the input is in storage
        await asyncio.to_thread(servers.s3.info.call, "DELETE", servers.s3.bucket, key)
        answer = await system.wait_for("stored", request_id)
        assert answer["status"] == "FAILED", answer
        assert "not in object storage" in answer["runErrorMessage"], answer
        status, checkpoint = await system.get(
            f"/algorithm/v1.2/metadata/stored/requests/{request_id}"
        )
        assert status == 200
        assert checkpoint["algorithmFailureCause"] == "InputNotFound", checkpoint
