"""``nexus dev`` as the tests run it: a child process, its READY line, its status file.

:class:`DevProcess` starts the command with the servers it would otherwise reuse taken out
of the environment (so it starts its own), reads its stdout and stderr in threads (every
wait has a deadline, and a long run never fills a pipe) and leaves nothing behind when a
test fails (:meth:`DevProcess.kill`). The helpers call the scheduler's API with the
standard library, as a script would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from nexus_dev.cli import READY_PREFIX
from nexus_dev.servers.supervision import descendants
from nexus_dev.status import ServiceStatus, SystemStatus

# Variables that would make `nexus dev` use running servers instead of starting its own.
EXTERNAL = {"PGHOST", "NEXUS_REDIS_URL", "NEXUS_S3_ENDPOINT_URL"}
UNFINISHED = {"NEW", "BUFFERED", "RUNNING"}


STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM)


def as_from_a_terminal(ignore: signal.Signals | None = None) -> None:
    """In a child before it runs: the stop signals as a shell gives them (default, not
    blocked), whatever the test process inherited or set, then ``ignore`` ignored (as
    ``nohup`` does). Run as ``preexec_fn``."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN if sig == ignore else signal.SIG_DFL)


class DevProcess:
    """``nexus dev`` in a subprocess, its stdout read by a thread (so waits have deadlines)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, ignore: signal.Signals | None = None
    ) -> None:
        env = {**{k: v for k, v in os.environ.items() if k not in EXTERNAL}, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexus", "dev", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=lambda: as_from_a_terminal(ignore),
        )
        self.lines: list[str] = []
        """stdout, line by line."""
        self.errors: list[str] = []
        """stderr (the logs), line by line."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=_read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=_read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def logs(self) -> str:
        return "\n".join(self.errors)

    def logged(self, *texts: str, timeout: float = 10) -> bool:
        """Whether every one of ``texts`` is in the logs within ``timeout`` s: a line is read
        from the process by a thread, after the status that it accompanies is written."""
        deadline = time.monotonic() + timeout
        while not all(text in self.logs for text in texts):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def ready(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith(READY_PREFIX):
                    ready: dict[str, Any] = json.loads(line.removeprefix(READY_PREFIX))
                    return ready
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        _, err = self.kill()  # its servers too: they run in sessions of their own
        raise AssertionError(f"no READY line; stdout {self.lines}, stderr:\n{err}")

    def kill(self) -> tuple[int, str]:
        """Whatever is still running, killed: a failed test leaves nothing behind. Its
        exit status and everything it logged."""
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return self.wait(timeout=30)

    def wait(self, timeout: float) -> tuple[int, str]:
        """Its exit status and everything it logged, once it has exited by itself."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not any(r.is_alive() for r in self._readers):
                stream.close()
        return code, self.logs

    def finish(self, sig: signal.Signals, timeout: float = 60) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.wait(timeout=30)
            raise AssertionError(f"nexus dev did not exit on {sig.name}:\n{err}") from None


def _read(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


def read_status(ready: dict[str, Any]) -> SystemStatus:
    status: SystemStatus = json.loads(Path(ready["status"]).read_text())
    return status


def service(status: SystemStatus, name: str) -> ServiceStatus:
    return next(s for s in status["services"] if s["name"] == name)


def wait_for_status(
    ready: dict[str, Any],
    condition: Callable[[SystemStatus], bool],
    timeout: float = 60,
    interval: float = 0.02,
) -> SystemStatus:
    """The first status document that meets ``condition``."""
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(ready)
        if condition(status):
            return status
        if time.monotonic() >= deadline:
            raise AssertionError(f"status never met the condition: {json.dumps(status)}")
        time.sleep(interval)


def call(
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any = None,
    trust: ssl.SSLContext | None = None,
) -> Any:
    """The JSON answer; ``trust``: what an ``https`` server's certificate is checked
    against (a local cluster's authority, from its kubeconfig)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10, context=trust) as response:
        return json.loads(response.read())


def wait_finished(
    base: str, algorithm: str, request_id: str, headers: dict[str, str], timeout: float = 60
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = call(
            "GET", f"{base}/algorithm/v1.2/results/{algorithm}/requests/{request_id}", headers
        )
        if answer["status"] not in UNFINISHED:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"{algorithm} run {request_id} did not finish")
