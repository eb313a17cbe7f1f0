"""Emulated API Priority and Fairness: 429 with Retry-After beyond the limits, and metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from nexus_dev.cluster.emulators import DevCluster
from nexus_dev.cluster.fairness import Limits

from .conftest import NS, connect, fast_spec, job_manifest, trusting


async def test_rate_limit_answers_429_and_counts(tmp_path: Path) -> None:
    spec = fast_spec(mode="off", limits=Limits(mutating_rate=5, mutating_burst=5))
    async with DevCluster([spec], tmp_path) as cluster:
        shard = cluster["shard"]
        async with await connect(shard) as api:
            batch = client.BatchV1Api(api)
            accepted, rejected = 0, []
            for i in range(12):
                try:
                    await batch.create_namespaced_job(NS, job_manifest(f"r{i}"))
                    accepted += 1
                except ApiException as exc:
                    rejected.append(exc)
            assert accepted in (5, 6)
            assert len(rejected) == 12 - accepted
            first = rejected[0]
            assert first.status == 429
            assert first.headers["Retry-After"] == "1"
            assert '"reason":"TooManyRequests"' in first.body
            for _ in range(3):  # reads are not limited here
                await batch.list_namespaced_job(NS)
            async with (
                aiohttp.ClientSession(connector=trusting(shard)) as session,
                session.get(f"{shard.url}/metrics") as r,
            ):
                metrics = await r.text()
    assert (
        f'devcluster_requests_accepted_total{{resource="jobs",verb="create"}} {accepted}.0'
        in metrics
    )
    assert (
        f'devcluster_requests_rejected_total{{reason="rate",resource="jobs",verb="create"}} '
        f"{12 - accepted}.0" in metrics
    )
    assert 'devcluster_requests_accepted_total{resource="jobs",verb="list"} 3.0' in metrics
    assert 'devcluster_objects{resource="jobs"}' in metrics


async def test_inflight_limit(tmp_path: Path) -> None:
    spec = fast_spec(mode="off", limits=Limits(read_inflight=1))
    async with DevCluster([spec], tmp_path) as cluster:
        shard = cluster["shard"]
        # One slow read occupies the only seat: a watch is long-running and does not count,
        # so hold the seat by hand the way a slow list would.
        assert shard.fairness.admit("list", "jobs")
        try:
            async with await connect(shard) as api:
                with pytest.raises(ApiException) as caught:
                    await client.BatchV1Api(api).list_namespaced_job(NS)
                assert caught.value.status == 429
                response = await client.BatchV1Api(api).list_namespaced_job(
                    NS, watch=True, timeout_seconds=1, _preload_content=False
                )
                assert response.status == 200  # watches are not held to the in-flight limit
                response.release()
        finally:
            shard.fairness.release("list")
