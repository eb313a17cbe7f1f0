"""Throwaway real PostgreSQL and Redis servers on loopback.

:class:`LocalPostgres`, :class:`LocalRedis` and :class:`~nexus_dev.servers.s3.LocalS3`
share one life cycle (:class:`~nexus_dev.servers.lifecycle.LocalServer`) and each
guarantees:

* :meth:`~LocalServer.start` picks free ports on 127.0.0.1, prepares its data directory
  once, and returns only when the server does real work (PostgreSQL runs ``SELECT 1``,
  Redis answers ``PING``, S3 answers a signed ``ListBuckets``); otherwise it raises
  :class:`LocalServiceError` with the tail of the server's log after its deadline. A port
  taken between choosing and binding it is retried on other ports (first start only);
* :meth:`~LocalServer.stop` shuts down gracefully and SIGKILLs after a deadline,
  :meth:`~LocalServer.kill` SIGKILLs at once (fault tests), and
  :meth:`~LocalServer.restart` comes back on the **same ports and data directory**;
  nothing outlives ``stop`` or ``kill`` (see :mod:`nexus_dev.servers.supervision`);
* connection details are plain data: :class:`PostgresInfo`, :class:`RedisInfo`,
  :class:`~nexus_dev.servers.s3.S3Info`;
* a server built with ``external=info`` starts nothing and refuses to be stopped, killed
  or restarted: it belongs to someone else.

Settings are chosen for throwaway speed. PostgreSQL trusts loopback connections, runs with
``fsync=off`` (no protection against OS crashes, yet a killed server keeps every commit it
acknowledged, as fault tests need) and 200 connections, keeps its socket in its own
directory, and runs as user ``postgres`` (else ``nobody``) when we are root, since it
refuses root; where that user cannot enter the server's directory or the installation (a
checkout under ``/root``), the data lives in a private directory of that user's under
``/tmp`` instead (``data`` in the server's directory links to it) and the installation is
run from a linked copy (:mod:`nexus_dev.servers.unprivileged`). Redis keeps nothing on
disk (``--save "" --appendonly no``): a restarted Redis is empty.

All methods block; from async code use ``await asyncio.to_thread(server.restart)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nexus_dev.servers.binaries import BinarySource, find_postgres, find_redis
from nexus_dev.servers.lifecycle import LocalServer
from nexus_dev.servers.supervision import (
    LocalServiceError,
    RunAs,
    child_environment,
    run,
    unprivileged_user,
)
from nexus_dev.servers.unprivileged import can_enter, private_directory, reachable_installation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PostgresInfo:
    host: str
    port: int
    user: str = "postgres"
    password: str = ""
    database: str = "postgres"

    @property
    def dsn(self) -> str:
        """libpq URI; a ``host`` starting with ``/`` is a unix-socket directory."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@/{self.database}?host={quote(self.host)}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> PostgresInfo:
        return dataclasses.replace(self, database=database)


@dataclass(frozen=True)
class RedisInfo:
    url: str


