"""Containers as local processes: a pod's ``command`` + ``args`` run on this machine.

The image is ignored; the container's ``command`` followed by its ``args`` is executed with
the container's ``env`` values (``valueFrom`` is ignored; ``$(VAR)`` references in env, command
and args expanded as a kubelet does) plus ``PATH``, ``HOME`` and
``HOSTNAME`` = the pod name. A first element ``python``/``python3`` becomes the emulator's
own interpreter, so the project's example algorithms run without PATH tricks.

Guarantees:

* **Exit status decides the phase:** 0 → ``Succeeded``/``Completed``, otherwise
  ``Failed``/``Error`` with the exit code; death by signal N reports ``128 + N``; a command
  that cannot be started ends ``StartError`` with exit code 128, as containerd reports it.
* **Memory limits are enforced:** every ``memory_poll_interval`` one scan of ``/proc``
  sums the resident memory of each container's session (the process and everything it
  started); above ``resources.limits.memory`` the session is killed with SIGKILL and the
  container ends ``OOMKilled`` with exit code 137, like the kernel OOM killer in a cgroup.
* **Stopping is graceful:** SIGTERM to the whole session, SIGKILL after the pod's
  ``terminationGracePeriodSeconds``; when the main process exits, what it left behind is
  killed too. Closing the runtime kills every session, so no process outlives the shard.
* **No task per pod while it runs:** output and exit arrive through an
  ``asyncio.SubprocessProtocol``; only the spawn itself is a short task.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from nexus_dev.cluster.expansion import container_argv
from nexus_dev.cluster.kubelet import PodRun
from nexus_dev.cluster.validation import memory_bytes

if TYPE_CHECKING:
    from nexus_dev.cluster.kubelet import Kubelet

_PAGE = os.sysconf("SC_PAGE_SIZE")
_EXIT_DRAIN = 0.5  # seconds to wait for the last output after the process exited


@dataclass(frozen=True)
class ProcessSettings:
    memory_poll_interval: float = 0.1
    """Seconds between resident-memory checks of containers with a memory limit."""


class _Container(asyncio.SubprocessProtocol):
    """Output and exit of one container process."""

    def __init__(self, runtime: ProcessRuntime, run: PodRun) -> None:
        self.runtime = runtime
        self.run = run
        self.transport: asyncio.SubprocessTransport | None = None
        self.pid = 0
        self.open_pipes = 1
        self.exited = False
        self.oom = False
        self.finished = False
        self.kill_timer: asyncio.TimerHandle | None = None
        self.limit: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's process transport does not derive from asyncio's, but has its methods.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = self.transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.run.write_log(raw, self.runtime.kubelet.settings.log_limit)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.open_pipes -= 1
        if self.exited and self.open_pipes <= 0:
            self.finish()

    def process_exited(self) -> None:
        self.exited = True
        if self.open_pipes <= 0:
            self.finish()
        else:  # a left-behind child may hold the pipe open; do not wait for it forever
            asyncio.get_running_loop().call_later(_EXIT_DRAIN, self.finish)

    def signal(self, sig: int) -> None:
        if self.pid and not self.finished:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def finish(self) -> None:
        if self.finished or self.transport is None:
            return
        self.finished = True
        if self.kill_timer is not None:
            self.kill_timer.cancel()
        code = self.transport.get_returncode()
        self.signal(signal.SIGKILL)  # whatever the main process left behind
        self.finished = True
        self.transport.close()
        self.runtime.containers.pop(self.pid, None)
        exit_code = 128 - code if code is not None and code < 0 else int(code or 0)
        if self.oom:
            self.runtime.kubelet.exited(self.run, 137, "OOMKilled")
        elif exit_code == 0:
            self.runtime.kubelet.exited(self.run, 0, "Completed")
        else:
            self.runtime.kubelet.exited(self.run, exit_code, "Error")


class ProcessRuntime:
    """Runs the containers of one shard's pods as local processes."""

    def __init__(self, kubelet: Kubelet, settings: ProcessSettings) -> None:
        self.kubelet = kubelet
        self.settings = settings
        self.containers: dict[int, _Container] = {}
        self.spawning: set[asyncio.Task[None]] = set()
        self._poller: asyncio.TimerHandle | None = None

    def draw_fault(self) -> str | None:
        return None  # a process fails on its own; only hinted faults apply

    def start(self, run: PodRun) -> None:
        task = asyncio.create_task(self._spawn(run), name=f"devcluster-spawn-{run.name}")
        self.spawning.add(task)
        task.add_done_callback(self.spawning.discard)

    async def _spawn(self, run: PodRun) -> None:
        container = run.container
        argv = container_argv(container, run.env)  # $(VAR) and $$ resolved
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": run.name,
            **run.env,
        }
        protocol = _Container(self, run)
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        protocol.limit = memory_bytes(limit) if limit is not None else None
        loop = asyncio.get_running_loop()
        if not argv:
            message = "failed to create containerd task: no command specified"
            self.kubelet.exited(run, 128, "StartError", message)
            return
        try:
            await loop.subprocess_exec(
                lambda: protocol,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            message = (
                f"failed to create containerd task: exec: {argv[0]!r}: {exc.strerror}: unknown"
            )
            run.write_log(message.encode() + b"\n", self.kubelet.settings.log_limit)
            self.kubelet.exited(run, 128, "StartError", message)
            return
        self.containers[protocol.pid] = protocol
        run.handle = protocol
        if run.deleting:
            self.kill(run, run.grace)
        if protocol.limit is not None and self._poller is None:
            self._poller = loop.call_later(self.settings.memory_poll_interval, self._poll)

    def kill(self, run: PodRun, grace: float) -> None:
        protocol: _Container | None = run.handle
        if protocol is None:
            return  # still spawning: killed as soon as it is there (run.deleting is set)
        if grace <= 0:
            protocol.signal(signal.SIGKILL)
            return
        protocol.signal(signal.SIGTERM)
        protocol.kill_timer = asyncio.get_running_loop().call_later(
            grace, protocol.signal, signal.SIGKILL
        )

    def _poll(self) -> None:
        self._poller = None
        limited = {p.pid: p for p in self.containers.values() if p.limit is not None}
        if not limited:
            return
        usage = _session_rss(set(limited))
        for pid, protocol in limited.items():
            assert protocol.limit is not None
            if usage.get(pid, 0) > protocol.limit and not protocol.finished:
                protocol.oom = True
                protocol.signal(signal.SIGKILL)
        self._poller = asyncio.get_running_loop().call_later(
            self.settings.memory_poll_interval, self._poll
        )

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for task in list(self.spawning):
            await asyncio.wait({task}, timeout=5.0)
        for protocol in list(self.containers.values()):
            protocol.run.deleting = True
            protocol.signal(signal.SIGKILL)
        for _ in range(100):  # up to a second for the exits to arrive
            if not self.containers:
                break
            await asyncio.sleep(0.01)
        for protocol in list(self.containers.values()):
            protocol.finish()


def _session_rss(sessions: set[int]) -> dict[int, int]:
    """Resident bytes of all processes of each session in ``sessions``, from ``/proc``."""
    usage: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:
            continue
        fields: list[Any] = raw[raw.rfind(b")") + 2 :].split()
        session = int(fields[3])
        if session in sessions:
            usage[session] = usage.get(session, 0) + int(fields[21]) * _PAGE
    return usage
