"""Throwaway real servers on loopback: the common life cycle, PostgreSQL and Redis.

:class:`LocalPostgres`, :class:`LocalRedis` and :class:`~nexus_dev.servers.s3.LocalS3`
share one life cycle (:class:`LocalServer`) and each guarantees:

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar
from urllib.parse import quote

from nexus_dev.servers.supervision import (
    BinarySource,
    LocalServiceError,
    RunAs,
    ServerProcess,
    child_environment,
    find_postgres,
    find_redis,
    free_ports,
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


InfoT = TypeVar("InfoT")
_PORT_CONFLICT = (
    "address already in use",  # Redis, PostgreSQL
    "could not bind",
    "finding alternative",  # SeaweedFS moving to another port
    "port allocation failed",  # SeaweedFS refusing a port it was told to use
)


class LocalServer(Generic[InfoT]):
    """One server: started here in ``directory``, or an external one named by ``external``."""

    name: ClassVar[str]
    ports_needed: ClassVar[int] = 1
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    probe_interval: ClassVar[float] = 0.05

    def __init__(
        self,
        directory: Path | None = None,
        *,
        external: InfoT | None = None,
        binaries: BinarySource = "auto",
    ) -> None:
        self.directory = directory
        self.binaries = binaries
        self._external: InfoT | None = external
        self.ports: list[int] = []
        self._process: ServerProcess | None = None
        self._started_once = False

    @property
    def external(self) -> bool:
        return self._external is not None

    @property
    def info(self) -> InfoT:
        if self._external is not None:
            return self._external
        if not self.ports:
            raise LocalServiceError(f"{self.name} has not been started")
        return self._info()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.running else None

    def exit_status(self) -> int | None:
        """How the server's last process ended (negative: the signal that killed it);
        ``None`` while it runs, or if it was never started."""
        return None if self._process is None else self._process.exited()

    def start(self, timeout: float = 60.0) -> InfoT:
        """Start the server and wait until it does real work (no-op for an external one)."""
        if self._external is not None:
            return self._external
        if self._process is not None and self._process.running:
            raise LocalServiceError(f"{self.name} is already running (pid {self._process.pid})")
        deadline = time.monotonic() + timeout
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix=f"nexus-{self.name}-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            if not self._started_once:
                self.ports = self._choose_ports()
                self._prepare()
            self._process = ServerProcess(
                self.name,
                self._command(),
                log_path=self.directory / f"{self.name}.log",
                cwd=self._cwd(),
                env=child_environment(self.directory),
                run_as=self._run_as(),
                stop_signal=self.stop_signal,
            )
            self._process.start()
            try:
                self._wait_ready(deadline)
            except LocalServiceError as exc:
                tail = self._process.log_tail()
                self.kill()
                conflict = any(text in tail.lower() for text in _PORT_CONFLICT)
                if self._started_once or not conflict or attempt == 2:
                    raise LocalServiceError(f"{exc}; last lines of its log:\n{tail}") from None
                log.info("%s lost a port race; retrying on other ports", self.name)
                continue
            self._started_once = True
            log.info("%s ready", self.name, extra={"pid": self.pid, "ports": self.ports})
            return self._info()
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown, SIGKILL after ``timeout`` seconds."""
        self._refuse_external("stopped")
        if self._process is not None:
            self._process.stop(timeout)
            self._after_exit()

    def kill(self) -> None:
        """SIGKILL the server and everything it started, at once."""
        self._refuse_external("killed")
        if self._process is not None:
            self._process.kill()
            self._after_exit()

    def restart(self, timeout: float = 60.0) -> InfoT:
        """Stop (if running) and start again on the same ports and data directory."""
        self._refuse_external("restarted")
        if not self._started_once:
            raise LocalServiceError(f"{self.name} was never started; nothing to restart")
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and delete its directory (no-op for an external server)."""
        if self._external is None:
            self.stop()
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)

    def _refuse_external(self, done: str) -> None:
        if self._external is not None:
            raise LocalServiceError(
                f"{self.name} is an external server (named by environment variables); "
                f"it cannot be {done} from here"
            )

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        while True:
            code = self._process.exited()
            if code is not None:
                raise LocalServiceError(f"{self.name} exited with status {code} while starting")
            if any(text in self._process.log_tail().lower() for text in _PORT_CONFLICT):
                raise LocalServiceError(f"{self.name} found one of its ports taken")
            try:
                if self._probe():
                    return
            except (OSError, LocalServiceError, subprocess.SubprocessError):
                pass
            if time.monotonic() >= deadline:
                raise LocalServiceError(f"{self.name} was not ready before its deadline")
            time.sleep(self.probe_interval)

    def _run_as(self) -> RunAs | None:
        return None

    def _cwd(self) -> Path:
        assert self.directory is not None
        return self.directory

    def _choose_ports(self) -> list[int]:
        return free_ports(self.ports_needed)

    def _after_exit(self) -> None:
        """Clean-up after the process is gone (files it could not remove itself)."""

    def _prepare(self) -> None:
        """One-time set-up of the data directory, before the first start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _info(self) -> InfoT:
        raise NotImplementedError


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
    ) -> None:
        """``bin_dir``: an installation's ``bin`` directory to use instead of finding one."""
        super().__init__(directory, external=external, binaries=binaries)
        self._bin_dir = bin_dir
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