class LocalPostgres(LocalServer[PostgresInfo]):
    """PostgreSQL: ``initdb`` once, then the ``postgres`` server itself (no ``pg_ctl``), so
    the process we supervise is the postmaster."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for clients to leave
    max_connections = 200

    def __init__(
        self,
        directory: Path | None = None,
        *,
        external: PostgresInfo | None = None,
        binaries: BinarySource = "auto",
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``bin_dir``: an installation's ``bin`` directory to use instead of finding one;
        ``settings``: server settings added to (or replacing) ours, e.g. a benchmark's
        ``shared_preload_libraries`` (a server of its own only: an external one keeps its
        own)."""
        super().__init__(directory, external=external, binaries=binaries)
        self._bin_dir = bin_dir
        self._settings = dict(settings or {})
        self._home: Path | None = None
        """Where the data directory and the socket live: ``directory``, or a private
        directory of the server's user when that user cannot enter ``directory``."""
        self._private: Path | None = None
        self._server_bin: Path | None = None
        """The ``bin`` directory the server runs from (a copy the server's user can run)."""

    def _run_as(self) -> RunAs | None:
        return unprivileged_user()

    def _cwd(self) -> Path:
        assert self._home is not None
        return self._home

    @property
    def data_directory(self) -> Path:
        """The data directory (``PGDATA``), once the server was started."""
        if self._home is None:
            raise LocalServiceError(f"{self.name} has not been started")
        return self._home / "data"

    @property
    def bin_dir(self) -> Path:
        """The installation's ``bin`` directory (``initdb``, ``postgres``, ``psql``)."""
        if self._bin_dir is None:
            self._bin_dir = find_postgres(self.binaries).path
        return self._bin_dir

    def _place(self, run_as: RunAs | None) -> Path:
        """The server's home (see ``_home``), owned by the server's user, mode 0700."""
        assert self.directory is not None
        if run_as is None or can_enter(self.directory, run_as):
            if run_as is not None:
                os.chown(self.directory, run_as.uid, run_as.gid)
            self.directory.chmod(0o700)
            return self.directory
        self._private = private_directory(run_as, "nexus-postgres-")
        (self.directory / "data").symlink_to(self._private / "data")  # for people looking
        log.info(
            "PostgreSQL's user %s cannot enter %s: its data lives in %s",
            run_as.name,
            self.directory,
            self._private,
        )
        return self._private

    def _prepare(self) -> None:
        assert self.directory is not None
        run_as = self._run_as()
        if self._home is None:
            self._home = self._place(run_as)
            self._server_bin = self.bin_dir
            if run_as is not None:
                self._server_bin = reachable_installation(self.bin_dir, run_as, self._home)
        if (self._home / "data" / "PG_VERSION").exists():
            return
        assert self._server_bin is not None
        argv: list[str | Path] = [
            self._server_bin / "initdb", "-D", self._home / "data", "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        with open(self.directory / "initdb.log", "wb") as out:
            proc = run(argv, cwd=self._home, env=child_environment(self._home),
                       run_as=run_as, stdout=out)  # fmt: skip
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -1
        if code != 0:
            tail = (self.directory / "initdb.log").read_text(errors="replace")[-2000:]
            raise LocalServiceError(f"initdb failed with status {code}:\n{tail}")

    def _command(self) -> list[str]:
        assert self._home is not None
        assert self._server_bin is not None
        settings = {
            "port": self.ports[0],
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": self._home,
            "max_connections": self.max_connections,
            # Throwaway data: no protection against OS crashes. Commits still reach the
            # kernel before they are acknowledged (synchronous_commit stays on), so a
            # killed server loses nothing it acknowledged, as in production.
            "fsync": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": 0,
            "jit": "off",  # compiling tiny test queries costs more than it saves
            "logging_collector": "off",
            **self._settings,
        }
        argv = [str(self._server_bin / "postgres"), "-D", str(self._home / "data")]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _probe(self) -> bool:
        return self.psql("SELECT 1", timeout=5) == "1"

    def _after_exit(self) -> None:
        # After a SIGKILL the lock file stays; were its pid reused by the time we restart,
        # the new postmaster would refuse to start. It and its children are dead: drop it.
        assert self._home is not None
        (self._home / "data" / "postmaster.pid").unlink(missing_ok=True)

    def close(self) -> None:
        super().close()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    def _info(self) -> PostgresInfo:
        return PostgresInfo("127.0.0.1", self.ports[0])

    def psql(self, sql: str, *, database: str | None = None, timeout: float = 30) -> str:
        """Run ``sql`` with this installation's ``psql``; its unaligned output, stripped."""
        info = self.info if database is None else self.info.with_database(database)
        env = child_environment(self.directory or Path(tempfile.gettempdir()))
        env.update(PGCONNECT_TIMEOUT="3", PGPASSWORD=info.password)
        argv = [
            str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", info.host, "-p", str(info.port), "-U", info.user, "-d", info.database,
            "-c", sql,
        ]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise LocalServiceError(f"psql failed: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout.decode().strip()


class LocalRedis(LocalServer[RedisInfo]):
    """Redis without persistence: a restart comes back empty, on the same port."""

    name = "redis"
    probe_interval = 0.02

    def _command(self) -> list[str]:
        assert self.directory is not None
        return [
            str(find_redis(self.binaries).path),
            "--port", str(self.ports[0]), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip

    def _probe(self) -> bool:
        return redis_ping("127.0.0.1", self.ports[0])

    def _info(self) -> RedisInfo:
        return RedisInfo(f"redis://127.0.0.1:{self.ports[0]}/0")


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when Redis answers ``PING`` (RESP spoken by hand: the redis client library
    belongs to :mod:`nexus.core.queues` alone)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64).startswith(b"+PONG")
