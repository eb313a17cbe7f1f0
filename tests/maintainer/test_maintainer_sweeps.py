"""Sweeps of the checkpoint store (maintainer/sweeping.py): runs nothing else moves on."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from harness import Servers
from maintaining import (
    create_job,
    faulty,
    open_payloads,
    open_store,
    running_maintainer,
    settings_for,
    wait_until,
)
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from support.system import local_system, template
from test_maintainer_filters import Recorded, Shard
from test_maintainer_signals import bare_job

from maintainer.actions import Actions
from maintainer.settings import MaintainerSection
from maintainer.shardwatch import ShardWatch
from maintainer.sweeping import Sweeper
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.queues import QueueBackend
from nexus.core.runs import NewRun, Stage, Transition
from nexus.core.visibility import SYSTEM
from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.simulation import SimulationSettings


def actions(action: str, shard: str = "shard-0") -> float:
    value = REGISTRY.get_sample_value(
        "nexus_maintainer_actions_total", {"action": action, "shard": shard}
    )
    return value or 0.0


@pytest.mark.slow
async def test_redis_flushed_under_load_every_buffered_run_is_queued_again_and_completes(
    servers: Servers,
) -> None:
    shard = ShardSpec(name="shard-0", simulation=SimulationSettings(duration="fixed:0.01"))
    async with (
        local_system(
            servers,
            shards=[shard],
            templates=[template("echo")],
            create_rate={"shard-0": 150},
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        requeued = actions("requeued")
        ids = await asyncio.gather(
            *(system.submit("echo", {"algorithmParameters": {"i": i}}) for i in range(600))
        )
        client = aioredis.Redis.from_url(servers.redis_url)
        try:  # everything of this deployment: queues, in-flight sets, heartbeats, throttle
            keys = [k async for k in client.scan_iter(match=f"{servers.redis_prefix}*", count=1000)]
            assert keys
            await client.delete(*keys)
        finally:
            await client.aclose()
        statuses = [(await system.wait_for("echo", i, timeout=40))["status"] for i in ids]
        assert statuses == ["COMPLETED"] * len(ids)
        assert actions("requeued") > requeued


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.slow
async def test_redis_emptied_is_noticed_within_seconds_and_its_runs_queued_again_at_once(
    servers: Servers,
) -> None:
    """The regular sweep would wait for its queue grace (here ten minutes): the missing
    marker tells the leader at once, and each run waiting is queued again exactly once —
    no run is dispatched twice (a second creation would answer 409, counted as exists)."""
    shard = ShardSpec(name="shard-0", simulation=SimulationSettings(duration="fixed:0.01"))
    async with (
        local_system(
            servers, shards=[shard], templates=[template("echo")], create_rate={"shard-0": 40}
        ) as system,
        running_maintainer(
            settings_for(
                system,
                queue_grace=600.0,
                sweep_interval=600.0,
                redis_check_interval=0.2,
                heal_grace=0.5,
            )
        ),
    ):
        losses = sample("nexus_maintainer_redis_losses_total")
        requeued, exists = (
            actions("requeued"),
            sample("nexus_job_creates_total", shard="shard-0", outcome="exists"),
        )
        ids = await asyncio.gather(
            *(system.submit("echo", {"algorithmParameters": {"i": i}}) for i in range(200))
        )
        await asyncio.sleep(0.5)  # the maintainer has set its marker
        client = aioredis.Redis.from_url(servers.redis_url)
        try:  # every key of this deployment, as a Redis restarted empty would have
            keys = [k async for k in client.scan_iter(match=f"{servers.redis_prefix}*", count=1000)]
            await client.delete(*keys)
        finally:
            await client.aclose()
        statuses = [(await system.wait_for("echo", i, timeout=30))["status"] for i in ids]
        assert statuses == ["COMPLETED"] * len(ids)
        assert sample("nexus_maintainer_redis_losses_total") == losses + 1
        assert actions("requeued") > requeued  # not all had been dispatched: some waited
        assert sample("nexus_job_creates_total", shard="shard-0", outcome="exists") == exists


async def test_a_run_whose_report_never_came_is_completed_from_its_uploaded_result(
    servers: Servers,
) -> None:
    """No receiver answers (its URL leads nowhere): the pod uploads its result, tries its
    completion until its time is up and exits 0. The run is COMPLETED from the result at
    its default location; a run that exited without uploading anything still FAILs."""
    shard = ShardSpec(
        name="shard-0",
        simulation=SimulationSettings(duration="fixed:0.01", retry_for=0.5, retry_cap=0.1),
    )
    async with (
        local_system(
            servers,
            shards=[shard],
            templates=[template("echo"), faulty(template("silent"), "silent")],
            section={"receiver_url": "http://127.0.0.1:9"},  # the discard port: refused
        ) as system,
        running_maintainer(settings_for(system)),
    ):
        found = actions("result_found")
        done = await system.submit("echo", {"algorithmParameters": {"kept": True}})
        silent = await system.submit("silent")
        answer = await system.wait_for("echo", done, timeout=30)
        assert answer["status"] == "COMPLETED", answer
        async with system.session.get(answer["resultUri"]) as response:
            assert response.status == 200
            assert await response.json(content_type=None) == {"kept": True}
        answer = await system.wait_for("silent", silent, timeout=30)
        assert answer["status"] == "FAILED" and answer["runErrorMessage"].startswith("NoResult")
        assert actions("result_found") == found + 1


async def test_runs_stuck_new_are_recovered_or_failed_by_their_input(servers: Servers) -> None:
    async with (
        local_system(
            servers,
            templates=[template("echo")],
        ) as system,
        running_maintainer(settings_for(system)),
        open_store(system) as store,
    ):
        model = await system.submit("echo")
        await system.wait_for("echo", model)
        first = await store.get("echo", uuid.UUID(model), SYSTEM)
        assert first is not None

        async def stuck(**payload: object) -> str:
            run_id = uuid.uuid4()
            await store.insert(
                NewRun(
                    algorithm="echo", id=run_id, stage=Stage.NEW, caller="tester",
                    received_by_host="gone", applied_configuration=first.applied_configuration,
                    payload_valid_for=timedelta(hours=1), **payload,  # type: ignore[arg-type]
                )
            )  # fmt: skip
            return str(run_id)

        inline = await stuck(payload_inline=b'{"a": 1}')
        async with open_payloads(system) as payloads:
            await payloads.put("inputs/algorithm=echo/kept", b'{"b": 2}')
        stored = await stuck(payload_uri=f"s3://{servers.s3.bucket}/inputs/algorithm=echo/kept")
        lost = await stuck(
            payload_uri=f"s3://{servers.s3.bucket}/inputs/algorithm=echo/never-written"
        )
        assert (await system.wait_for("echo", inline, timeout=15))["status"] == "COMPLETED"
        assert (await system.wait_for("echo", stored, timeout=15))["status"] == "COMPLETED"
        answer = await system.wait_for("echo", lost, timeout=15)
        assert answer["status"] == "SCHEDULING_TIMEOUT"
        assert answer["runErrorMessage"] == "SubmissionLost: submission lost, please resend"


async def test_runs_past_deadlines_no_job_enforces(servers: Servers) -> None:
    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="off")],
            templates=[template("echo")],
            create_rate={"shard-0": 0.1},
        ) as system,
        running_maintainer(settings_for(system, max_queue_time=2)),
        open_store(system) as store,
    ):
        first = await system.submit("echo")  # takes the only creation token for 10 s
        queued = await system.submit("echo")
        answer = await system.wait_for("echo", queued, timeout=10)
        assert answer["status"] == "DEADLINE_EXCEEDED", answer
        assert "waited in the queue longer than the 2 s allowed" in answer["runErrorMessage"]
        # a Job without activeDeadlineSeconds whose run's deadline passed long ago
        run_id = uuid.uuid4()
        await store.insert(
            NewRun(
                algorithm="echo", id=run_id, stage=Stage.BUFFERED, caller="tester",
                received_by_host="elsewhere", payload_inline=b"{}",
                applied_configuration={"shard": "shard-0", "deadlineSeconds": 1},
                payload_valid_for=timedelta(hours=1),
            )
        )  # fmt: skip
        job = await create_job(system, "shard-0", bare_job("echo", str(run_id)))
        sent = datetime.now(UTC) - timedelta(seconds=30)
        moved = await store.transition(
            Transition(
                "echo", run_id, Stage.RUNNING, shard="shard-0", sent_at=sent,
                job_uid=job["metadata"]["uid"],
            )
        )  # fmt: skip
        assert moved
        answer = await system.wait_for("echo", str(run_id), timeout=10)
        assert answer["status"] == "DEADLINE_EXCEEDED", answer
        assert "past the run's deadline of 1 s" in answer["runErrorMessage"]
        await wait_until(
            lambda: system.cluster["shard-0"].store.get("jobs", "nexus", str(run_id)) is None,
            what="the overdue job deleted",
        )
        assert (await system.result("echo", first))["status"] == "RUNNING"  # pods Pending


async def test_retention_deletes_old_finished_runs_and_their_objects_and_clears_old_keys(
    servers: Servers,
) -> None:
    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="off")],
            templates=[template("echo")],
        ) as system,
        open_store(system) as store,
        open_payloads(system) as payloads,
    ):
        made: dict[str, uuid.UUID] = {}  # old-inline: its result is kept in its checkpoint
        runs = (
            ("old", True), ("old-running", False), ("recent", True), ("old-pointing", True),
            ("old-inline", True),
        )  # fmt: skip
        for name, finished in runs:
            run_id = made[name] = uuid.uuid4()
            await payloads.put(f"inputs/algorithm=echo/{run_id}", b"{}")
            await payloads.put(f"results/algorithm=echo/{run_id}", b"{}")
            await store.insert(
                NewRun(
                    algorithm="echo", id=run_id, stage=Stage.BUFFERED, caller="tester",
                    received_by_host="h", applied_configuration={"shard": "shard-0"},
                    payload_valid_for=timedelta(hours=1), idempotency_key=f"key-{name}",
                    payload_uri=f"s3://{servers.s3.bucket}/inputs/algorithm=echo/{run_id}",
                )
            )  # fmt: skip
            if finished:
                # old-pointing's result names recent's (stored before completions naming
                # another run's object were refused): deleting it must leave recent's alone
                owner = made["recent"] if name == "old-pointing" else run_id
                result = f"s3://{servers.s3.bucket}/results/algorithm=echo/{owner}"
                change = (
                    Transition("echo", run_id, Stage.COMPLETED, result_inline=b'{"r": 1}')
                    if name == "old-inline"
                    else Transition("echo", run_id, Stage.COMPLETED, result_uri=result)
                )
                assert await store.transition(change)
        conn = await asyncpg.connect(servers.postgres_dsn)
        try:
            await conn.execute(
                "UPDATE runs SET received_at = now() - interval '3 days' WHERE id = ANY($1)",
                [made["old"], made["old-running"], made["old-pointing"], made["old-inline"]],
            )
        finally:
            await conn.close()
        # the unfinished one stays as it is: no queue limit, and not queued again
        keep = {"max_queue_time": 0, "queue_grace": 3600}
        async with running_maintainer(settings_for(system, retention=86_400, **keep)):

            async def swept() -> bool:
                old = ("old", "old-pointing", "old-inline")
                return all([await store.get("echo", made[n], SYSTEM) is None for n in old])

            await wait_until(swept, what="the old finished run deleted")
        for kind in ("inputs", "results"):
            assert await payloads.get(f"{kind}/algorithm=echo/{made['old']}") is None
        assert await store.inline_result("echo", made["old-inline"]) is None  # with its row
        for name in ("old-running", "recent"):
            assert await payloads.get(f"inputs/algorithm=echo/{made[name]}") is not None
            assert await store.get("echo", made[name], SYSTEM) is not None
        assert await payloads.get(f"results/algorithm=echo/{made['recent']}") is not None
        old_running = await store.get("echo", made["old-running"], SYSTEM)
        recent = await store.get("echo", made["recent"], SYSTEM)
        assert old_running is not None and old_running.idempotency_key is None
        assert recent is not None and recent.idempotency_key == "key-recent"


async def test_a_queued_run_is_judged_only_on_a_shard_whose_jobs_are_known(
    postgres_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """Queued an hour, past its max_queue_time: while the shard's watch is away the run is
    left as it is (a failed creation may have made its Job); with the Jobs known, a run
    whose Job exists is RUNNING, however long it was queued, and one without is overdue."""
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        made, never = uuid.uuid4(), uuid.uuid4()
        for run_id in (made, never):
            await store.insert(
                NewRun(
                    algorithm="echo", id=run_id, stage=Stage.BUFFERED, caller="tester",
                    received_by_host="gone", applied_configuration={"shard": "shard-0"},
                    payload_valid_for=timedelta(hours=1), payload_inline=b"{}",
                )
            )  # fmt: skip
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute("UPDATE runs SET received_at = now() - interval '1 hour'")
        finally:
            await conn.close()
        watch = ShardWatch(Shard(), Recorded(), MaintainerSection())  # type: ignore[arg-type]
        watch.jobs[str(made)] = "echo"
        sweeper = Sweeper(
            store=store, queues=queues, payloads=None, watches={"shard-0": watch},  # type: ignore[arg-type]
            actions=Actions(store, {}, lambda: True), leading=lambda: True,
            section=MaintainerSection(max_queue_time=60),
        )  # fmt: skip

        async def stages() -> list[Stage]:
            found = [await store.get("echo", run_id, SYSTEM) for run_id in (made, never)]
            return [run.stage for run in found if run]

        await sweeper._stage(Stage.BUFFERED, 0, sweeper._buffered)
        assert await stages() == [Stage.BUFFERED, Stage.BUFFERED]  # the watch is away
        watch.synced = True
        await sweeper._stage(Stage.BUFFERED, 0, sweeper._buffered)
        assert await stages() == [Stage.RUNNING, Stage.DEADLINE_EXCEEDED]
    finally:
        await queues.close()
        await store.close()


async def test_the_leader_counts_the_runs_of_each_unfinished_stage(servers: Servers) -> None:
    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="off")],
            templates=[template("echo")],
            create_rate={"shard-0": 0.001},
        ) as system,
        running_maintainer(settings_for(system, queue_grace=3600)) as maintainer,
    ):
        for _ in range(3):
            await system.submit("echo")
        url = f"http://127.0.0.1:{maintainer.settings.http.port}/metrics"

        async def counted() -> dict[str, float]:
            async with system.session.get(url) as response:
                text = await response.text()
            return {
                s.labels["stage"]: s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "nexus_runs"
            }

        async def three_unfinished() -> bool:
            stages = await counted()
            return stages.get("BUFFERED", 0) + stages.get("RUNNING", 0) == 3

        await wait_until(three_unfinished, what="the census of three unfinished runs")
        assert (await counted())["NEW"] == 0
