"""What the test fixtures are made of: per-test databases, key prefixes, buckets, task checks.

The fixtures in ``conftest.py`` are thin; the work is here so that it can be read (and
reused by benchmarks) without pytest in the way.

* :class:`TestDatabases` migrates one template database per session and clones it per
  test with ``CREATE DATABASE … TEMPLATE``, which copies files instead of replaying
  migrations: a fresh, fully migrated database costs tens of milliseconds.
* :class:`S3Bucket` is a fresh bucket with its credentials, emptied and deleted afterwards.
* :func:`leaked_tasks` names the asyncio tasks a test left running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nexus.core import sigv4
from nexus_dev.servers.services import LocalPostgres, PostgresInfo, S3Info

T = TypeVar("T")
_COUNTER = itertools.count(1)


def unique_name(prefix: str, test_name: str = "") -> str:
    """A name no other test of any session uses: ``prefix``, pid, counter, test name."""
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:24]
    return f"{prefix}_{os.getpid()}_{next(_COUNTER)}_{slug}".rstrip("_")


def run_async(factory: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run a coroutine to completion on a loop of its own, in a thread of its own, so that
    it cannot disturb (or be disturbed by) the loop pytest-asyncio gives the test."""

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), timeout)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, bounded()).result()


class TestDatabases:
    """A migrated template database and cheap copies of it, one per test."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, server: LocalPostgres, template: str = "nexus_template") -> None:
        self.server = server
        self.template = template
        self.schema_version: int | None = None

    def create_template(self) -> int:
        """(Re)create and migrate the template; return the schema version."""
        from nexus.core.migrations import apply_migrations

        self.server.psql(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self.server.psql(f'CREATE DATABASE "{self.template}"')
        dsn = self.server.info.with_database(self.template).dsn
        self.schema_version = run_async(lambda: apply_migrations(dsn))
        return self.schema_version

    def create(self, test_name: str = "", *, migrated: bool = True) -> PostgresInfo:
        """A new database: a copy of the migrated template, or an empty one."""
        name = unique_name("test", test_name)[:63]
        template = self.template if migrated else "template0"
        self.server.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.server.info.with_database(name)

    def drop(self, name: str) -> None:
        self.server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_template(self) -> None:
        self.drop(self.template)


@dataclass
class S3Bucket:
    """A bucket of its own for one test, with everything needed to reach it."""

    info: S3Info
    bucket: str
    keys_seen: set[str] = field(default_factory=set)

    @property
    def endpoint_url(self) -> str:
        return self.info.endpoint_url

    @property
    def access_key_id(self) -> str:
        return self.info.access_key_id

    @property
    def secret_access_key(self) -> str:
        return self.info.secret_access_key

    @property
    def region(self) -> str:
        return self.info.region

    def url(self, key: str = "") -> str:
        return sigv4.object_url(self.info.endpoint_url, self.bucket, key)

    def presign(self, method: str, key: str, expires_in: int = 60) -> str:
        return self.info.signer().presign(method, self.url(key), expires_in=expires_in)

    def put(self, key: str, body: bytes) -> None:
        _expect(self.info.call("PUT", self.bucket, key, body), 200, f"put {key}")

    def get(self, key: str) -> bytes:
        answer = self.info.call("GET", self.bucket, key)
        _expect(answer, 200, f"get {key}")
        return answer.body

    def keys(self) -> list[str]:
        """Up to 1000 keys (ListObjectsV2's first page: plenty for one test)."""
        answer = sigv4.request(self.info.signer(), "GET", self.url() + "?list-type=2")
        _expect(answer, 200, "list")
        root = ET.fromstring(answer.body)
        return [el.text or "" for el in root.iter() if el.tag.endswith("}Key") or el.tag == "Key"]

    def create(self) -> None:
        _expect(self.info.call("PUT", self.bucket), 200, f"create bucket {self.bucket}")

    def delete(self) -> None:
        """Empty the bucket and delete it (S3 servers refuse to delete a full one)."""
        for key in self.keys():
            self.info.call("DELETE", self.bucket, key)
        answer = self.info.call("DELETE", self.bucket)
        if answer.status not in (200, 204, 404):
            _expect(answer, 204, f"delete bucket {self.bucket}")


@dataclass(frozen=True)
class Servers:
    """What a test's system runs on: its own directory, database, key prefix and bucket
    (the ``servers`` fixture)."""

    tmp_path: Path
    postgres_dsn: str
    redis_url: str
    redis_prefix: str
    s3: S3Bucket


def bucket_name(test_name: str) -> str:
    """An S3-valid bucket name (3 to 63 of ``a-z0-9-``) unique to this test."""
    return unique_name("t", test_name).replace("_", "-")[:63].rstrip("-")


def _expect(answer: sigv4.Response, status: int, what: str) -> None:
    if answer.status != status:
        raise AssertionError(f"S3 {what}: {answer.status} {answer.body[:300]!r}")


def leaked_tasks(before: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    """Tasks running now that were not running in ``before``, except the current one."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current]


def describe_tasks(tasks: list[asyncio.Task[object]]) -> str:
    return ", ".join(f"{t.get_name()} ({t.get_coro()!r})" for t in tasks)


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    return [child for child, fields in _processes() if int(fields[1]) == pid]


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            found.append((int(entry), fields))
    return found


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None  # gone
