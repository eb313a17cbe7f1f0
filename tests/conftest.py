"""Fixtures: real PostgreSQL, Redis and S3 for every test, isolated per test.

The servers are started once per session (:class:`nexus_dev.servers.services.LocalServices`,
in parallel, in about a second) unless environment variables name running ones (``PGHOST``,
``NEXUS_REDIS_URL``, ``NEXUS_S3_ENDPOINT_URL``; see that module). Each test gets its own
slice of them, so tests never see each other's data:

* ``postgres_dsn`` — a fresh, fully migrated database (a copy of a template migrated once
  per session), dropped afterwards; ``empty_database_dsn`` — the same without a schema;
* ``redis_url`` + ``redis_prefix`` — a key prefix of its own; its keys are deleted after;
* ``s3`` — a bucket of its own (:class:`harness.S3Bucket`), emptied and deleted after;
* ``private_postgres``, ``private_redis``, ``private_s3`` — servers of its own, for fault
  tests that kill or restart them.

Strictness (with ``filterwarnings = error`` in pyproject): a never-awaited coroutine or an
unclosed resource fails the test, and so does an async test that leaves asyncio tasks
running after its fixtures are torn down.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from harness import (
    S3Bucket,
    Servers,
    TestDatabases,
    bucket_name,
    describe_tasks,
    leaked_tasks,
    unique_name,
)
from xdist.remote import Producer
from xdist.scheduler import LoadGroupScheduling

from nexus_dev.servers.services import LocalPostgres, LocalRedis, LocalS3, LocalServices


def pytest_configure(config: pytest.Config) -> None:
    # pytest-asyncio (1.5) asks for "the current event loop" around async tests, and on
    # Python 3.11 that quietly creates one, never closed, if nothing was ever set: an
    # "unclosed event loop" ResourceWarning, an error here, lands on some later test
    # (pytest-dev/pytest-asyncio#724). Setting "no loop" once makes the question fail
    # instead, which pytest-asyncio handles.
    asyncio.set_event_loop(None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, the rest in their order (see :class:`_Scheduling`)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


SHARING_MODULES = frozenset(
    {
        "tests/faults/test_faults.py",  # one nexus dev for every fault
        "tests/dev/test_dev_restarts.py",  # two nexus dev, each for several tests
        "tests/dev/test_kubectl.py",  # a devcluster of two shards
        "tests/test_distributions.py",  # three wheels, and the SDK's own environment
    }
)
"""Modules whose tests share what is costly to make (module-scoped fixtures): each runs
on one worker, so that it is made once, not once per worker its tests land on."""


class _Scheduling(LoadGroupScheduling):
    """How ``-n`` hands out the tests (instead of pytest-xdist's ``--dist load``, which
    queues runs of consecutive tests on each worker in file order, so that the last long
    test often finishes alone while the others wait): a worker gets the next
    test, or group of tests, whenever it is nearly idle; groups go out first, then the
    tests in their collection order, the slow ones first. Started first, the long tests
    overlap and the short ones fill the gaps.

    A group is a module of :data:`SHARING_MODULES`, or the tests marked ``xdist_group``
    with one name: that mark works with pytest-xdist 3.8 on pytest up to 8 only (it
    renames ``item._nodeid``, which pytest 9 no longer reads).
    """

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in SHARING_MODULES else super()._split_scope(nodeid)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> _Scheduling | None:
    """:class:`_Scheduling` for ``-n`` (``--dist load``, its default); another ``--dist``
    as asked."""
    return _Scheduling(config, log) if config.getvalue("dist") == "load" else None


# -- session-wide servers ---------------------------------------------------------------


@pytest.fixture(scope="session")
def local_services() -> Iterator[LocalServices]:
    """PostgreSQL, Redis and S3 for the whole session (external ones when named)."""
    services = LocalServices(env=os.environ)
    services.start()
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="session")
def test_databases(local_services: LocalServices) -> Iterator[TestDatabases]:
    # An external server may be shared with other sessions: the template is this one's.
    external = local_services.postgres.external
    template = f"nexus_template_{os.getpid()}" if external else "nexus_template"
    databases = TestDatabases(local_services.postgres, template)
    databases.create_template()
    try:
        yield databases
    finally:
        if external:
            databases.drop_template()


# -- per-test slices --------------------------------------------------------------------


@pytest.fixture
def postgres_dsn(test_databases: TestDatabases, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh database with the current schema, for this test alone."""
    info = test_databases.create(request.node.name)
    try:
        yield info.dsn
    finally:
        test_databases.drop(info.database)


@pytest.fixture
def empty_database_dsn(
    test_databases: TestDatabases, request: pytest.FixtureRequest
) -> Iterator[str]:
    """DSN of a fresh database without any schema (for testing migrations themselves)."""
    info = test_databases.create(request.node.name, migrated=False)
    try:
        yield info.dsn
    finally:
        test_databases.drop(info.database)


@pytest.fixture
def redis_url(local_services: LocalServices) -> str:
    return local_services.redis.info.url


@pytest.fixture
def redis_prefix(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = unique_name("test", request.node.name) + ":"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def s3(local_services: LocalServices, request: pytest.FixtureRequest) -> Iterator[S3Bucket]:
    """A fresh bucket with the endpoint, credentials and region to reach it."""
    bucket = S3Bucket(local_services.s3.info, bucket_name(request.node.name))
    bucket.create()
    try:
        yield bucket
    finally:
        bucket.delete()


# -- private servers for fault tests ----------------------------------------------------


@pytest.fixture
def servers(
    tmp_path: Path, postgres_dsn: str, redis_url: str, redis_prefix: str, s3: S3Bucket
) -> Servers:
    """The test's own directory, database, Redis key prefix and bucket, together."""
    return Servers(tmp_path, postgres_dsn, redis_url, redis_prefix, s3)


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of this test's own (trust auth, database ``postgres``), never
    an external one: kill it, restart it, nobody else notices."""
    server = LocalPostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[LocalRedis]:
    server = LocalRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_s3() -> Iterator[LocalS3]:
    server = LocalS3()
    server.start()
    try:
        yield server
    finally:
        server.close()


# -- strictness -------------------------------------------------------------------------

LEAK_GRACE = 1.0
"""Seconds a task still running after the test may take to end by itself before it counts
as leaked: long enough for a closing connection, far shorter than any real leak."""


@pytest.fixture(autouse=True)
def _async_tests_leave_no_tasks(request: pytest.FixtureRequest) -> None:
    """Async tests get the task-leak check (sync tests have no loop to leak into)."""
    if pytest_asyncio.is_async_test(request.node):
        request.getfixturevalue("_no_leaked_tasks")


@pytest_asyncio.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if tasks it started are still running once its fixtures are gone."""
    before = asyncio.all_tasks()
    yield
    leaked = leaked_tasks(before)
    if leaked:  # tasks that are finishing (a cancelled one, a closing connection) may end
        await asyncio.wait(leaked, timeout=LEAK_GRACE)
        leaked = [task for task in leaked if not task.done()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.wait(leaked, timeout=5)
        pytest.fail(f"the test left asyncio tasks running: {describe_tasks(leaked)}")
