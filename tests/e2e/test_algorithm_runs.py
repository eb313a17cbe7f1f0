"""Algorithms written with the SDK, run as real processes by the local cluster, against the
real receiver: a receiver that is unreachable for seconds fails no run that did its work."""

from __future__ import annotations

import asyncio

from harness import Servers
from support.proxy import Proxy
from support.system import TOKEN, local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from nexus_sdk.client import AsyncClient
from nexus_sdk.models import Status

MAYBE_FAIL = ("python", "-m", "nexus_sdk.examples", "maybe-fail")


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
