"""From POST to result through real PostgreSQL, Redis, SeaweedFS and the local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import S3Bucket
from support.system import local_system, template

from nexus.devcluster.shards import ShardSpec


@pytest.mark.parametrize("mode", ["simulated", "process"])
async def test_echo_completes_and_its_result_is_its_parameters(
    tmp_path: Path, postgres_dsn: str, redis_url: str, redis_prefix: str, s3: S3Bucket, mode: str
) -> None:
    async with local_system(
        tmp_path,
        postgres_dsn=postgres_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        s3=s3,
        shards=[ShardSpec(name="shard-0", mode=mode)],  # type: ignore[arg-type]
        templates=[template("echo")],
    ) as system:
        parameters = {"x": 1, "text": "héllo", "nested": {"list": [1, 2, 3]}}
        request_id = await system.submit("echo", {"algorithmParameters": parameters})
        answer = await system.wait_for("echo", request_id)
        assert answer["status"] == "COMPLETED", answer
        assert answer["runErrorMessage"] is None
        async with system.session.get(answer["resultUri"]) as response:
            assert response.status == 200
            assert await response.json() == parameters
