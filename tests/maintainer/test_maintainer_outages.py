"""Outages of the maintainer itself or of its view of a shard are not the runs' fault."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from harness import Servers
from maintaining import (
    delete_job,
    faulty,
    open_store,
    running_maintainer,
    settings_for,
    wait_until,
)
from prometheus_client import REGISTRY
from support.proxy import Proxy, proxied_kubeconfigs
from support.standin import refused_address, stand_in_shard
from support.system import System, local_system, template
from test_maintainer_filters import COMPLETE, FAILED, RUN, Recorded, Shard, job

from maintainer.actions import Act, Actions
from maintainer.settings import MaintainerSection, MaintainerSettings
from maintainer.shardwatch import ShardWatch, Timer
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings
from nexus.core.runs import NewRun, Stage, Transition
from nexus.core.shards import ShardClient, WatchEvent
from nexus.core.visibility import SYSTEM
from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.kubelet import KubeletSettings
from nexus_dev.cluster.simulation import SimulationSettings

SLOW = ShardSpec(name="shard-slow", simulation=SimulationSettings(duration="fixed:6"))
FAST = ShardSpec(
    name="shard-fast",
    simulation=SimulationSettings(duration="fixed:0.2"),
    kubelet=KubeletSettings(image_pull_backoff=0.2),
)
GRACE = 2.0


async def statuses(system: System, runs: dict[str, str]) -> dict[str, str]:
    return {i: (await system.result(a, i))["status"] for i, a in runs.items()}


@pytest.mark.slow
async def test_a_maintainer_down_longer_than_its_timeouts_fails_no_run_for_the_gap(
    servers: Servers,
) -> None:
    async with (
        local_system(
            servers,
            shards=[SLOW, FAST],
            workgroups=[("default", "shard-slow"), ("fast", "shard-fast")],
            templates=[
                template("echo"),
                faulty(template("silent", workgroup="fast"), "silent"),
                faulty(template("image", workgroup="fast"), "image-pull"),
            ],
        ) as system,
        open_store(system) as store,
    ):
        settings = settings_for(system, completion_grace=GRACE, image_pull_grace=GRACE)
        async with running_maintainer(settings):
            slow = [await system.submit("echo") for _ in range(5)]
            for request_id in slow:
                await system.wait_for("echo", request_id, "RUNNING")
        # the maintainer is away for twice its longest timeout, while runs keep going
        silent = await system.submit("silent")
        image = await system.submit("image")
        more = [await system.submit("echo") for _ in range(5)]
        await asyncio.sleep(2 * GRACE)
        assert (await system.result("silent", silent))["status"] == "RUNNING"  # the Job is done
        back = time.time()
        async with running_maintainer(replace_instance(settings)):
            answer = await system.wait_for("silent", silent, timeout=15)
            assert answer["status"] == "FAILED" and answer["runErrorMessage"].startswith("NoResult")
            answer = await system.wait_for("image", image, timeout=15)
            assert answer["status"] == "SCHEDULING_TIMEOUT", answer
            for request_id in slow + more:
                assert (await system.wait_for("echo", request_id, timeout=20))[
                    "status"
                ] == "COMPLETED"
        # each grace period counted from when the returning maintainer saw the state
        for algorithm, request_id in (("silent", silent), ("image", image)):
            run = await store.get(algorithm, uuid.UUID(request_id), SYSTEM)
            assert run is not None
            waited = run.last_modified.timestamp() - back
            assert waited >= GRACE - 0.1, (algorithm, waited)


@pytest.mark.slow
async def test_a_shard_unreachable_for_a_while_then_back(servers: Servers) -> None:
    shard = ShardSpec(name="shard-0", simulation=SimulationSettings(duration="fixed:5"))
    async with local_system(
        servers,
        shards=[shard],
        templates=[template("echo"), faulty(template("hang"), "hang")],
    ) as system:
        proxy = Proxy(system.cluster["shard-0"].port)
        await proxy.start()
        try:
            kubeconfigs = proxied_kubeconfigs(
                system, servers.tmp_path / "through-proxy", {"shard-0": proxy}
            )
            settings = settings_for(system, kubeconfigs)
            async with running_maintainer(settings) as running:
                runs = {await system.submit("echo"): "echo" for _ in range(5)}
                lost = await system.submit("hang")
                for request_id, algorithm in {**runs, lost: "hang"}.items():
                    await system.wait_for(algorithm, request_id, "RUNNING")

                def synced() -> bool:
                    term = running.maintainer.term
                    return term is not None and term.watches["shard-0"].synced

                await wait_until(synced, what="the shard's jobs listed")
                reconnects = reconnect_count()
                proxy.cut()
                await delete_job(system, "shard-0", lost)  # behind Nexus's back, unseen
                await asyncio.sleep(3)  # longer than every grace period and two sweeps
                assert not synced()
                assert set((await statuses(system, runs)).values()) == {"RUNNING"}
                assert (await system.result("hang", lost))["status"] == "RUNNING"
                proxy.restore()
                answer = await system.wait_for("hang", lost, timeout=15)
                assert answer["status"] == "FAILED", answer
                assert answer["runErrorMessage"].startswith("JobLost: ")
                for request_id in runs:
                    assert (await system.wait_for("echo", request_id, timeout=15))[
                        "status"
                    ] == "COMPLETED"
                await wait_until(synced, what="the shard's jobs current again")
                assert reconnect_count() > reconnects
        finally:
            await proxy.stop()


def reconnect_count() -> float:
    value = REGISTRY.get_sample_value(
        "nexus_maintainer_watch_reconnects_total", {"shard": "shard-0", "resource": "jobs"}
    )
    return value or 0.0


def replace_instance(settings: MaintainerSettings) -> MaintainerSettings:
    """The same settings for another process (its own name in the lease)."""
    section = replace(settings.maintainer, instance=f"maintainer-{uuid.uuid4().hex[:6]}")
    return replace(settings, maintainer=section)


async def test_a_recheck_the_shard_throttles_or_refuses_is_asked_again_later(
    tmp_path: Path,
) -> None:
    """The GETs that confirm two lost Jobs are answered 429, then 403: the check loop goes
    on, asks nothing more until the Retry-After has passed, and concludes for both once the
    shard answers 404."""
    answers = [(429, {"Retry-After": "1"}), (403, {}), (404, {})]
    asked: list[tuple[float, str]] = []

    async def get_job(request: web.Request) -> web.Response:
        asked.append((time.monotonic(), request.match_info["name"]))
        status, headers = answers.pop(0) if len(answers) > 1 else answers[0]
        body = {"kind": "Status", "apiVersion": "v1", "code": status, "message": "no"}
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/apis/batch/v1/namespaces/runs/jobs/{name}", get_job)
    other = str(uuid.uuid4())
    async with stand_in_shard(app, tmp_path) as kubeconfig:
        client = await ShardClient.from_kubeconfig("shard-0", kubeconfig, "runs", timeout=2.0)
        actions = Recorded()
        section = MaintainerSection(check_interval=0.05)
        watch = ShardWatch(client, actions, section)  # type: ignore[arg-type]
        for name in (RUN, other):
            watch._deleted[name] = Timer(due=0.0, algorithm="echo")
        stopping = asyncio.Event()
        checking = asyncio.create_task(watch._check(stopping))
        try:
            for _ in range(100):
                if len(actions.acts) == 2 or checking.done():
                    break
                await asyncio.sleep(0.05)
        finally:
            stopping.set()
            await checking  # raises if the loop died
            await client.close()
    assert sorted(str(a.change.id) for a in actions.acts) == sorted([RUN, other])
    assert {a.action for a in actions.acts} == {"job_lost"}
    first = asked[0][0]
    assert len(asked) == 4 and all(t - first >= 0.9 for t, _ in asked[1:])  # the Retry-After
    assert [name for _, name in asked[:3]] == [RUN] * 3  # in due order, each waiting its turn


async def test_a_change_never_tried_keeps_its_job(postgres_dsn: str, tmp_path: Path) -> None:
    """An action that deletes a Job with its change does so only once the change was
    tried: not when another writer held the run every time (the run may be running)."""
    deleted: list[str] = []

    async def delete_job(request: web.Request) -> web.Response:
        deleted.append(request.match_info["name"])
        return web.json_response({"kind": "Status", "code": 200}, status=200)

    app = web.Application()
    app.router.add_delete("/apis/batch/v1/namespaces/runs/jobs/{name}", delete_job)
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    held, free = uuid.uuid4(), uuid.uuid4()
    for run_id in (held, free):
        await store.insert(
            NewRun(
                algorithm="echo", id=run_id, stage=Stage.BUFFERED, caller="tester",
                received_by_host="h", applied_configuration={}, payload_inline=b"{}",
                payload_valid_for=timedelta(hours=1),
            )
        )  # fmt: skip
        assert await store.transition(Transition("echo", run_id, Stage.RUNNING, job_uid="u"))
    other = await asyncpg.connect(postgres_dsn)
    try:
        async with stand_in_shard(app, tmp_path) as kubeconfig:
            client = await ShardClient.from_kubeconfig("shard-0", kubeconfig, "runs")
            actions = Actions(store, {"shard-0": client}, leading=lambda: True)
            overdue = {}
            for run_id in (held, free):
                change = Transition("echo", run_id, Stage.DEADLINE_EXCEEDED, expect=Stage.RUNNING)
                overdue[run_id] = Act(change, "job_deadline", "shard-0", delete_job=True)
            stopping = asyncio.Event()
            writing = asyncio.create_task(actions.run(stopping))
            async with other.transaction():
                await other.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", held)
                given_up = unchanged("job_deadline")
                actions.submit(overdue[held])
                actions.submit(overdue[free])
                await wait_until(
                    lambda: unchanged("job_deadline") > given_up, what="every try spent"
                )
            stopping.set()
            await writing
            await client.close()
    finally:
        await other.close()
    stored = {run_id: await store.get("echo", run_id, SYSTEM) for run_id in (held, free)}
    await store.close()
    assert deleted == [str(free)]
    assert [stored[r].stage for r in (held, free) if stored[r]] == [
        Stage.RUNNING,
        Stage.DEADLINE_EXCEEDED,
    ]


async def test_a_success_is_remembered_past_a_relist_that_finds_its_job_gone() -> None:
    """A Job succeeded, then was deleted while the watch was away: the relist that no
    longer lists it keeps its success for the completion grace, as a deletion would."""
    watch = ShardWatch(Shard(), Recorded(), MaintainerSection())  # type: ignore[arg-type]
    await watch._on_job(WatchEvent("ADDED", job([COMPLETE])))
    assert watch.succeeded_at(RUN) is not None
    await watch._sync_jobs([])
    assert watch.succeeded_at(RUN) is not None and RUN not in watch.jobs


async def test_a_verdict_the_full_action_queue_dropped_is_reached_again_by_a_relist() -> None:
    """A long store outage fills the action queue; a failed Job's verdict dropped then is
    not remembered as given, so the relist after the outage gives it (not JobLost at the
    Job's TTL, with the real cause lost)."""
    actions = Recorded(refuse=1)
    watch = ShardWatch(Shard(), actions, MaintainerSection())  # type: ignore[arg-type]
    failed = job([FAILED])
    await watch._on_job(WatchEvent("MODIFIED", failed))
    assert actions.acts == []
    await watch._sync_jobs([failed])
    assert [a.change.to for a in actions.acts] == [Stage.DEADLINE_EXCEEDED]
    await watch._sync_jobs([failed])  # once given, not again
    assert len(actions.acts) == 1


def unchanged(action: str) -> float:
    value = REGISTRY.get_sample_value("nexus_maintainer_unchanged_total", {"action": action})
    return value or 0.0


@pytest.mark.slow
@pytest.mark.looptime
async def test_the_action_writer_outlasts_a_store_outage_of_any_length(
    caplog: pytest.LogCaptureFixture, looptime: float
) -> None:
    """Nothing answers at the store's address: the writer fails 1,100 batches in a row,
    three hours of outage on a fake clock, where a back-off with an uncapped exponent
    overflowed at 1,024 and stopped the maintainer. It keeps what it was given, waits
    its back-off every time (10 s at the cap), and stops cleanly when told to."""
    caplog.set_level(logging.WARNING, logger="maintainer.actions")
    store = await CheckpointStore.open(
        PostgresSettings(dsn=f"postgresql://nexus@{refused_address()}/nexus", pool_min_size=0)
    )
    actions = Actions(store, {}, leading=lambda: True)
    change = Transition("echo", uuid.uuid4(), Stage.FAILED, cause="JobLost", expect=Stage.RUNNING)
    assert actions.submit(Act(change, "job_lost", "shard-0"))

    def failed_writes() -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith("cannot write"))

    stopping = asyncio.Event()
    writing = asyncio.create_task(actions.run(stopping))
    try:
        while failed_writes() < 1_100:
            assert not writing.done(), writing
            await asyncio.sleep(60)
        assert not writing.done(), writing
        assert actions.waiting == 1  # kept for the store's return
        # 0.4 + 0.8 + 1.6 + 3.2 + 6.4, then 10 s between every two tries: no busy loop
        assert looptime >= 12.4 + 10.0 * (failed_writes() - 6)
    finally:
        stopping.set()
        await writing  # returns: no error, however many failures
        await store.close()


