"""Many teams on one Nexus, through the whole local system with several scheduler pods."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from harness import Servers
from support.system import OTHER_TOKEN, System, local_system, template

from nexus.scheduler.teamsettings import TeamSettings


async def stages(system: System, caller: str) -> dict[str, int]:
    connection = await asyncpg.connect(system.postgres_dsn)
    try:
        rows = await connection.fetch(
            "SELECT lifecycle_stage, count(*) FROM runs WHERE caller = $1 GROUP BY 1", caller
        )
    finally:
        await connection.close()
    return {row[0]: int(row[1]) for row in rows}


async def flood(system: System, count: int) -> None:
    """``count`` runs of the caller ``tester``, through the balancer (both pods)."""
    for start in range(0, count, 25):
        await asyncio.gather(
            *(system.submit("echo", url=system.balancer_url) for _ in range(min(25, count - start)))
        )


@pytest.mark.parametrize("fair", [True, False], ids=["fair-share", "first-come"])
async def test_a_flood_does_not_hold_back_another_callers_runs(
    servers: Servers, fair: bool
) -> None:
    async with local_system(
        servers,
        schedulers=2,
        templates=[template("echo")],
        create_rate={"shard-0": 40},
        teams=TeamSettings(fair_share=fair),
    ) as system:
        await flood(system, 240)  # six seconds' worth of Job creations, on both pods
        mine = [
            await system.submit("echo", url=system.balancer_url, token=OTHER_TOKEN)
            for _ in range(3)
        ]
        for request_id in mine:
            await system.wait_for("echo", request_id, "RUNNING", "COMPLETED", timeout=30)
        waiting = (await stages(system, "tester")).get("BUFFERED", 0)
        if fair:  # dispatched within a batch or two, the flood mostly still queued
            assert waiting >= 120, waiting
        else:  # behind the whole flood
            assert waiting <= 20, waiting
