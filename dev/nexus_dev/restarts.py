"""Keeping a local system up: each of its processes restarted as kubelet restarts a container.

In a cluster a scheduler pod whose container dies is restarted by its kubelet, under the
same pod name, after a back-off that grows while it keeps dying (``CrashLoopBackOff``);
the other pods carry on, and what the dead one held is recovered — by the pod itself
when it is back in time, else by the maintainer adopting its queue. :class:`Supervisor`
gives ``nexus dev`` the same life, so that this can be watched on one machine:

* **Every death is restarted**, whatever the exit status (a Deployment's pods restart
  always), after a delay from :class:`RestartPolicy`: ``first_delay``, doubling per death
  in a row, never above ``max_delay``; a process that stayed up ``reset_after`` starts
  over from ``first_delay`` (:class:`CrashLoop`). A restart that fails — the new process
  exits, or is not ready within its deadline and is killed — counts as one more death.
* **Same identity.** A process comes back with its command line and environment: the
  same ports, the same scheduler pod name (so a restarted scheduler finds the runs its
  previous process had taken, as a restarted container does), the same data directory
  for PostgreSQL and S3. What a restart cannot keep is said when it is back: Redis keeps
  nothing on disk, the local cluster keeps its objects in memory (each service's
  ``lost_on_restart``).
* **Logged and visible.** One log line per death (how it ended, how long it had been up,
  the delay before the next start), one when it is back; every change rewrites the
  status file (:mod:`nexus_dev.status`).
* **Independent.** Restarts run in threads of their own, so a slow or failing restart
  neither delays noticing another death nor a stop; :meth:`Supervisor.close` kills the
  processes still being restarted and waits for those restarts to give up.
* **Fail fast on request.** With ``fail_fast`` the first death stops the whole system
  (exit status 1), as CI wants.
* **Rolling restarts.** :meth:`Supervisor.roll_out` replaces the replicas that share a
  port one at a time, as a Deployment's rolling update does (:mod:`nexus_dev.replicas`):
  the next starts only once the previous one's new process listens and its old one has
  drained. A replacement that fails leaves the old process serving.

The supervisor looks at its processes every :data:`CHECK_INTERVAL` from one thread, the
caller's; nothing here touches a process it was not given.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeGuard

from nexus.core.waiting import Backoff
from nexus_dev.status import (
    LastExit,
    ServiceDetails,
    ServiceState,
    ServiceStatus,
    SystemState,
    SystemStatus,
    iso,
    write,
)

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.1
"""Seconds between looks at every process: a death is noticed within this, for the cost
of one ``waitpid`` per process."""
CLOSE_TIMEOUT = 30.0
"""Seconds :meth:`Supervisor.close` waits for restarts in progress to give up."""


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead process of the local system starts again: kubelet's CrashLoopBackOff
    (10 s doubling to 300 s, reset after 10 minutes up), scaled to a laptop."""

    first_delay: float = 1.0
    """Seconds before restarting a process that died after running well. Kubelet waits
    10 s; here a person is watching, and 1 s brings a crashed scheduler back (about 3 s
    with its start-up) well inside its heartbeat TTL (10 s), so it recovers its own runs,
    as a container restarted in the same pod does."""
    max_delay: float = 30.0
    """The longest wait (kubelet: 300 s). A process that cannot start (a bad setting, a
    server that stays down) is then tried twice a minute: visible, cheap, never a tight
    loop. From its fifth death in a row a scheduler waits (16 s) longer than its heartbeat
    TTL (10 s), so its queue is adopted by a live one — the maintainer's part, worth
    watching too."""
    fail_fast: bool = False
    """Stop the whole system at the first death instead (CI, tests that count on it)."""

    def __post_init__(self) -> None:
        if not self.first_delay > 0:
            raise ValueError(f"the first restart delay must be above 0 s, not {self.first_delay}")
        if not self.max_delay >= self.first_delay:
            raise ValueError(
                f"the longest restart delay ({self.max_delay} s) must not be below the "
                f"first ({self.first_delay} s)"
            )

    @property
    def reset_after(self) -> float:
        """Seconds up after which a death counts as the first again: twice the longest
        delay, as kubelet's 10 minutes are twice its 5."""
        return 2 * self.max_delay


@dataclass
class CrashLoop:
    """The back-off of one process: how long to wait after each death."""

    policy: RestartPolicy
    deaths: int = 0
    """Deaths in a row, counting since the process last stayed up ``reset_after``."""

    def died(self, up_for: float) -> float:
        """Count a death after ``up_for`` seconds up; seconds to wait before restarting."""
        if up_for >= self.policy.reset_after:
            self.deaths = 0
        self.deaths += 1
        backoff = Backoff(first=self.policy.first_delay, cap=self.policy.max_delay)
        return backoff.delay(self.deaths)  # capped however many deaths: never overflows


