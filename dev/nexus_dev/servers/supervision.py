"""Supervised child processes for throwaway local servers: ports, users, cleanup.

:mod:`nexus_dev.servers.services` runs real PostgreSQL, Redis and SeaweedFS servers for
``nexus dev``, the tests and the benchmarks. This module holds what those servers have in
common, so that each of them is only its command line and its readiness check.

Guarantees:

* **Nothing is left behind.** Every server runs in a session of its own
  (``start_new_session``), out of reach of the terminal's Ctrl-C, which is ours to handle.
  :meth:`ServerProcess.stop` signals the server, waits up to a deadline, then kills it;
  :meth:`ServerProcess.kill` kills at once. Killing freezes the server (SIGSTOP, so it
  cannot fork), then SIGKILLs it with its process group *and* every descendant found in
  ``/proc`` — PostgreSQL's children start sessions of their own, so the group alone would
  miss them — and reaps it. An ``atexit`` hook kills the servers still running when the
  interpreter exits, for callers who forgot (or crashed). Only a SIGKILL of the parent
  itself can orphan a server. (Linux only, like the rest of the local tooling.)
* **Ports are free and stay ours.** :func:`free_ports` picks ports *below* the kernel's
  ephemeral range, so that no outgoing connection can take a port while its server is
  being restarted, and checks that each can be bound on 127.0.0.1.
* **Root works.** PostgreSQL refuses to run as root; :func:`unprivileged_user` names the
  user it runs as instead (``postgres``, else ``nobody``) when the euid is 0.
* **Binaries are found, not assumed**: by :mod:`nexus_dev.servers.binaries`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nexus.core.errors import NexusError

log = logging.getLogger(__name__)


_PORT_FLOOR = 15000
"""Lowest port handed out; below it live many well-known development servers."""


class LocalServiceError(NexusError):
    """A local server could not be found, started, or stopped, or refused an operation."""


# -- users and ports --------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """An unprivileged user a server runs as when we are root."""

    name: str
    uid: int
    gid: int


def unprivileged_user() -> RunAs | None:
    """``None`` unless we are root; then ``postgres`` if that user exists, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise LocalServiceError("running as root, and neither user 'postgres' nor 'nobody' exists")


def free_ports(count: int, *, partner_offset: int = 0) -> list[int]:
    """``count`` distinct ports that can be bound on 127.0.0.1 right now.

    They come from below the ephemeral range, where only listeners live, so a port stays
    available to its server across a restart (an outgoing connection could take an
    ephemeral one in between). With ``partner_offset``, each port ``p`` also has
    ``p + partner_offset`` free (SeaweedFS puts gRPC at HTTP + 10000).
    """
    ceiling = _ephemeral_floor() - partner_offset
    taken: set[int] = set()
    chosen: list[int] = []
    for _ in range(count * 50):
        port = random.randrange(_PORT_FLOOR, ceiling)
        wanted = {port, port + partner_offset}
        if not wanted & taken and all(_bindable(p) for p in wanted):
            chosen.append(port)
            taken |= wanted
            if len(chosen) == count:
                return chosen
    raise LocalServiceError(f"could not find {count} free ports in {_PORT_FLOOR}..{ceiling}")


def _ephemeral_floor() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _PORT_FLOOR + 12000)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- processes --------------------------------------------------------------------------

_RUNNING: set[ServerProcess] = set()
_RUNNING_LOCK = threading.Lock()


def child_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a server: no ``PG*``, ``AWS_*``, ``WEED_*`` or ``REDIS*``
    variables of ours leak in (SeaweedFS, for one, turns AWS keys into an admin identity)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",
        "TZ": "UTC",
    }
    env.update(extra or {})
    return env


class ServerProcess:
    """One long-running server process in its own session, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str],
        run_as: RunAs | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env)
        self.run_as = run_as
        self.stop_signal = stop_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise LocalServiceError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log_file:
            self._log_offset = log_file.tell()
            self._proc = run(
                self.argv, cwd=self.cwd, env=self.env, run_as=self.run_as, stdout=log_file
            )
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        log.debug("started %s", self.name, extra={"pid": self._proc.pid, "argv": self.argv})

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down; :meth:`kill` it if it has not within ``timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            if not _wait_exited(proc.pid, timeout):
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the server, its process group and its descendants, and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # Not reaped yet, so neither its pid nor its group id can be reused meanwhile.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGSTOP)
            for pid in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired as exc:  # uninterruptible sleep; very rare
                raise LocalServiceError(f"{self.name} (pid {proc.pid}) did not die") from exc
        with _RUNNING_LOCK:
            _RUNNING.discard(self)

    def exited(self) -> int | None:
        """The exit status if the server has exited (e.g. crashed during start-up)."""
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines the server logged since it was last started."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_offset)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    env: Mapping[str, str],
    run_as: RunAs | None,
    stdout: IO[bytes],
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, as ``run_as`` if given, stdin closed, stdout and
    stderr to ``stdout``."""
    args = [str(arg) for arg in argv]
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
    except OSError as exc:
        who = f" as user {run_as.name}" if run_as else ""
        raise LocalServiceError(
            f"cannot run {args[0]}{who}: {exc} (every directory above it must be "
            "readable and searchable by that user)"
        ) from exc


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` (our child) has exited, without reaping it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # exited while we looked
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _kill_all_at_exit() -> None:
    with _RUNNING_LOCK:
        left = list(_RUNNING)
    for server in left:
        log.warning("killing %s left running at exit", server.name, extra={"pid": server.pid})
        with contextlib.suppress(Exception):
            server.kill()


atexit.register(_kill_all_at_exit)
