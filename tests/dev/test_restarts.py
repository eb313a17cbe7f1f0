"""The restart policy of ``nexus dev`` and its supervisor, on a fake clock and real processes.

The processes are real (``sh``, ``sleep``) and so are their deaths; only the back-off
delays run on a clock the test moves, so a crash loop of several growing delays costs
no real waiting.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import is_alive

from nexus_dev import status
from nexus_dev.restarts import CrashLoop, RestartPolicy, Supervisor
from nexus_dev.servers.supervision import free_ports
from nexus_dev.stack import ProcessComponent
from nexus_dev.status import ServiceStatus, SystemStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def process(tmp_path: Path, name: str, command: str) -> ProcessComponent:
    """A process of the local system whose command is ``command`` (never ready: it serves
    no ``/health/ready``; its restarts fail when it exits, or when they are given up)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return ProcessComponent(name, ["sh", "-c", command], env, free_ports(1)[0], tmp_path)


@pytest.fixture
def processes() -> Iterator[list[ProcessComponent]]:
    made: list[ProcessComponent] = []
    yield made
    for component in made:
        component.kill()


def only(supervisor: Supervisor) -> ServiceStatus:
    document: SystemStatus = json.loads(supervisor.status_path.read_text())
    (service,) = document["services"]
    return service


def check_until(supervisor: Supervisor, state: str, timeout: float = 30) -> ServiceStatus:
    """Look (as the supervisor's loop does) until the service is in ``state``; the real
    wait is for processes to exit and restarts to fail, never for a back-off."""
    deadline = time.monotonic() + timeout
    while True:
        assert supervisor.check()
        service = only(supervisor)
        if service["state"] == state:
            return service
        assert time.monotonic() < deadline, service
        time.sleep(0.01)


def test_delays_double_up_to_the_cap_and_start_over_after_a_long_run() -> None:
    loop = CrashLoop(RestartPolicy(first_delay=1.0, max_delay=30.0))
    assert [loop.died(up_for=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert loop.died(up_for=59.0) == 30  # up less than twice the cap: still looping
    assert loop.died(up_for=60.0) == 1  # up twice the cap (kubelet: 10 min for 5): over
    assert loop.died(up_for=0.0) == 2


def test_ten_thousand_deaths_in_a_row_keep_the_cap() -> None:
    loop = CrashLoop(RestartPolicy(first_delay=0.001, max_delay=5.0))
    delays = [loop.died(up_for=0.0) for _ in range(10_000)]
    assert delays[-1] == 5.0 and loop.deaths == 10_000


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_policy_that_would_loop_tightly_is_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="restart delay"):
        RestartPolicy(first_delay=first, max_delay=cap)


def test_a_process_that_crashes_at_once_backs_off_with_growing_delays(
    tmp_path: Path, clock: FakeClock, processes: list[ProcessComponent]
) -> None:
    crasher = process(tmp_path, "crasher", "exit 3")
    processes.append(crasher)
    policy = RestartPolicy(first_delay=1.0, max_delay=4.0)
    supervisor = Supervisor(policy, tmp_path / "status.json", clock=clock)
    crasher.process.start()
    supervisor.watch([crasher])

    service = check_until(supervisor, "backing-off")
    assert service["restarts"] == 0 and service["pid"] is None
    last = service["lastExit"]
    assert last is not None and (last["code"], last["signal"], last["reason"]) == (3, None, None)
    delays = [service["delay"]]
    for restart in range(1, 5):
        clock.now += 0.9 * delays[-1]  # not yet: nothing starts
        assert supervisor.check() and only(supervisor)["state"] == "backing-off"
        clock.now += 0.1 * delays[-1]
        assert supervisor.check()
        assert only(supervisor)["state"] == "restarting"
        assert only(supervisor)["restarts"] == restart
        service = check_until(supervisor, "backing-off")  # the new process exited at once
        assert service["lastExit"] is not None and service["lastExit"]["code"] == 3
        assert service["lastExit"]["reason"] == "crasher exited during start-up:"
        delays.append(service["delay"])
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    supervisor.close()


def test_a_process_that_ran_long_enough_starts_over_and_a_restart_can_be_abandoned(
    tmp_path: Path, clock: FakeClock, processes: list[ProcessComponent]
) -> None:
    sleeper = process(tmp_path, "sleeper", "exec sleep 60")
    processes.append(sleeper)
    policy = RestartPolicy(first_delay=1.0, max_delay=4.0)
    supervisor = Supervisor(policy, tmp_path / "status.json", clock=clock)
    sleeper.process.start()
    supervisor.watch([sleeper])
    supervisor.set_state("running")
    first = sleeper.pid
    assert first is not None and only(supervisor)["pid"] == first

    clock.now += policy.reset_after
    os.kill(first, signal.SIGKILL)
    service = check_until(supervisor, "backing-off")
    assert service["delay"] == 1.0
    assert service["lastExit"] is not None and service["lastExit"]["signal"] == "SIGKILL"
    assert service["lastExit"]["code"] is None

    clock.now += 1.0
    check_until(supervisor, "restarting")  # it never answers /health/ready: still starting
    deadline = time.monotonic() + 30
    while sleeper.pid == first:  # the restart, in its thread, has yet to start the process
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = sleeper.pid
    assert second is not None and is_alive(second)
    started = time.monotonic()
    supervisor.close()  # a stop while restarting: the new process is killed, not waited for
    assert time.monotonic() - started < 10
    assert not is_alive(second)
    supervisor.finish("stopped")
    document = status.read(supervisor.status_path)
    assert document["state"] == "stopped" and document["services"][0]["state"] == "stopped"


def test_fail_fast_stops_at_the_first_death(
    tmp_path: Path, clock: FakeClock, processes: list[ProcessComponent]
) -> None:
    crasher = process(tmp_path, "crasher", "exit 3")
    processes.append(crasher)
    supervisor = Supervisor(RestartPolicy(fail_fast=True), tmp_path / "status.json", clock=clock)
    crasher.process.start()
    supervisor.watch([crasher])
    deadline = time.monotonic() + 30
    while supervisor.check():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    service = only(supervisor)
    assert service["restarts"] == 0 and service["lastExit"] is not None
    assert service["lastExit"]["code"] == 3


def test_status_shows_every_local_system_to_a_person_and_a_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], processes: list[ProcessComponent]
) -> None:
    workdir = tmp_path / "nexus-local-test"
    workdir.mkdir()
    sleeper = process(workdir, "scheduler-0", "exec sleep 60")
    processes.append(sleeper)
    supervisor = Supervisor(RestartPolicy(), workdir / status.STATUS_FILE)
    sleeper.process.start()
    supervisor.watch([sleeper])
    supervisor.set_state("running")

    assert status.main([str(tmp_path)]) == 0  # found under a --workdir
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith(f"nexus dev (pid {os.getpid()}) running since ")
    assert shown[1].split() == ["SERVICE", "STATE", "PID", "RESTARTS", "LAST", "EXIT"]
    assert shown[2].split() == ["scheduler-0", "running", str(sleeper.pid), "0", "-"]

    assert status.main(["--json", str(workdir)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line) == status.read(workdir / status.STATUS_FILE)

    supervisor.finish("stopped")  # as in a kept working directory
    assert status.main([str(workdir / status.STATUS_FILE)]) == 0
    assert "scheduler-0  stopped" in capsys.readouterr().out


def test_status_without_a_running_system_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status.main([str(tmp_path)]) == 1
    assert "no running local system found" in capsys.readouterr().err