@pytest.mark.slow
@pytest.mark.looptime
async def test_a_shard_refusing_rechecks_for_days_is_asked_ever_less_often(
    tmp_path: Path, looptime: float
) -> None:
    """Every GET that would confirm a lost Job is refused (403) — missing RBAC, say —
    1,100 times in a row, days on a fake clock: the re-checks wait twice as long each
    time up to a minute, where an uncapped exponent overflowed at 1,024 and stopped the
    maintainer, and the check loop stops cleanly when told to."""
    asked: list[float] = []
    loop = asyncio.get_running_loop()

    async def get_job(request: web.Request) -> web.Response:
        asked.append(loop.time())
        body = {"kind": "Status", "apiVersion": "v1", "code": 403, "message": "forbidden"}
        return web.json_response(body, status=403)

    app = web.Application()
    app.router.add_get("/apis/batch/v1/namespaces/runs/jobs/{name}", get_job)
    async with stand_in_shard(app, tmp_path) as kubeconfig:
        client = await ShardClient.from_kubeconfig("shard-0", kubeconfig, "runs", timeout=2.0)
        actions = Recorded()
        section = MaintainerSection(check_interval=10.0)
        watch = ShardWatch(client, actions, section)  # type: ignore[arg-type]
        watch._deleted[RUN] = Timer(due=0.0, algorithm="echo")
        stopping = asyncio.Event()
        checking = asyncio.create_task(watch._check(stopping))
        try:
            while len(asked) < 1_100:
                assert not checking.done(), checking
                await asyncio.sleep(600)
        finally:
            stopping.set()
            await checking  # raises if the loop died
            await client.close()
    gaps = [round(b - a) for a, b in itertools.pairwise(asked)]
    assert gaps[:2] == [20, 40]  # each refusal doubles the pause ...
    assert set(gaps[2:]) == {60}  # ... up to a minute, for good
    assert actions.acts == []  # nothing concluded from a refusal
