"""Algorithms written with the SDK, run as real processes by the local cluster, against the
real receiver and scheduler: a receiver that is unreachable for seconds fails no run that
did its work; small results travel inline, large ones through S3; child runs started with
a run's credential belong to its caller, and that credential starts nothing else."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from harness import Servers
from support.proxy import Proxy
from support.system import NAMESPACE, SIGNING_KEY, TOKEN, System, local_system, template

from nexus.core.signing import Signer
from nexus_dev.cluster.emulators import ShardSpec
from nexus_sdk.client import AsyncClient
from nexus_sdk.errors import Forbidden, Unauthorized
from nexus_sdk.models import Status

MAYBE_FAIL = ("python", "-m", "nexus_sdk.examples", "maybe-fail")


@pytest.mark.slow
async def test_a_completion_is_delivered_once_the_receiver_is_back(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="process")],
        templates=[template("echo"), template("maybe-fail", command=MAYBE_FAIL)],
        schedulers=0,
    ) as system:
        proxy = Proxy(int(system.receiver_url.rsplit(":", 1)[1]))
        await proxy.start()
        try:
            await system.start_scheduler(receiver_url=f"http://127.0.0.1:{proxy.port}")
            async with AsyncClient(system.balancer_url, TOKEN) as nexus:
                proxy.cut()  # the receiver is unreachable: a rolling update, say
                done = await nexus.submit("echo", {"made": "while the receiver was away"})
                failing = await nexus.submit("maybe-fail", {"fail": "as asked"})
                await asyncio.sleep(4)  # the algorithms finish and keep trying to report
                for run_id, algorithm in ((done, "echo"), (failing, "maybe-fail")):
                    assert not (await nexus.status(algorithm, run_id)).finished
                proxy.restore()
                assert await nexus.result("echo", done, timeout=60) == {
                    "made": "while the receiver was away"
                }
                state = await nexus.wait("maybe-fail", failing, timeout=60)
                assert state.status is Status.FAILED
                assert state.error_message == "RequestedFailure: as asked"
        finally:
            await proxy.stop()


async def test_small_results_inline_and_large_ones_in_storage_both_read_back(
    servers: Servers,
) -> None:
    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="process")],
            templates=[template("echo")],
            section={"result_inline_limit": 1000},
        ) as system,
        AsyncClient(system.balancer_url, TOKEN) as nexus,
    ):
        small = {"small": "é" * 10}
        large = {"large": "x" * 5000}
        small_id = await nexus.submit("echo", small)
        large_id = await nexus.submit("echo", large)
        assert await nexus.result("echo", small_id, timeout=60) == small
        assert await nexus.result("echo", large_id, timeout=60) == large

        small_state = await nexus.status("echo", small_id)
        large_state = await nexus.status("echo", large_id)
        assert small_state.result_uri and large_state.result_uri
        # the small one never touched object storage: the scheduler serves it, signed
        assert small_state.result_uri.startswith(system.balancer_url)
        assert "/content?" in small_state.result_uri
        assert large_state.result_uri.startswith(servers.s3.endpoint_url)
        assert system.bucket is not None
        stored = [key for key in system.bucket.keys() if "results/" in key]  # noqa: SIM118
        assert any(large_id in key for key in stored) and not any(small_id in k for k in stored)
        fetched = await nexus.fetch_result(small_state)
        assert fetched.content_type is not None and "json" in fetched.content_type


FAN_OUT = ("python", "-m", "nexus_sdk.examples", "fan-out")


async def test_an_algorithm_maps_child_runs_that_belong_to_its_caller(servers: Servers) -> None:
    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="process")],
            templates=[template("echo"), template("fan-out", command=FAN_OUT, deadline=300)],
        ) as system,
        AsyncClient(system.balancer_url, TOKEN) as nexus,
    ):
        inputs = [{"part": n} for n in range(3)]
        parent = await nexus.submit("fan-out", {"algorithm": "echo", "inputs": inputs})
        assert await nexus.result("fan-out", parent, timeout=120) == inputs

        job = system.cluster["shard-0"].store.get("jobs", NAMESPACE, parent)
        assert job is not None
        env = {
            e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["NEXUS__SCHEDULER_URL"] == system.balancer_url
        credential = env["NEXUS__RUN_CREDENTIAL"]
        assert credential.startswith(f"nexus-run.fan-out.{parent}.")
        # the children are the caller's own runs, each naming the parent
        children = await children_of(system, parent)
        assert len(children) == 3
        for child in children:
            metadata = await nexus.metadata("echo", child)
            assert metadata.caller == "tester"
            assert metadata.raw["parent"] == {"requestId": parent, "algorithmName": "fan-out"}


async def children_of(system: System, parent: str) -> list[str]:
    connection = await asyncpg.connect(system.postgres_dsn)
    try:
        rows = await connection.fetch("SELECT id FROM runs WHERE parent->>'requestId' = $1", parent)
    finally:
        await connection.close()
    return [str(row["id"]) for row in rows]


async def test_a_run_credential_starts_children_of_its_run_only(servers: Servers) -> None:
    signer = Signer([SIGNING_KEY])
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), ShardSpec(name="shard-1", mode="off")],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("other"), template("parked", workgroup="parked")],
    ) as system:
        async with AsyncClient(system.balancer_url, TOKEN) as nexus:
            parent = await nexus.submit("parked", {})  # unfinished: its pod never starts
            elsewhere = await nexus.submit("echo", {})
        later = int(time.time()) + 600
        credential = signer.run_credential("parked", parent, "tester", later)
        async with AsyncClient(system.balancer_url, credential) as run:
            child = await run.submit("echo", {"child": True})  # parentRequest filled in
            metadata = await run.metadata("echo", child)
            assert metadata.raw["parent"] == {"requestId": parent, "algorithmName": "parked"}
            assert metadata.caller == "tester"
            with pytest.raises(Forbidden, match="children of run"):
                await run.submit(
                    "echo", {}, parent={"requestId": elsewhere, "algorithmName": "echo"}
                )
        # the caller's rights come along: "limited" may run echo alone
        limited = signer.run_credential("parked", parent, "limited", later)
        async with AsyncClient(system.balancer_url, limited) as run:
            with pytest.raises(Forbidden, match="may not run algorithm 'other'"):
                await run.submit("other", {})
        expired = signer.run_credential("parked", parent, "tester", int(time.time()) - 1)
        forged = credential[:-4] + ("AAAA" if not credential.endswith("AAAA") else "BBBB")
        other_caller = credential.replace(".dGVzdGVy.", ".bGltaXRlZA.")  # "limited"
        for bad in (expired, forged, other_caller):
            async with AsyncClient(system.balancer_url, bad) as run:
                with pytest.raises(Unauthorized, match="run credential is not valid"):
                    await run.submit("echo", {})
