"""Many teams on one Nexus, through the whole local system with several scheduler pods."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from harness import Servers
from support.system import NAMESPACE, OPS_TOKEN, OTHER_TOKEN, System, local_system, template

from nexus.core.ticks import claim
from nexus.scheduler.schedules import TICKER, Ticker
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


async def flood_until_queued(system: System, backlog: int, timeout: float = 60) -> None:
    """Runs of ``tester`` until at least ``backlog`` of them wait (``BUFFERED``) at once,
    however slowly this machine submits them while the pods dispatch."""
    async with asyncio.timeout(timeout):
        while (waiting := (await stages(system, "tester")).get("BUFFERED", 0)) < backlog:
            await flood(system, 50)
    assert waiting >= backlog


@pytest.mark.slow
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
        # queued: eight seconds' worth of Job creations, on both pods
        await flood_until_queued(system, 320)
        mine = [
            await system.submit("echo", url=system.balancer_url, token=OTHER_TOKEN)
            for _ in range(3)
        ]
        for request_id in mine:
            await system.wait_for(
                "echo", request_id, "RUNNING", "COMPLETED", timeout=60, token=OTHER_TOKEN
            )
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
            await system.wait_for("echo", request_id, "COMPLETED", token=OTHER_TOKEN)
        await system.submit("echo", url=system.balancer_url, token=OTHER_TOKEN)


def schedule(name: str, cron: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "science.sneaksanddata.com/v1",
        "kind": "NexusSchedule",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"schedule": cron, "algorithm": "echo", "parameters": {"n": 1}, **spec},
    }


async def catalogued(ticker: Ticker, name: str) -> None:
    """Until the schedule ``name`` is in the ticker's catalog (its watch delivered it)."""
    async with asyncio.timeout(10):
        while True:
            if name in ticker.catalog.schedules:
                return
            await asyncio.sleep(0.02)


async def scheduled_runs(system: System, caller: str) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(system.postgres_dsn)
    try:
        rows = await connection.fetch(
            "SELECT id::text, lifecycle_stage FROM runs WHERE caller = $1 ORDER BY received_at",
            caller,
        )
    finally:
        await connection.close()
    return [(r[0], r[1]) for r in rows]


async def test_each_tick_starts_exactly_one_run_across_pods_and_restarts(
    servers: Servers,
) -> None:
    async with local_system(servers, schedulers=2, templates=[template("echo")]) as system:
        await system.apply("shard-0", schedule("hourly", "0 * * * *", tag="nightly"))
        tickers = [s.app[TICKER] for s in system.schedulers]
        for ticker in tickers:  # the catalogs' watches have delivered it
            await catalogued(ticker, "hourly")
        made = tickers[0].catalog.schedules["hourly"].created
        # both pods look, at the same time, 3 hours and 10 s after it was made: the
        # lease is bypassed, as during a leader's handover; RunOnce starts the latest tick
        later = made.replace(minute=0, second=10, microsecond=0) + timedelta(hours=3)
        for ticker in tickers:
            ticker.clock = lambda: later
        await asyncio.gather(*(ticker.check() for ticker in tickers))
        runs = await scheduled_runs(system, "schedule/hourly")
        assert len(runs) == 1, runs
        # a restarted pod (a fresh ticker) looking again starts nothing more
        await tickers[1].check()
        await system.start_scheduler()
        fresh = system.schedulers[-1].app[TICKER]
        await catalogued(fresh, "hourly")
        fresh.clock = lambda: later
        await fresh.check()
        assert [r for r, _ in await scheduled_runs(system, "schedule/hourly")] == [runs[0][0]]
        await system.wait_for("echo", runs[0][0], "COMPLETED", token=OPS_TOKEN)
        # the next hour's tick: one more run; the listing shows the last and the next tick
        fresh.clock = lambda: later + timedelta(hours=1)
        await fresh.check()
        assert len(await scheduled_runs(system, "schedule/hourly")) == 2
        status, listed = await system.get("/algorithm/v1.2/schedules", token=OPS_TOKEN)
        assert status == 200
        (entry,) = listed
        assert entry["name"] == "hourly" and entry["lastOutcome"] == "started"
        last = (await scheduled_runs(system, "schedule/hourly"))[-1][0]
        assert entry["lastRequestId"] == last
        # a caller who may not see the schedule's runs is not told which run it started
        _, (theirs,) = await system.get("/algorithm/v1.2/schedules")
        assert (theirs["lastRequestId"], theirs["lastOutcome"]) == (None, "started")
        assert theirs["lastTick"] == entry["lastTick"]
        assert datetime.fromisoformat(entry["lastTick"]) == later.replace(second=0) + timedelta(
            hours=1
        )
        assert datetime.fromisoformat(entry["nextTick"]) == later.replace(second=0) + timedelta(
            hours=2
        )


async def test_a_claimed_tick_whose_pod_died_is_started_once_by_the_next(
    servers: Servers,
) -> None:
    async with local_system(servers, schedulers=1, templates=[template("echo")]) as system:
        await system.apply("shard-0", schedule("often", "*/5 * * * *", missedRunPolicy="RunAll"))
        ticker = system.schedulers[0].app[TICKER]
        await catalogued(ticker, "often")
        spec = ticker.catalog.schedules["often"]
        tick = next(iter(spec.ticks(spec.created))).astimezone(UTC)
        # the pod claimed the tick and died before submitting its run (a crash between)
        claimed = await claim(ticker.store, spec.uid, tick, "echo", uuid.uuid4())
        ticker.clock = lambda: tick + timedelta(minutes=11)  # two more ticks were missed
        await ticker.check()
        runs = await scheduled_runs(system, "schedule/often")
        assert len(runs) == 3, runs  # the claimed tick and the two missed ones
        assert claimed.request_id in {uuid.UUID(r) for r, _ in runs}
        await ticker.check()
        assert len(await scheduled_runs(system, "schedule/often")) == 3


async def test_forbid_skips_a_tick_while_the_previous_run_is_unfinished(
    servers: Servers,
) -> None:
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[template("echo")]
    ) as system:
        await system.apply(
            "shard-0", schedule("daily", "0 9 * * *", timeZone="Europe/Amsterdam",
                                concurrencyPolicy="Forbid"),
        )  # fmt: skip
        ticker = system.schedulers[0].app[TICKER]
        await catalogued(ticker, "daily")
        spec = ticker.catalog.schedules["daily"]
        first = next(iter(spec.ticks(spec.created)))
        assert first.hour == 9 and str(first.tzinfo) == "Europe/Amsterdam"
        ticker.clock = lambda: first.astimezone(UTC) + timedelta(seconds=1)
        await ticker.check()
        ticker.clock = lambda: first.astimezone(UTC) + timedelta(days=1, seconds=1)
        await ticker.check()  # pods never run here: the first run is unfinished
        assert len(await scheduled_runs(system, "schedule/daily")) == 1
        _, listed = await system.get("/algorithm/v1.2/schedules", token=OPS_TOKEN)
        assert listed[0]["lastOutcome"].startswith("skipped: the previous run")
        assert listed[0]["lastRequestId"] is not None  # the skipped tick's, never made
        _, listed = await system.get("/algorithm/v1.2/schedules")  # the previous run unnamed
        assert (listed[0]["lastRequestId"], listed[0]["lastOutcome"]) == (None, "skipped")
