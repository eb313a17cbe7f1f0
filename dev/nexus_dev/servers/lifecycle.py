"""The life cycle every throwaway local server shares: :class:`LocalServer`.

A subclass names its command, its readiness probe and its connection details; this class
guarantees the rest, for PostgreSQL and Redis (:mod:`nexus_dev.servers.databases`) and S3
(:mod:`nexus_dev.servers.s3`) alike:

* :meth:`~LocalServer.start` picks free ports on 127.0.0.1, prepares the data directory
  once, and returns only when the probe says the server does real work; otherwise it raises
  :class:`LocalServiceError` with the tail of the server's log after its deadline. A port
  taken between choosing and binding it is retried on other ports (first start only);
* :meth:`~LocalServer.stop` shuts down gracefully and SIGKILLs after a deadline,
  :meth:`~LocalServer.kill` SIGKILLs at once, :meth:`~LocalServer.restart` comes back on
  the same ports and data directory; nothing outlives ``stop`` or ``kill`` (see
  :mod:`nexus_dev.servers.supervision`);
* a server built with ``external=info`` starts nothing and refuses to be stopped, killed
  or restarted: it belongs to someone else.

All methods block; from async code use ``await asyncio.to_thread(server.restart)``.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from nexus_dev.servers.binaries import BinarySource
from nexus_dev.servers.supervision import (
    LocalServiceError,
    RunAs,
    ServerProcess,
    child_environment,
    free_ports,
)

log = logging.getLogger(__name__)


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
