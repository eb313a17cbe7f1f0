"""Retry policies by failure class: parsing, deciding, attempt names, and the store's
compare-and-set that starts exactly one new attempt (nexus/core/retrying.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings
from nexus.core.retrying import (
    GiveUp,
    Retry,
    decide,
    job_name,
    memory_bytes,
    memory_quantity,
    parse_job_name,
    parse_policy,
    record,
)
from nexus.core.runs import NewRun, RunKey, Stage, Transition
from nexus.core.templates import InvalidConfiguration, apply, parse_template, parse_workgroup
from nexus.core.visibility import SYSTEM

WORKGROUP = parse_workgroup({"metadata": {"name": "default"}, "spec": {"cluster": "shard-0"}})


def template_with(policy: Any, memory: str = "1Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": "echo"},
        "spec": {
            "container": {"image": "echo", "versionTag": "1"},
            "computeResources": {"cpuLimit": "1", "memoryLimit": memory},
            "workgroupRef": {"name": "default"},
            "retryPolicy": policy,
        },
    }


def test_a_policy_is_normalised_with_its_defaults_and_kept_with_each_run() -> None:
    policy = {"outOfMemory": {}, "schedulingFailure": {"delaySeconds": 5}, "nodeLost": None}
    template = parse_template(template_with(policy, memory="768Mi"))
    applied = apply(template, {}, {"default": WORKGROUP})
    assert applied["retryPolicy"] == {
        "outOfMemory": {
            "maxRetries": 2,
            "delaySeconds": 0.0,
            "memoryMultiplier": 2.0,
            "maxMemory": "3Gi",  # four times the run's limit
        },
        "schedulingFailure": {"maxRetries": 3, "delaySeconds": 5.0},
    }
    # a run given more memory by its request has the cap of its own limit
    more = apply(template, {"memoryLimit": "1Gi"}, {"default": WORKGROUP})
    assert more["retryPolicy"]["outOfMemory"]["maxMemory"] == "4Gi"
    assert "retryPolicy" not in apply(
        parse_template(template_with(None)), {}, {"default": WORKGROUP}
    )


@pytest.mark.parametrize(
    ("policy", "field", "message"),
    [
        ("often", "retryPolicy", "expected an object"),
        ({"timeout": {}}, "retryPolicy.timeout", "unknown failure class"),
        ({"nodeLost": 3}, "retryPolicy.nodeLost", "expected an object"),
        ({"nodeLost": {"maxRetries": -1}}, "nodeLost.maxRetries", "from 0 to 20"),
        ({"nodeLost": {"maxRetries": 1.5}}, "nodeLost.maxRetries", "whole number"),
        ({"nodeLost": {"maxRetries": True}}, "nodeLost.maxRetries", "expected a number"),
        ({"nodeLost": {"memoryMultiplier": 2}}, "nodeLost.memoryMultiplier", "unknown field"),
        ({"outOfMemory": {"maxMemory": "lots"}}, "outOfMemory.maxMemory", "memory quantity"),
        ({"outOfMemory": {"memoryMultiplier": 0.5}}, "memoryMultiplier", "from 1 to 16"),
        ({"schedulingFailure": {"delaySeconds": "30s"}}, "delaySeconds", "expected a number"),
    ],
)
def test_a_bad_policy_is_refused_naming_its_field(policy: Any, field: str, message: str) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        parse_template(template_with(policy))
    assert field in caught.value.field and message in caught.value.message


def test_each_class_is_retried_as_often_as_its_policy_says() -> None:
    config = {
        "memoryLimit": "512Mi",
        "retryPolicy": parse_policy(
            {
                "outOfMemory": {"maxRetries": 5, "memoryMultiplier": 1.5, "maxMemory": "1Gi"},
                "schedulingFailure": {"maxRetries": 1, "delaySeconds": 30},
            },
            "retryPolicy",
        ),
    }
    assert decide(config, [], "outOfMemory") == Retry(0.0, "768Mi")
    assert decide({**config, "memoryLimit": "768Mi"}, [], "outOfMemory") == Retry(0.0, "1Gi")
    capped = decide({**config, "memoryLimit": "1Gi"}, [], "outOfMemory")
    assert isinstance(capped, GiveUp) and "cap of 1Gi" in capped.why
    assert decide(config, [], "schedulingFailure") == Retry(30.0)
    used = [{"failureClass": "schedulingFailure"}, {"failureClass": "outOfMemory"}]
    spent = decide(config, used, "schedulingFailure")
    assert isinstance(spent, GiveUp) and "retried 1 times" in spent.why
    # classes the policy leaves out are never retried, nor is anything without a policy
    assert decide(config, [], "nodeLost") == GiveUp()
    assert decide(config, [], "algorithmFailure") == GiveUp()
    assert decide({"memoryLimit": "1Gi"}, [], "outOfMemory") == GiveUp()


def test_attempt_names_and_memory_quantities() -> None:
    run = uuid.uuid4()
    assert job_name(run, 1) == str(run) and job_name(run, 12) == f"{run}-a12"
    assert parse_job_name(str(run)) == (run, 1)
    assert parse_job_name(f"{run}-a12") == (run, 12)
    for other in ("nexus-migrate", f"{run}-x", f"{run}-a", str(run).upper(), f"{run}-a2\n"):
        assert parse_job_name(other) is None
    assert memory_bytes("1.5Gi") == 3 * 2**29 and memory_bytes("2G") == 2 * 10**9
    assert memory_quantity(2**31) == "2Gi" and memory_quantity(10**9) == "954Mi"
    with pytest.raises(ValueError, match="not a memory quantity"):
        memory_bytes("1 GB")


# -- the store ---------------------------------------------------------------------------


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=8))
    yield store
    await store.close()


async def running(store: CheckpointStore) -> RunKey:
    run = NewRun(
        algorithm="echo",
        id=uuid.uuid4(),
        stage=Stage.BUFFERED,
        caller="tester",
        received_by_host="test-host",
        applied_configuration={"image": "echo:1", "memoryLimit": "1Gi", "shard": "shard-0"},  # type: ignore[typeddict-item]
        payload_valid_for=timedelta(hours=1),
        payload_inline=b"{}",
    )
    await store.insert(run)
    assert await store.transition(Transition(run.algorithm, run.id, Stage.RUNNING))
    return run.key


async def test_of_many_writers_retrying_one_attempt_exactly_one_starts_the_next(
    store: CheckpointStore,
) -> None:
    key = await running(store)
    now = datetime.now(UTC)
    failed = record(key.id, 1, "outOfMemory", "OOMKilled", "killed", now, memory="1Gi")
    later = now + timedelta(seconds=30)
    outcomes = await asyncio.gather(
        *(store.retry(key, 1, failed, memory="2Gi", retry_at=later) for _ in range(12))
    )
    assert sorted(outcomes, key=str) == [None] * 11 + ["shard-0"]
    run = await store.get(key.algorithm, key.id, SYSTEM)
    assert run is not None
    assert (run.stage, run.attempt, run.retry_at) == (Stage.BUFFERED, 2, later)
    assert run.applied_configuration["memoryLimit"] == "2Gi"
    assert run.retries == [failed]
    # what is said about attempt 1 afterwards changes nothing of attempt 2
    late = Transition(key.algorithm, key.id, Stage.FAILED, cause="OOMKilled", at_attempt=1)
    assert not await store.transition(late)
    assert await store.transition_skipping_held([late]) == [False]
    assert await store.retry(key, 1, failed) is None
    assert await store.transition(Transition(key.algorithm, key.id, Stage.RUNNING, at_attempt=2))
    # a finished run is never retried
    assert await store.transition(Transition(key.algorithm, key.id, Stage.COMPLETED))
    assert await store.retry(key, 2, failed) is None


async def test_back_to_buffered_only_with_a_new_attempt_even_by_raw_sql(
    store: CheckpointStore, postgres_dsn: str
) -> None:
    key = await running(store)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="may not move from RUNNING"):
            await conn.execute("UPDATE runs SET lifecycle_stage = 'BUFFERED' WHERE id = $1", key.id)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "UPDATE runs SET lifecycle_stage = 'BUFFERED', run_attempt = run_attempt + 2"
                " WHERE id = $1",
                key.id,
            )
        await conn.execute(
            "UPDATE runs SET lifecycle_stage = 'BUFFERED', run_attempt = run_attempt + 1"
            " WHERE id = $1",
            key.id,
        )
    finally:
        await conn.close()