class Restartable(Protocol):
    """A process of the local system that can be started again."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def lost_on_restart(self) -> str | None:
        """What a restart loses, said when it is back; ``None`` when nothing."""
        ...

    def exit_status(self) -> int | None:
        """How its process ended (negative: the signal that killed it), ``None`` while
        it runs."""
        ...

    def restart(self) -> None:
        """Start a new process and return once it is ready; raise if it does not get
        there. Runs in a thread of its own: :meth:`kill` from another thread must make
        it give up soon."""
        ...

    def kill(self) -> None:
        """Kill its current process at once."""
        ...

    def details(self) -> ServiceDetails: ...


class Replaceable(Restartable, Protocol):
    """A replica that can be replaced while it serves (:mod:`nexus_dev.replicas`)."""

    @property
    def replaceable(self) -> bool: ...

    def replace(self) -> None:
        """Start a new process beside the running one, and once it is ready stop the old
        one gracefully; raise (the old one still serving) if the new one does not start."""
        ...


@dataclass
class _Watched:
    service: Restartable
    crash_loop: CrashLoop
    state: ServiceState = "running"
    restarts: int = 0
    up_since: float = 0.0
    """When it was last ready (supervisor clock)."""
    since: float = field(default_factory=time.time)
    """When it entered ``state`` (wall clock)."""
    last_exit: LastExit | None = None
    next_start: float = 0.0
    delay: float | None = None
    starting: concurrent.futures.Future[None] | None = None
    replacing: bool = False
    """Whether ``starting`` is a replacement beside a process still serving."""


class Supervisor:
    """Watches the processes of a local system, restarts the dead, keeps the status file."""

    def __init__(
        self,
        policy: RestartPolicy,
        status_path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.status_path = status_path
        self.clock = clock
        self.state: SystemState = "starting"
        self.started_at = time.time()
        self._watched: list[_Watched] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._rollout: collections.deque[_Watched] = collections.deque()
        self._write()

    def watch(self, services: Sequence[Restartable]) -> None:
        """Look after ``services`` (started and ready) from now on."""
        now = self.clock()
        for service in services:
            self._watched.append(_Watched(service, CrashLoop(self.policy), up_since=now))
        self._write()

    def set_state(self, state: SystemState) -> None:
        self.state = state
        self._write()

    def run(self, stop: threading.Event) -> bool:
        """Look after the processes until ``stop`` is set (``True``) or, with
        ``fail_fast``, one dies (``False``)."""
        while not stop.wait(CHECK_INTERVAL):
            if not self.check():
                return False
        return True

    def roll_out(self) -> None:
        """Replace every replica that shares a port, one at a time (from the next
        :meth:`check` on; safe to call from a signal handler)."""
        self._rollout.extend(w for w in self._watched if _replaceable(w.service))

    def check(self) -> bool:
        """One look at every process; ``False`` when the system must stop (``fail_fast``)."""
        changed = self._next_replacement()
        keep_going = True
        for watched in self._watched:
            match watched.state:
                case "running":
                    code = watched.service.exit_status()
                    if code is None:
                        continue
                    keep_going = self._died(watched, code, None)
                case "backing-off":
                    if self.clock() < watched.next_start:
                        continue
                    self._start_again(watched)
                case "restarting":
                    assert watched.starting is not None
                    if not watched.starting.done():
                        continue
                    error = watched.starting.exception()
                    watched.starting = None
                    if error is None:
                        self._back(watched)
                    elif watched.replacing:  # the old process serves on
                        watched.replacing, watched.state = False, "running"
                        log.error("%s was not replaced: %s", watched.service.name, error)
                    else:
                        watched.service.kill()  # e.g. not ready in time: it goes for good
                        reason = str(error).splitlines()[0] if str(error) else repr(error)
                        keep_going = self._died(watched, watched.service.exit_status(), reason)
                case "stopped":
                    continue
            changed = True
            if not keep_going:
                break
        if changed:
            self._write()
        return keep_going

    def close(self, state: SystemState = "stopping") -> None:
        """Stop restarting: kill what is being restarted and wait for those restarts to
        give up. The caller then stops every service."""
        self.state = state
        deadline = self.clock() + CLOSE_TIMEOUT
        for watched in self._watched:
            starting = watched.starting
            while starting is not None and not starting.done() and self.clock() < deadline:
                watched.service.kill()  # again and again: the new process may not exist yet
                concurrent.futures.wait([starting], timeout=0.1)
            if starting is not None and not starting.done():
                log.error("%s is still being restarted; leaving it", watched.service.name)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._write()

    def finish(self, state: SystemState) -> None:
        """Every service has been stopped: the final status (if the directory is kept)."""
        self.state = state
        for watched in self._watched:
            watched.state = "stopped"
            watched.since = time.time()
            watched.next_start, watched.delay = 0.0, None
        self._write()

    def status(self) -> SystemStatus:
        return {
            "pid": os.getpid(),
            "state": self.state,
            "startedAt": iso(self.started_at),
            "updatedAt": iso(time.time()),
            "workdir": str(self.status_path.parent),
            "restartPolicy": {
                "firstDelay": self.policy.first_delay,
                "maxDelay": self.policy.max_delay,
                "resetAfter": self.policy.reset_after,
                "failFast": self.policy.fail_fast,
            },
            "services": [self._service_status(watched) for watched in self._watched],
        }

    # -- transitions --------------------------------------------------------------------

    def _next_replacement(self) -> bool:
        """Start the next replacement of a rollout once none is under way."""
        if not self._rollout or any(w.replacing for w in self._watched):
            return False
        watched = self._rollout.popleft()
        if watched.state != "running":  # dead meanwhile: its restart is its replacement
            return False
        log.info("replacing %s (pid %s)", watched.service.name, watched.service.pid)
        service = watched.service
        assert _replaceable(service)
        self._start_again(watched, service.replace)
        watched.replacing = True
        return True

    def _died(self, watched: _Watched, code: int | None, reason: str | None) -> bool:
        now, service = self.clock(), watched.service
        up_for = now - watched.up_since if reason is None else 0.0
        watched.last_exit = _last_exit(code, reason)
        how = _how(code, reason)
        if self.policy.fail_fast:
            log.error(
                "%s %s; stopping everything (--fail-fast)",
                service.name,
                how,
                extra={"component": service.name, "exitCode": code, "log": _log(service)},
            )
            return False
        delay = watched.crash_loop.died(up_for)
        watched.state, watched.since = "backing-off", time.time()
        watched.next_start, watched.delay = now + delay, delay
        after = f" after {up_for:.1f} s up" if reason is None else ""
        log.warning(
            "%s %s%s; restart %d in %.1f s",
            service.name,
            how,
            after,
            watched.restarts + 1,
            delay,
            extra={"component": service.name, "exitCode": code, "log": _log(service)},
        )
        return True

    def _start_again(self, watched: _Watched, start: Callable[[], None] | None = None) -> None:
        if self._pool is None:  # a thread for each process: no restart waits for another
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=len(self._watched), thread_name_prefix="restart"
            )
        watched.state, watched.since = "restarting", time.time()
        watched.restarts += 1
        watched.next_start, watched.delay = 0.0, None
        watched.starting = self._pool.submit(start or watched.service.restart)

    def _back(self, watched: _Watched) -> None:
        service = watched.service
        watched.replacing = False
        watched.state, watched.since = "running", time.time()
        watched.up_since = self.clock()
        lost = service.lost_on_restart
        message = "%s is back (pid %s, restart %d)" + ("; %s" if lost else "")
        arguments = [service.name, service.pid, watched.restarts] + ([lost] if lost else [])
        log.log(logging.WARNING if lost else logging.INFO, message, *arguments)

    def _service_status(self, watched: _Watched) -> ServiceStatus:
        state = watched.state
        next_start = None
        if state == "backing-off":
            next_start = iso(time.time() + max(0.0, watched.next_start - self.clock()))
        return {
            "name": watched.service.name,
            "state": state,
            "pid": watched.service.pid if state == "running" else None,
            "restarts": watched.restarts,
            "since": iso(watched.since),
            "lastExit": watched.last_exit,
            "nextStartAt": next_start,
            "delay": watched.delay,
            **watched.service.details(),
        }

    def _write(self) -> None:
        write(self.status_path, self.status())


def _replaceable(service: Restartable) -> TypeGuard[Replaceable]:
    return bool(getattr(service, "replaceable", False))


def _last_exit(code: int | None, reason: str | None) -> LastExit:
    killed = code is not None and code < 0
    return {
        "code": None if killed else code,
        "signal": _signal_name(-code) if killed and code is not None else None,
        "at": iso(time.time()),
        "reason": reason,
    }


def _how(code: int | None, reason: str | None) -> str:
    if reason is not None:
        return f"did not come back: {reason}"
    if code is not None and code < 0:
        return f"was killed by {_signal_name(-code)}"
    return f"exited with status {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _log(service: Restartable) -> str:
    return service.details()["log"]
