"""Processes die: a scheduler's queue is adopted, a standby maintainer takes over."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from harness import Servers
from maintaining import (
    environment,
    faulty,
    maintainer_sections,
    processes,
    running_maintainer,
    scheduler_sections,
    settings_for,
    spawn,
    stage_counts,
    wait_ready,
    wait_until,
)
from support.system import free_port, local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.simulation import SimulationSettings

QUICK = ShardSpec(name="shard-0", simulation=SimulationSettings(duration="fixed:0.02"))


@pytest.mark.slow
@pytest.mark.timeout(360)  # its own deadlines: 60 s to submit, then 120 s + 1 s per 50 runs
async def test_a_scheduler_killed_with_thousands_queued_and_in_flight_loses_none(
    servers: Servers,
) -> None:
    async with (
        local_system(
            servers,
            shards=[QUICK],
            templates=[template("echo")],
            create_rate={"shard-0": 150},  # most of them still queued when it is killed
        ) as system,
        running_maintainer(settings_for(system, completion_grace=10)),
    ):
        port = free_port()
        # public_url is the load balancer in front of every pod (inline inputs are read
        # through it): here the pod that stays
        sections = scheduler_sections(
            system, "doomed", port, heartbeat_ttl=1.5, public_url=system.schedulers[0].url
        )
        with processes() as children:
            doomed = spawn(
                "scheduler", environment(sections), servers.tmp_path / "doomed.log", port
            )
            children.append(doomed)
            await wait_ready(system.session, doomed)
            doomed_url = f"http://127.0.0.1:{port}"
            ids: list[str] = []
            before: dict[str, int] = {}

            async def submit(count: int) -> None:
                runs = [{"algorithmParameters": {"i": len(ids) + i}} for i in range(count)]
                status, body, _ = await system.call(
                    "POST", "/algorithm/v1.2/runs/echo", base=doomed_url, json={"runs": runs}
                )
                assert status == 200 and all("requestId" in a for a in body["runs"]), body
                ids.extend(a["requestId"] for a in body["runs"])

            # thousands submitted, then more until hundreds are still queued when it is killed
            # (the pod dispatches meanwhile, as fast as the shard creates Jobs)
            async with asyncio.timeout(60):
                while len(ids) < 2500 or before.get("BUFFERED", 0) < 500:
                    await submit(500)
                    before = await stage_counts(servers.postgres_dsn)
            doomed.kill()  # SIGKILL: no hand-over; its queue and in-flight set stay in Redis
        assert before.get("BUFFERED", 0) >= 500, before  # hundreds still queued
        assert before.get("RUNNING", 0) + before.get("COMPLETED", 0) > 0, before  # some sent

        async def all_completed() -> bool:
            return (await stage_counts(servers.postgres_dsn)).get("COMPLETED", 0) == len(ids)

        # a deadline, not a speed: the shard creates at most 150 Jobs a second, slower
        # on a loaded machine
        await wait_until(
            all_completed, 120 + len(ids) / 50, "every run COMPLETED", servers.postgres_dsn
        )
        assert await stage_counts(servers.postgres_dsn) == {"COMPLETED": len(ids)}


CRAWLED = "crawled the stored inputs for ones without a run"


@pytest.mark.slow
async def test_the_standby_takes_over_a_killed_leader_and_nothing_is_done_twice(
    servers: Servers,
) -> None:
    templates = [faulty(template("silent"), "silent"), faulty(template("oom"), "oom")]
    async with local_system(
        servers,
        shards=[QUICK],
        templates=templates,
    ) as system:
        lease = 1.5
        with processes() as children:
            started = {}
            for name in ("first", "second"):
                port = free_port()
                env = environment(maintainer_sections(system, name, lease_ttl=lease))
                children.append(spawn("maintainer", env, servers.tmp_path / f"{name}.log", port))
                await wait_ready(system.session, children[-1])
                started[name] = children[-1]
                if name == "first":
                    await wait_until(lambda: leading(started["first"]), what="first leads")
            first, second = started["first"], started["second"]
            ids = []
            for i in range(40):
                ids.append(await system.submit(("silent", "oom")[i % 2]))
                if i == 20:
                    killed_at = time.time()
                    first.kill()
                await asyncio.sleep(0.05)

            async def all_finished() -> bool:
                return set(await stage_counts(servers.postgres_dsn)) <= {"FAILED"}

            await wait_until(
                all_finished, 30, "every run FAILED by a maintainer", servers.postgres_dsn
            )

            def at(line: dict[str, Any]) -> float:
                return datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()

            took_over = next(
                at(line) for line in second.lines() if line.get("message") == "leading"
            )
            assert 0 < took_over - killed_at < 2 * lease, took_over - killed_at
            # the standby did nothing before it led (the store would also refuse a second
            # change, so only this shows that the standby stood by)
            early = [line for line in second.lines() if line.get("action") and at(line) < took_over]
            assert not early, early[:3]
            # only the leader crawls the stored inputs (maintainer/orphans.py)
            crawled = {
                name: [at(line) for line in process.lines() if line.get("message") == CRAWLED]
                for name, process in started.items()
            }
            assert crawled["first"] and crawled["second"], crawled
            assert min(crawled["second"]) > took_over, (crawled, took_over)
            acted = Counter(
                line["requestId"]
                for process in (first, second)
                for line in process.lines()
                if line.get("action") in ("no_result", "oom_killed")
            )
            # a leader killed after its change committed and before it logged it leaves that
            # change unlogged (every run is FAILED, above): only a run sent before the kill
            assert set(acted) <= set(ids)
            assert set(ids) - set(acted) <= set(ids[:21]), set(ids) - set(acted)
            for process in (first, second):  # both acted: the kill came mid-way
                assert any(line.get("action") for line in process.lines()), process.log_path
            assert max(acted.values()) == 1, acted.most_common(3)  # each run changed once
            second.terminate()
            assert second.popen.returncode == 0


def leading(process: object) -> bool:
    return any(line.get("message") == "leading" for line in process.lines())  # type: ignore[attr-defined]
