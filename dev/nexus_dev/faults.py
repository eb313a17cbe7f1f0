"""Faults under steady load on a local system: the fault suite's and the soak's machinery.

A local system (``nexus dev --mode simulated``, several schedulers) takes a steady load
from :class:`SteadyLoad` — runs submitted at a fixed rate, in turn to each scheduler, as a
load balancer would, every answer recorded — while :func:`run_case` does one thing to one
of its processes (kill it, freeze it, restart it gracefully) and waits for the system to
be whole again. Every run acknowledged (202) is then followed to its end and the case is
judged by what an operator asks of an outage:

* **lost**: acknowledged runs the system does not know, or that never finished (within
  the case's patience);
* **wrongly failed**: runs that did not complete although their algorithm succeeded (in
  simulated mode, without a fault mix, every algorithm succeeds: any other end is wrong);
* **bad answers**: refusals other than ``429``/``503`` with ``Retry-After`` from a
  scheduler that was up (no answer at all counts only from a scheduler being killed);
* **recovery**: seconds from the fault until every run acknowledged before the system was
  back has finished and submissions are accepted again;
* **fault**: seconds from the fault until its process was back (a rolling restart: until
  the last replica was replaced), within the recovery.

Standard library only on the client side (threads and ``urllib``), so the load keeps its
pace whatever the system under test does to an event loop.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from signal import Signals
from typing import Any

UNFINISHED = frozenset({"NEW", "BUFFERED", "RUNNING"})


@dataclass(frozen=True)
class Refusal:
    """A submission not acknowledged: its answer's status (``None``: no answer)."""

    at: float
    scheduler: str
    status: int | None
    retry_after: str | None
    detail: str


