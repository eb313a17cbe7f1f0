"""Children of a cancelled parent are cancelled by the maintainer when the scheduler that
cancelled the parent died before it cancelled them (maintainer/cascading.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from harness import Servers
from maintaining import create_job, open_store, running_maintainer, settings_for, wait_until
from support.system import local_system, template
from test_maintainer_signals import bare_job

from nexus.core.checkpoints import CheckpointStore
from nexus.core.runs import NewRun, ParentRef, Stage, Transition
from nexus.core.visibility import SYSTEM
from nexus_dev.cluster.emulators import ShardSpec


async def stored(
    store: CheckpointStore, stage: Stage = Stage.BUFFERED, parent: uuid.UUID | None = None
) -> uuid.UUID:
    run_id = uuid.uuid4()
    reference: ParentRef | None = (
        {"requestId": str(parent), "algorithmName": "echo"} if parent else None
    )
    await store.insert(
        NewRun(
            algorithm="echo", id=run_id, stage=stage, caller="tester",
            received_by_host="a-scheduler-that-died", payload_inline=b"{}",
            applied_configuration={"shard": "shard-0"}, payload_valid_for=timedelta(hours=1),
            parent=reference,
        )
    )  # fmt: skip
    return run_id


@pytest.mark.slow
async def test_children_left_unfinished_under_a_cancelled_parent_are_cancelled_and_their_jobs_deleted(
    servers: Servers,
) -> None:
    async with (
        local_system(
            servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[template("echo")]
        ) as system,
        # the other sweeps leave these runs alone: in no queue, NEW, running without a pod
        running_maintainer(
            settings_for(system, queue_grace=600, new_grace=600, running_grace=600)
        ) as maintainer,
        open_store(system) as store,
    ):
        # the parent's cancellation was written; its scheduler died before its children's
        parent = await stored(store, Stage.RUNNING)
        cancelled = Transition(
            "echo", parent, Stage.CANCELLED, cause="cancelled", details="not needed (by tester)"
        )
        assert await store.transition(cancelled)
        queued = await stored(store, Stage.BUFFERED, parent)
        new = await stored(store, Stage.NEW, parent)
        running = await stored(store, Stage.BUFFERED, parent)
        job = await create_job(system, "shard-0", bare_job("echo", str(running)))
        assert await store.transition(
            Transition(
                "echo", running, Stage.RUNNING, shard="shard-0", job_uid=job["metadata"]["uid"]
            )
        )
        # a child of a parent still running is left alone
        alive = await stored(store, Stage.RUNNING)
        other = await stored(store, Stage.NEW, alive)
        children = [queued, new, running]

        async def all_cancelled() -> bool:
            runs = [await store.get("echo", child, SYSTEM) for child in children]
            return all(run is not None and run.stage == Stage.CANCELLED for run in runs)

        await wait_until(all_cancelled, timeout=30, what="the children cancelled")
        for child in children:
            run = await store.get("echo", child, SYSTEM)
            assert run is not None and run.failure_details == (
                f"parent run {parent} of algorithm 'echo' was cancelled: not needed (by tester)"
            )
        await wait_until(
            lambda: system.cluster["shard-0"].store.get("jobs", "nexus", str(running)) is None,
            what="the running child's job deleted",
        )
        untouched = await store.get("echo", other, SYSTEM)
        assert untouched is not None and not untouched.stage.terminal
        assert maintainer is not None
