"""Replicas of one Nexus service behind one address, and their rolling restart.

In a cluster the receiver runs as several pods behind a Service: a client connects to one
address and each new connection goes to one of the pods that are ready. A rolling update
replaces the pods one at a time — a new pod starts, and only once it is ready is an old
one sent SIGTERM, which stops taking connections, finishes what it was doing and closes
the connections its clients kept alive, so that they connect anew, to a pod still there.

``nexus dev --receivers N`` gives the local system the same shape on one host: every
replica listens on the same port with ``SO_REUSEPORT`` (``NEXUS__HTTP__REUSE_PORT``), and
the kernel spreads new connections over the processes listening, as the Service spreads
them over its ready pods. A replica listens only once its start-up is done (its clients
are open), so *listening* is *ready* here; :func:`listens` asks the kernel whether a
given process does, since a probe through the shared port may reach another replica.
:func:`replace` is one step of a rolling restart (``SIGUSR1`` to ``nexus dev``, see
:meth:`nexus_dev.restarts.Supervisor.roll_out`).

Linux only: elsewhere ``SO_REUSEPORT`` does not spread connections (the last process to
listen takes them all), and ``/proc`` does not say who listens.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Protocol

from nexus_dev.servers.supervision import LocalServiceError, ServerProcess

SUPPORTED = sys.platform == "linux"
"""Whether replicas can share a port here (see the module docstring)."""
STOP_TIMEOUT = 30.0
"""Seconds an old replica may take to drain after SIGTERM before it is killed: longer
than a service's own ``shutdown_timeout`` (20 s by default)."""
_LISTEN = "0A"
"""TCP_LISTEN in ``/proc/net/tcp``."""


def listens(pid: int, port: int) -> bool:
    """Whether the process ``pid`` has a TCP socket listening on ``port`` (any address)."""
    inodes: set[str] = set()
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(entry.path)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:  # gone, or not ours to look at
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)  # the heading
                for row in rows:
                    fields = row.split()
                    if fields[3] != _LISTEN:  # the kernel lists listening sockets first
                        break  # (not the thousands of others: a busy host has them)
                    if fields[9] in inodes and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def wait_listening(process: ServerProcess, port: int, timeout: float) -> None:
    """Return once ``process`` listens on ``port``; raise if it exits or takes longer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.exited() is not None:
            raise LocalServiceError(f"{process.name} exited during start-up:\n{process.log_tail()}")
        if process.pid is not None and listens(process.pid, port):
            return
        time.sleep(0.05)
    raise LocalServiceError(f"{process.name} did not listen on port {port} in {timeout:.0f} s")


class Replica(Protocol):
    """A process of the local system that shares its port with others of its service."""

    name: str
    port: int
    process: ServerProcess


def replace(replica: Replica, timeout: float) -> None:
    """One step of a rolling restart: a new process beside the running one, with the same
    command line and environment; once it listens, it is the replica's process, and the
    old one is sent SIGTERM and given :data:`STOP_TIMEOUT` to drain. If the new process
    does not get there within ``timeout``, it is killed and the old one keeps serving."""
    old = replica.process
    new = ServerProcess(old.name, old.argv, log_path=old.log_path, cwd=old.cwd, env=old.env)
    new.start()
    try:
        wait_listening(new, replica.port, timeout)
    except BaseException:
        new.kill()
        raise
    replica.process = new  # from here on, a death of the new process is the replica's
    old.stop(timeout=STOP_TIMEOUT)