def _call(method: str, url: str, token: str, body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class SteadyLoad:
    """``rate`` runs a second of ``algorithm``, all with one tag, spread over ``workers``
    threads; each scheduler in turn, passed over for the next when it does not answer."""

    def __init__(
        self,
        schedulers: Sequence[str],
        token: str,
        *,
        algorithm: str = "echo-stored",
        rate: float = 30.0,
        workers: int = 4,
    ) -> None:
        self.schedulers = list(schedulers)
        self.token = token
        self.algorithm = algorithm
        self.rate = rate
        self.tag = f"load-{uuid.uuid4().hex[:12]}"
        self.accepted: dict[str, float] = {}
        """Request id → when (monotonic) it was acknowledged."""
        self.refused: list[Refusal] = []
        self.finished: dict[str, tuple[float, str]] = {}
        """Request id → when it was first seen finished, and how."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._submitted = threading.Event()
        """Set once every submitting thread has returned: no acknowledgement comes after it."""
        self._given_up = threading.Event()
        self._turn = 0
        self._threads = [
            threading.Thread(target=self._submit, args=(i, workers), daemon=True)
            for i in range(workers)
        ]
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._watcher.start()

    def stop(self) -> None:
        """Stop submitting: returns once no submission is in flight (the watcher goes on
        until :meth:`settle`). A submission sent before the stop may be acknowledged after
        it (a scheduler waiting on a store answers late): it is followed like the others."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self._submitted.set()

    def _next(self) -> str:
        with self._lock:
            self._turn += 1
            return self.schedulers[self._turn % len(self.schedulers)]

    def _submit(self, index: int, workers: int) -> None:
        interval = workers / self.rate
        due = time.monotonic() + index * interval / workers
        n = 0
        while not self._stop.is_set():
            pause = due - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                return
            due += interval
            n += 1
            body = {"algorithmParameters": {"worker": index, "n": n}, "tag": self.tag}
            for _ in self.schedulers:
                base = self._next()
                url = f"{base}/algorithm/v1.2/run/{self.algorithm}"
                try:
                    answer = _call("POST", url, self.token, body)
                except urllib.error.HTTPError as exc:
                    after = exc.headers.get("Retry-After")
                    self._refuse(base, exc.code, after, exc.read()[:200].decode(errors="replace"))
                    break  # answered: a client backs off (the next submission is due anyway)
                except (OSError, urllib.error.URLError) as exc:  # down, or cut off mid-answer
                    self._refuse(base, None, None, str(exc))
                    continue
                with self._lock:
                    self.accepted[answer["requestId"]] = time.monotonic()
                break

    def _refuse(self, base: str, status: int | None, after: str | None, detail: str) -> None:
        with self._lock:
            self.refused.append(Refusal(time.monotonic(), base, status, after, detail))

    def _statuses(self) -> dict[str, str] | None:
        for base in self.schedulers:
            url = f"{base}/algorithm/v1.2/results/{self.algorithm}/tags/{self.tag}"
            try:
                answers = _call("GET", url, self.token)
            except (OSError, urllib.error.URLError):
                continue
            return {a["requestId"]: a["status"] for a in answers}
        return None

    def _watch(self) -> None:
        while True:
            submitted = self._submitted.is_set()  # before the copy: it then holds them all
            statuses = self._statuses()
            now = time.monotonic()
            if statuses is not None:
                for run, status in statuses.items():
                    if status not in UNFINISHED and run not in self.finished:
                        self.finished[run] = (now, status)
                with self._lock:
                    accepted = set(self.accepted)
                if submitted and accepted <= set(self.finished):
                    return
            if self._given_up.wait(0.2):
                return

    def settle(self, timeout: float) -> set[str]:
        """Wait until every acknowledged run finished, at most ``timeout`` s; the ids of
        those that did not (lost or stuck)."""
        self._watcher.join(timeout=timeout)
        self._given_up.set()
        self._watcher.join(timeout=30)
        with self._lock:
            accepted = set(self.accepted)
        return accepted - set(self.finished)


@dataclass
class CaseResult:
    """One fault under load, judged (see the module docstring)."""

    name: str
    accepted: int
    lost: int
    wrongly_failed: int
    refused: int
    bad_answers: list[str]
    recovery_s: float
    outcomes: dict[str, int] = field(default_factory=dict)
    fault_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "fault": self.name,
            "accepted": self.accepted,
            "lost": self.lost,
            "wronglyFailed": self.wrongly_failed,
            "refused": self.refused,
            "badAnswers": len(self.bad_answers),
            "recoverySeconds": round(self.recovery_s, 2),
            "faultSeconds": round(self.fault_s, 2),
        }


