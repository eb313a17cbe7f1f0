"""Waiting without polling (?wait=S) through real schedulers, receiver and PostgreSQL.

Waiters on two scheduler pods are woken by PostgreSQL's announcement of their runs'
completions (which the receiver writes); a tag's summary waits for the whole batch; a
waiter whose announcement is lost (its pod's listening connection cut while the run
finished unannounced) is answered when the pod listens again, and any waiter at its S.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import asyncpg
import pytest
from harness import Servers
from prometheus_client import REGISTRY
from support.system import SIGNING_KEY, System, local_system, template

from nexus.core.announcements import APPLICATION_NAME
from nexus.core.signing import Signer
from nexus.scheduler.api import SCHEDULER
from nexus_dev.cluster.emulators import ShardSpec

SIGNER = Signer((SIGNING_KEY,))
RESULT = "/algorithm/v1.2/results/echo/requests/{}"


async def submit_many(system: System, count: int, tag: str | None = None) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 500):
        runs = [{"algorithmParameters": {"i": i}, "tag": tag} for i in range(start, min(count, start + 500))]  # fmt: skip
        status, body, _ = await system.call(
            "POST", "/algorithm/v1.2/runs/echo", json={"runs": runs}
        )
        assert status == 200, body
        ids.extend(answer["requestId"] for answer in body["runs"])
    return ids


async def complete(system: System, request_id: str) -> None:
    status, body, _ = await system.call(
        "POST",
        f"/algorithm/v1.2/complete/echo/requests/{request_id}",
        base=system.receiver_url,
        token=None,
        headers={"Authorization": f"Bearer {SIGNER.run_token('echo', request_id)}"},
        json={"result": {"done": request_id}},
    )
    assert status == 200, body


def waits(outcome: str) -> float:
    return REGISTRY.get_sample_value("nexus_waits_total", {"outcome": outcome}) or 0.0


def waiting(system: System) -> int:
    return sum(len(s.app[SCHEDULER].waiters or ()) for s in system.schedulers)


def listening(system: System) -> Any:
    announcements = [s.app[SCHEDULER].announcements for s in system.schedulers]
    return lambda: all(a is not None and a.listening.is_set() for a in announcements)


async def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_a_thousand_waiters_on_two_pods_are_woken_by_their_runs_finishing(
    servers: Servers,
) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo")],
        schedulers=2,
    ) as system:
        ids = await submit_many(system, 1000)
        answered: dict[str, tuple[float, dict[str, Any]]] = {}

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def wait(request_id: str, pod: int) -> None:
            url = system.schedulers[pod].url + RESULT.format(request_id) + "?wait=50"
            async with session.get(url, headers=system.headers()) as response:
                assert response.status == 200, await response.text()
                answered[request_id] = (time.monotonic(), await response.json())

        timed_out = waits("timed_out")
        waiters = [asyncio.create_task(wait(rid, i % 2)) for i, rid in enumerate(ids)]
        await until(lambda: waiting(system) == 1000, "every waiter registered")
        assert answered == {}  # nothing finished: every request waits
        sent: dict[str, float] = {}
        done: dict[str, float] = {}
        limit = asyncio.Semaphore(32)

        async def finish(request_id: str) -> None:
            async with limit:
                sent[request_id] = time.monotonic()
                await complete(system, request_id)
                done[request_id] = time.monotonic()

        try:
            await asyncio.gather(*(finish(rid) for rid in ids))
            await asyncio.gather(*waiters)
        finally:
            await session.close()
        # every waiter was woken by its own run's completion: answered after it was sent,
        # with the run completed, and not one of them at its S
        assert set(answered) == set(ids)
        for request_id, (when, body) in answered.items():
            assert body["status"] == "COMPLETED" and body["resultUri"], body
            assert when >= sent[request_id]
        assert waits("timed_out") == timed_out
        for name, start in (("sent", sent), ("acknowledged", done)):
            lags = sorted(answered[rid][0] - start[rid] for rid in ids)
            print(f"completion {name} to answer: p50 {statistics.median(lags) * 1000:.0f} ms,"
                  f" p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms")  # fmt: skip
        assert waiting(system) == 0


async def test_a_summary_waits_for_the_whole_batch_and_bad_waits_are_refused(
    servers: Servers,
) -> None:
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[template("echo")]
    ) as system:
        ids = await submit_many(system, 5, tag="five")
        summary = "/algorithm/v1.2/results/echo/tags/five/summary"
        waiter = asyncio.create_task(system.call("GET", summary + "?wait=50"))
        await until(lambda: waiting(system) == 1, "the summary's waiter")
        for request_id in ids[:4]:
            await complete(system, request_id)
        await asyncio.sleep(0.3)
        assert not waiter.done()  # four of five finished: still waiting
        await complete(system, ids[4])
        status, body, _ = await waiter
        assert status == 200 and body["finished"] is True and body["byStatus"]["COMPLETED"] == 5
        # a finished batch, or wait=0, is answered at once; an unfinished one at S
        status, body, _ = await system.call("GET", summary + "?wait=10")
        assert body["finished"] is True
        other = await submit_many(system, 1, tag="one")
        started = time.monotonic()
        status, body, _ = await system.call("GET", "/algorithm/v1.2/results/echo/tags/one/summary?wait=1")  # fmt: skip
        assert body["finished"] is False and time.monotonic() - started >= 1
        status, body, _ = await system.call("GET", RESULT.format(other[0]) + "?wait=0")
        assert status == 200 and body["status"] in ("BUFFERED", "RUNNING")
        for path in (RESULT.format(other[0]), summary):
            for bad in ("-1", "61", "abc", "nan", "inf", "1e400", "", "%205", "60.5"):
                status, body, _ = await system.call("GET", f"{path}?wait={bad}")
                assert status == 400 and "wait" in body["message"], (path, bad, body)
        status, body, _ = await system.call("GET", RESULT.format("0" * 8 + "-0000-4000-8000-" + "0" * 12) + "?wait=5")  # fmt: skip
        assert status == 404


async def test_a_lost_announcement_never_keeps_a_waiter_past_its_wait(servers: Servers) -> None:
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[template("echo")]
    ) as system:
        first, second = await submit_many(system, 2)
        # a pod that starts listening looks again at every run waited for (announcements
        # before that moment were not heard): the waiter below must come after it
        await until(listening(system), "the pod listening")
        connection = await asyncpg.connect(system.postgres_dsn)
        try:

            async def finish_unannounced(request_id: str) -> None:
                async with connection.transaction():  # triggers off: no announcement
                    await connection.execute("SET LOCAL session_replication_role = replica")
                    await connection.execute(
                        "UPDATE runs SET lifecycle_stage = 'COMPLETED' WHERE id = $1::uuid",
                        request_id,
                    )

            # no announcement and nothing else: answered at its S, as the run stands
            timed_out = waits("timed_out")
            started = time.monotonic()
            waiter = asyncio.create_task(system.call("GET", RESULT.format(first) + "?wait=2"))
            await until(lambda: waiting(system) == 1, "the waiter")
            await finish_unannounced(first)
            status, body, _ = await waiter
            assert status == 200 and body["status"] == "COMPLETED", body
            assert time.monotonic() - started >= 2 and waits("timed_out") == timed_out + 1

            # the pod's listening connection cut meanwhile: when it listens again, it
            # looks again at what it waits for, and wakes the waiter before its S
            finished = waits("finished")
            waiter = asyncio.create_task(system.call("GET", RESULT.format(second) + "?wait=60"))
            await until(lambda: waiting(system) == 1, "the waiter")
            await finish_unannounced(second)
            cut = await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                APPLICATION_NAME,
            )
            assert cut == 1
            status, body, _ = await waiter
            assert body["status"] == "COMPLETED", body
            assert waits("finished") == finished + 1 and waits("timed_out") == timed_out + 1
        finally:
            await connection.close()
