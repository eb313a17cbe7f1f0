"""The fixtures keep their promises: private slices, clean-up, and strictness."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
import redis
from harness import S3Bucket, TestDatabases

from nexus_dev.servers.services import LocalServices

pytest_plugins = ["pytester"]

TESTS = Path(__file__).parent
INNER_TESTS = """
import asyncio, json, os, pathlib
import asyncpg, redis

async def test_uses_every_slice(postgres_dsn, redis_url, redis_prefix, s3):
    conn = await asyncpg.connect(postgres_dsn)
    await conn.execute("CREATE TABLE mine (x int)")
    await conn.close()
    client = redis.Redis.from_url(redis_url)
    client.set(redis_prefix + "k", "v")
    client.close()
    s3.put("k", b"v")
    record = {"database": postgres_dsn.rsplit("/", 1)[1], "prefix": redis_prefix,
              "bucket": s3.bucket}
    pathlib.Path(os.environ["HARNESS_RECORD"]).write_text(json.dumps(record))

async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(30), name="leaky-task")

async def test_never_awaits_a_coroutine():
    asyncio.sleep(0)

def test_sync_test():
    pass

async def test_tidy_async_test():
    task = asyncio.create_task(asyncio.sleep(30))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
"""


async def test_postgres_dsn_is_migrated_and_private(
    postgres_dsn: str, test_databases: TestDatabases
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        await conn.execute("CREATE TABLE only_here (x int)")
    finally:
        await conn.close()
    assert version == test_databases.schema_version
    assert postgres_dsn.rsplit("/", 1)[1] != test_databases.template

    other = test_databases.create("other")
    try:
        conn = await asyncpg.connect(other.dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('only_here')") is None
        finally:
            await conn.close()
    finally:
        test_databases.drop(other.database)


def test_s3_bucket_is_fresh(s3: S3Bucket) -> None:
    assert s3.keys() == []
    s3.put("a", b"1")
    assert s3.keys() == ["a"]


def test_fixtures_clean_up_and_fail_sloppy_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, local_services: LocalServices
) -> None:
    """An inner session, pointed at this session's servers, uses every slice and breaks the
    rules; afterwards its slices are gone and its sloppy tests have failed."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyprojecttoml(
        "[tool.pytest.ini_options]\n"
        'asyncio_mode = "auto"\n'
        'asyncio_default_fixture_loop_scope = "function"\n'
        'asyncio_default_test_loop_scope = "function"\n'
        'filterwarnings = ["error", "error::RuntimeWarning", "error::ResourceWarning"]\n'
    )
    pytester.makepyfile(test_inner=INNER_TESTS)
    record = pytester.path / "record.json"
    for name, value in local_services.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HARNESS_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", str(TESTS))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)

    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("errors")) == (4, 1, 1)
    result.stdout.fnmatch_lines(["FAILED *test_never_awaits_a_coroutine - *Unraisable*"])
    result.stdout.fnmatch_lines(["*left asyncio tasks running: leaky-task*"])

    used = json.loads(record.read_text())
    datname = local_services.postgres.psql(
        f"SELECT count(*) FROM pg_database WHERE datname = '{used['database']}'"
    )
    assert datname == "0"
    client = redis.Redis.from_url(local_services.redis.info.url)
    try:
        assert list(client.scan_iter(match=used["prefix"] + "*")) == []
    finally:
        client.close()
    assert local_services.s3.info.call("HEAD", used["bucket"]).status == 404
