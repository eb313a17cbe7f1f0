"""What operators read first, read from ``/metrics`` as Prometheus scrapes it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from harness import Servers
from prometheus_client.parser import text_string_to_metric_families
from support.system import System, local_system, template

from nexus.core.queues import KeySpace
from nexus_dev.cluster.emulators import ShardSpec

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

RUN_ROUTE = "/algorithm/v1.2/run/{algorithm}"
RESULT_ROUTE = "/algorithm/v1.2/results/{algorithm}/requests/{request_id}"


async def scrape(system: System, base: str) -> tuple[str, Samples]:
    """The text of ``base``'s /metrics, and its samples by name and labels."""
    async with system.session.get(f"{base}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_requests_runs_queues_and_creations_are_exported_with_bounded_labels(
    servers: Servers,
) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:
        _, before = await scrape(system, system.url)
        _, receiver_before = await scrape(system, system.receiver_url)
        ids = [await system.submit("echo", {"algorithmParameters": {"i": i}}) for i in range(3)]
        for request_id in ids:
            assert (await system.wait_for("echo", request_id))["status"] == "COMPLETED"
        stranger = str(uuid.uuid4())
        status, _ = await system.get(f"/algorithm/v1.2/results/echo/requests/{stranger}")
        assert status == 404
        status, _ = await system.get(f"/no/such/route/{stranger}")
        assert status == 404
        async with system.session.delete(f"{system.url}{RUN_ROUTE.replace('{algorithm}', 'x')}"):
            pass  # 405
        pod = system.schedulers[0].pod
        text, after = await scrape(system, system.url)

        def grew(name: str, by: float = 1, **labels: str) -> bool:
            return value(after, name, **labels) - value(before, name, **labels) >= by

        http = "nexus_http_request_duration_seconds_count"
        assert grew(http, 3, route=RUN_ROUTE, method="POST", status="202")
        assert grew(http, 1, route=RESULT_ROUTE, method="GET", status="200")
        assert grew(http, 1, route=RESULT_ROUTE, method="GET", status="404")
        assert grew(http, 1, route="(no route)", method="GET", status="404")
        assert grew(http, 1, route=RUN_ROUTE, method="DELETE", status="405")
        assert grew("nexus_run_duration_seconds_count", 3, stage="COMPLETED")
        assert grew("nexus_run_duration_seconds_bucket", 3, stage="COMPLETED", le="+Inf")
        assert grew("nexus_job_creates_total", 3, shard="shard-0", outcome="created")
        assert ("nexus_queue_depth", frozenset({("pod", pod), ("shard", "shard-0")})) in after
        # no label carries a run's id or a client's path
        for request_id in [*ids, stranger]:
            assert request_id not in text
        # the receiver's answers are counted under its own route template (what grew: the
        # registry is the process's, shared with the scheduler and earlier tests' servers)
        _, receiver = await scrape(system, system.receiver_url)
        completions = [
            labels
            for (name, labels), v in receiver.items()
            if name == http
            and ("method", "POST") in labels
            and v > receiver_before.get((name, labels), 0.0)
        ]
        assert any(dict(labels)["route"].startswith("/algorithm/") for labels in completions)
        assert all("{" in dict(labels)["route"] for labels in completions)


@pytest.mark.slow
async def test_the_queue_depth_is_what_waits_on_the_pods_queue(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo")],
        create_rate={"shard-0": 0.001},
    ) as system:
        for _ in range(10):
            await system.submit("echo")
        pod = system.schedulers[0].pod
        ready = KeySpace(servers.redis_prefix).ready(pod, "shard-0")
        client = aioredis.Redis.from_url(servers.redis_url)
        depth, waiting = -1.0, 0
        try:
            for _ in range(60):  # the depth is read once a second
                # what the pod's queue holds: the rest hold the few creation tokens
                waiting = int(await client.zcard(ready))
                _, samples = await scrape(system, system.url)
                depth = value(samples, "nexus_queue_depth", pod=pod, shard="shard-0")
                if depth == waiting:
                    break
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        assert waiting > 0
        assert depth == waiting