class LocalSystem:
    """A running ``nexus dev``: its READY document and its status file."""

    def __init__(self, ready: dict[str, Any]) -> None:
        self.ready = ready
        self.status_file = Path(ready["status"])

    def service(self, name: str) -> dict[str, Any]:
        status = json.loads(self.status_file.read_text())
        found: dict[str, Any] = next(s for s in status["services"] if s["name"] == name)
        return found

    def signal(self, name: str, sig: signal.Signals) -> dict[str, Any]:
        """Send ``sig`` to the service's process; its status before."""
        before = self.service(name)
        if before["pid"] is None:
            raise RuntimeError(f"{name} is not running: {before}")
        os.kill(before["pid"], sig)
        return before

    def whole(self, algorithm: str = "echo-stored", timeout: float = 60) -> None:
        """Wait until every scheduler accepts a run of ``algorithm`` (its input in S3):
        the stores a fault restarted may refuse writes for seconds after their processes
        are back (a SeaweedFS master warming up), and a case begun then would measure the
        last one's fault."""
        deadline = time.monotonic() + timeout
        body = {"algorithmParameters": {"probe": True}}
        for base in self.ready["schedulers"]:
            url = f"{base}/algorithm/v1.2/run/{algorithm}"
            while True:
                try:
                    _call("POST", url, self.ready["token"], body, timeout=5)
                    break
                except (OSError, urllib.error.URLError) as exc:  # HTTPError included
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{base} accepts no run: {exc}") from exc
                    time.sleep(0.5)

    def back(self, name: str, before: dict[str, Any], timeout: float = 60) -> None:
        """Wait until ``name`` runs again after the restart that follows ``before``."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.service(name)
            if now["state"] == "running" and now["restarts"] > before["restarts"]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not come back: {now}")
            time.sleep(0.02)

    def kill(self, *names: str) -> Callable[[], None]:
        """A fault: SIGKILL ``names`` at once, back once the supervisor has restarted them."""
        return self._signalled(names, signal.SIGKILL)

    def restart(self, *names: str) -> Callable[[], None]:
        """A fault: SIGTERM ``names`` at once (a graceful stop, as a rolling update does to
        a pod), back once the supervisor has restarted them."""
        return self._signalled(names, signal.SIGTERM)

    def _signalled(self, names: Sequence[str], sig: Signals) -> Callable[[], None]:
        def fault() -> None:
            before = {name: self.signal(name, sig) for name in names}
            for name in names:
                self.back(name, before[name])

        return fault

    def roll_out(self, *names: str) -> Callable[[], None]:
        """A fault: a rolling restart of the replicas ``names`` (SIGUSR1 to ``nexus dev``,
        :mod:`nexus_dev.replicas`): one at a time, each new process listening beside the
        old one before the old one is stopped gracefully; back once all are replaced."""

        def fault() -> None:
            before = {name: self.service(name) for name in names}
            os.kill(json.loads(self.status_file.read_text())["pid"], signal.SIGUSR1)
            for name in names:
                self.back(name, before[name], timeout=120)

        return fault

    def freeze(self, name: str, seconds: float) -> Callable[[], None]:
        """A fault: ``name`` stops answering for ``seconds`` (SIGSTOP, then SIGCONT)."""

        def fault() -> None:
            pid = self.signal(name, signal.SIGSTOP)["pid"]
            try:
                time.sleep(seconds)
            finally:
                os.kill(pid, signal.SIGCONT)

        return fault


def run_case(
    system: LocalSystem,
    name: str,
    fault: Callable[[], None],
    *,
    rate: float = 30.0,
    before: float = 2.0,
    after: float = 3.0,
    patience: float = 120.0,
    killed: str | None = None,
) -> CaseResult:
    """Steady load for ``before`` s, ``fault()`` (which returns once the system's
    process is back), load for ``after`` s more; then every acknowledged run followed to
    its end, for up to ``patience`` s. ``killed``: a scheduler the fault kills, whose
    submissions may go unanswered."""
    load = SteadyLoad(system.ready["schedulers"], system.ready["token"], rate=rate)
    load.start()
    try:
        time.sleep(before)
        started = time.monotonic()
        fault()
        back = time.monotonic()
        time.sleep(after)
    finally:
        load.stop()
    missing = load.settle(patience)
    outcomes: dict[str, int] = {}
    for _, status in load.finished.values():
        outcomes[status] = outcomes.get(status, 0) + 1
    wrong = sum(count for status, count in outcomes.items() if status != "COMPLETED")
    bad = [
        f"{r.status} from {r.scheduler} (Retry-After {r.retry_after}): {r.detail}"
        for r in load.refused
        if not (
            (r.status in (429, 503) and r.retry_after)
            or (r.status is None and killed is not None and r.scheduler == killed)
        )
    ]
    settled_before = [
        load.finished[run][0]
        for run, at in load.accepted.items()
        if at <= back and run in load.finished
    ]
    ends = [*settled_before, *(r.at for r in load.refused if r.at >= started)]
    recovery = max(ends, default=started) - started
    return CaseResult(
        name=name,
        accepted=len(load.accepted),
        lost=len(missing),
        wrongly_failed=wrong,
        refused=len(load.refused),
        bad_answers=bad,
        recovery_s=max(0.0, recovery),
        outcomes=outcomes,
        fault_s=back - started,
    )
