"""Many teams on one Nexus, through the whole local system with several scheduler pods."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from harness import Servers
from support.system import OTHER_TOKEN, System, local_system, template

from nexus.scheduler.teamsettings import CallerPolicy, TeamSettings
from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.simulation import SimulationSettings


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


async def most_running_while(
    system: System, request_ids: list[str], algorithm: str, caller: str = "%"
) -> int:
    """The most runs of ``algorithm`` (of callers LIKE ``caller``) RUNNING at once, sampled
    until all ``request_ids`` have finished."""
    connection = await asyncpg.connect(system.postgres_dsn)
    most = 0
    try:
        async with asyncio.timeout(60):
            while True:
                rows = await connection.fetch(
                    "SELECT lifecycle_stage, caller LIKE $2, count(*) FROM runs"
                    " WHERE algorithm = $1 GROUP BY 1, 2",
                    algorithm,
                    caller,
                )
                counted = sum(int(r[2]) for r in rows if r[0] == "RUNNING" and r[1])
                most = max(most, counted)
                if sum(int(r[2]) for r in rows if r[0] == "COMPLETED") == len(request_ids):
                    return most
                await asyncio.sleep(0.02)
    finally:
        await connection.close()


SLOW = ShardSpec(name="shard-0", mode="simulated", simulation=SimulationSettings("fixed:0.6"))


async def test_an_algorithms_limit_holds_across_pods_and_waiting_runs_say_why(
    servers: Servers,
) -> None:
    async with local_system(
        servers,
        shards=[SLOW],
        schedulers=2,
        templates=[template("slow", concurrency={"maxRunning": 2})],
    ) as system:
        ids = await asyncio.gather(
            *(system.submit("slow", url=system.balancer_url) for _ in range(6))
        )
        await asyncio.sleep(0.3)
        reasons = []
        for request_id in ids:
            status, body = await system.get(f"/algorithm/v1.2/metadata/slow/requests/{request_id}")
            assert status == 200
            if "waitingFor" in body:
                reasons.append(body["waitingFor"])
        assert reasons, "runs over the limit say what they wait for"
        assert {r["limit"] for r in reasons} == {"algorithm/slow"}
        assert all(r["maxRunning"] == 2 and r["running"] == 2 for r in reasons), reasons
        assert sorted(r["position"] for r in reasons) == list(range(len(reasons)))
        assert await most_running_while(system, ids, "slow") == 2


async def test_a_callers_limit_holds_and_others_run_meanwhile(servers: Servers) -> None:
    teams = TeamSettings(callers={"limited": CallerPolicy(max_running=1)})
    async with local_system(
        servers, shards=[SLOW], schedulers=2, templates=[template("echo")], teams=teams
    ) as system:
        limited = await asyncio.gather(
            *(system.submit("echo", url=system.balancer_url, token=OTHER_TOKEN) for _ in range(3))
        )
        free = await asyncio.gather(
            *(system.submit("echo", url=system.balancer_url) for _ in range(3))
        )
        for request_id in free:  # the other caller's runs are not held back
            await system.wait_for("echo", request_id, "COMPLETED", timeout=5)
        assert (await stages(system, "limited")).get("COMPLETED", 0) <= 1
        assert await most_running_while(system, [*limited, *free], "echo", "limited") == 1
        assert (await stages(system, "limited")) == {"COMPLETED": 3}


async def test_a_daily_quota_refuses_with_429_stores_nothing_and_usage_says_so(
    servers: Servers,
) -> None:
    teams = TeamSettings(callers={"limited": CallerPolicy(runs_per_day=3)})
    async with local_system(
        servers, schedulers=2, templates=[template("echo")], teams=teams
    ) as system:
        body = {"algorithmParameters": {"x": 1}}
        keyed = {"Idempotency-Key": "k"}
        first = await system.submit("echo", body, token=OTHER_TOKEN, **keyed)
        # an idempotent repeat of an accepted run takes nothing more of the quota
        assert await system.submit("echo", body, token=OTHER_TOKEN, **keyed) == first
        for _ in range(2):
            await system.submit("echo", body, url=system.balancer_url, token=OTHER_TOKEN)
        before = await system.stored()
        for scheduler in system.schedulers:  # refused by every pod: counted across them
            status, answer, headers = await system.call(
                "POST", "/algorithm/v1.2/run/echo", base=scheduler.url, token=OTHER_TOKEN,
                json=body,
            )  # fmt: skip
            assert status == 429, answer
            assert answer["error"] == "quota_exceeded" and "daily quota" in answer["message"]
            assert 0 < int(headers["Retry-After"]) <= 86_400
        assert await system.stored() == before
        status, usage, _ = await system.call("GET", "/algorithm/v1.2/usage", token=OTHER_TOKEN)
        assert status == 200
        assert usage["caller"] == "limited"
        assert (usage["runsToday"], usage["runsPerDay"]) == (3, 3)
        status, other, _ = await system.call("GET", "/algorithm/v1.2/usage")
        assert (other["caller"], other["runsToday"], other["runsPerDay"]) == ("tester", None, None)


async def test_an_unfinished_runs_quota_frees_as_runs_finish(servers: Servers) -> None:
    teams = TeamSettings(callers={"limited": CallerPolicy(max_unfinished=2)})
    async with local_system(
        servers, shards=[SLOW], schedulers=2, templates=[template("echo")], teams=teams
    ) as system:
        first = [
            await system.submit("echo", url=system.balancer_url, token=OTHER_TOKEN)
            for _ in range(2)
        ]
        status, answer, headers = await system.call(
            "POST", "/algorithm/v1.2/run/echo", token=OTHER_TOKEN, json={"algorithmParameters": {}}
        )
        assert status == 429 and "not yet finished" in answer["message"], answer
        assert headers["Retry-After"] == "5"
        status, usage, _ = await system.call("GET", "/algorithm/v1.2/usage", token=OTHER_TOKEN)
        assert (usage["unfinishedRuns"], usage["maxUnfinished"]) == (2, 2)
        for request_id in first:
            await system.wait_for("echo", request_id, "COMPLETED")
        await system.submit("echo", url=system.balancer_url, token=OTHER_TOKEN)
