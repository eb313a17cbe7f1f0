"""``nexus dev`` as a cluster: a process that dies comes back, and the system carries on.

Real processes on loopback: one ``nexus dev --mode simulated --schedulers 2`` for the Nexus
processes and the local cluster, one ``--services-only`` for the servers, each started
once for its tests, with a short restart back-off so that nothing waits long. Runs
trickle in while a process is killed with SIGKILL; every run the system acknowledged
(202) is then followed to its end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import is_alive
from support.devprocess import (
    UNFINISHED,
    DevProcess,
    call,
    read_status,
    service,
    wait_for_status,
)

from nexus_dev.servers.services import LocalPostgres, PostgresInfo
from nexus_dev.status import SystemStatus

pytestmark = pytest.mark.slow
RESTART_DELAY = 0.2
"""The first back-off in these tests, in seconds (the default, 1 s, is for people)."""


@pytest.fixture(scope="module")
def system() -> Iterator[tuple[DevProcess, dict[str, Any]]]:
    dev = DevProcess(
        "--mode", "simulated", "--schedulers", "2", "--restart-delay", str(RESTART_DELAY)
    )  # fmt: skip
    try:
        yield dev, dev.ready(timeout=90)
        code, logs = dev.finish(signal.SIGTERM)
        assert code == 0, logs
    finally:
        dev.kill()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[DevProcess, dict[str, Any]]]:
    dev = DevProcess("--services-only", "--restart-delay", "0.05", "--restart-delay-max", "0.4")
    try:
        yield dev, dev.ready()
        code, logs = dev.finish(signal.SIGTERM)
        assert code == 0, logs
    finally:
        dev.kill()


class Trickle:
    """Runs submitted every few milliseconds, in turn to each scheduler, all with one tag.
    A scheduler that does not answer is passed over for the next, as a load balancer
    would; only a 202 counts as accepted."""

    def __init__(
        self, ready: dict[str, Any], algorithm: str = "echo", interval: float = 0.02
    ) -> None:
        self.ready = ready
        self.algorithm = algorithm
        self.interval = interval
        self.tag = f"trickle-{uuid.uuid4().hex[:12]}"
        self.headers = {"Authorization": f"Bearer {ready['token']}"}
        self.accepted: list[tuple[float, str]] = []
        """When (monotonic) and which runs were accepted."""
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._submit, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _submit(self) -> None:
        schedulers = self.ready["schedulers"]
        turn = 0
        while not self._stop.wait(self.interval):
            for _ in schedulers:
                url = schedulers[turn % len(schedulers)]
                turn += 1
                body = {"algorithmParameters": {"n": turn}, "tag": self.tag}
                try:
                    run = f"{url}/algorithm/v1.2/run/{self.algorithm}"
                    answer = call("POST", run, self.headers, body)
                except (OSError, urllib.error.URLError):  # down, or cut off mid-answer
                    self.refused += 1
                    continue
                self.accepted.append((time.monotonic(), answer["requestId"]))
                break

    def wait_for(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` runs were accepted in all."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"{len(self.accepted)} runs accepted"
            time.sleep(0.01)

    def outcomes(self, timeout: float = 120) -> dict[str, str]:
        """Every accepted run's final status, once none is unfinished."""
        base = self.ready["schedulers"][-1]
        url = f"{base}/algorithm/v1.2/results/{self.algorithm}/tags/{self.tag}"
        wanted = {run for _, run in self.accepted}
        deadline = time.monotonic() + timeout
        while True:
            answers = _get(url, self)
            statuses = {answer["requestId"]: answer["status"] for answer in answers}
            assert wanted <= set(statuses), wanted - set(statuses)  # nothing acknowledged lost
            unfinished = {run for run in wanted if statuses[run] in UNFINISHED}
            if not unfinished:
                self.answers = {a["requestId"]: a for a in answers}
                return {run: statuses[run] for run in wanted}
            assert time.monotonic() < deadline, f"unfinished: {sorted(unfinished)[:5]}..."
            time.sleep(0.2)


def _get(url: str, trickle: Trickle) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = call("GET", url, trickle.headers)
    return answer


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.decode().partition("=")[::2] for entry in raw.split(b"\0") if entry)


def _restarted(name: str, restarts: int) -> Any:
    def condition(status: SystemStatus) -> bool:
        found = service(status, name)
        return found["state"] == "running" and found["restarts"] == restarts

    return condition


def test_a_killed_scheduler_comes_back_under_its_pod_name_and_every_run_completes(
    system: tuple[DevProcess, dict[str, Any]],
) -> None:
    """The runs keep their input in S3 (``echo-stored``): an inline input is read from the
    scheduler that took the run, and with no load balancer in front of the local
    schedulers, a pod reading it while that scheduler is down fails."""
    dev, ready = system
    before = service(read_status(ready), "scheduler-0")
    old_pid, pod = before["pid"], before["pod"]
    assert old_pid is not None
    assert _environment(old_pid)["NEXUS__SCHEDULER__POD_NAME"] == pod

    with Trickle(ready, "echo-stored") as trickle:
        trickle.wait_for(20)
        os.kill(old_pid, signal.SIGKILL)
        status = wait_for_status(ready, _restarted("scheduler-0", before["restarts"] + 1))
        back = time.monotonic()
        trickle.wait_for(len(trickle.accepted) + 20)

    after = service(status, "scheduler-0")
    assert after["pid"] not in (None, old_pid) and after["pod"] == pod
    assert after["pid"] is not None
    assert _environment(after["pid"])["NEXUS__SCHEDULER__POD_NAME"] == pod  # a container restart
    assert after["lastExit"] is not None and after["lastExit"]["signal"] == "SIGKILL"
    assert after["url"] == before["url"]  # its port too
    assert service(status, "scheduler-1")["restarts"] == 0  # the other one carried on
    assert any(at > back for at, _ in trickle.accepted)
    outcomes = trickle.outcomes()
    assert set(outcomes.values()) == {"COMPLETED"}, [
        a for a in trickle.answers.values() if a["status"] != "COMPLETED"
    ]
    shown = subprocess.run(
        [sys.executable, "-m", "nexus", "dev", "status", ready["workdir"]],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    row = next(line.split() for line in shown.splitlines() if line.startswith("scheduler-0 "))
    assert row[1:6] == ["running", str(after["pid"]), str(after["restarts"]), "killed", "by"]
    assert dev.logged("scheduler-0 was killed by SIGKILL after")
    assert dev.logged(f"scheduler-0 is back (pid {after['pid']}, restart {after['restarts']})")


def test_a_killed_receiver_comes_back_and_every_run_finishes(
    system: tuple[DevProcess, dict[str, Any]],
) -> None:
    """Completions that reach no receiver are tried again by the simulated pods, with
    back-off, until it is back: every run completes, those that finished while it was
    away included."""
    dev, ready = system
    before = service(read_status(ready), "receiver")
    assert before["pid"] is not None

    with Trickle(ready) as trickle:
        trickle.wait_for(20)
        os.kill(before["pid"], signal.SIGKILL)
        status = wait_for_status(ready, _restarted("receiver", before["restarts"] + 1))
        back = time.monotonic()
        trickle.wait_for(len(trickle.accepted) + 20)

    after = service(status, "receiver")
    assert after["pid"] not in (None, before["pid"]) and after["url"] == before["url"]
    outcomes = trickle.outcomes()
    assert set(outcomes.values()) == {"COMPLETED"}, [
        a for a in trickle.answers.values() if a["status"] != "COMPLETED"
    ]
    assert any(at > back for at, _ in trickle.accepted)
    assert dev.logged("receiver was killed by SIGKILL after")


def test_a_killed_cluster_comes_back_empty_with_its_catalog(
    system: tuple[DevProcess, dict[str, Any]],
) -> None:
    dev, ready = system
    before = service(read_status(ready), "devcluster")
    assert before["pid"] is not None
    kubeconfig = Path(ready["shards"]["shard-0"]["kubeconfig"])
    config = kubeconfig.read_text()

    os.kill(before["pid"], signal.SIGKILL)
    status = wait_for_status(ready, _restarted("devcluster", before["restarts"] + 1))
    assert kubeconfig.read_text() == config  # same port, same token: the clients' view holds
    assert dev.logged("devcluster is back", "came back empty")
    assert service(status, "scheduler-0")["state"] == "running"

    with Trickle(ready) as trickle:  # the example catalog is there again, and Jobs run
        trickle.wait_for(10)
    assert set(trickle.outcomes().values()) == {"COMPLETED"}


def test_a_killed_postgres_comes_back_with_its_data(
    servers: tuple[DevProcess, dict[str, Any]],
) -> None:
    dev, ready = servers
    pg = PostgresInfo(**{k: v for k, v in ready["postgres"].items() if k != "dsn"})
    client = LocalPostgres(external=pg)
    client.psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
    before = service(read_status(ready), "postgres")
    assert before["pid"] is not None

    os.kill(before["pid"], signal.SIGKILL)
    wait_for_status(ready, _restarted("postgres", before["restarts"] + 1))
    assert client.psql("SELECT n FROM kept") == "42"  # same port, same data
    assert dev.logged("postgres is back")


def test_a_server_that_cannot_start_backs_off_with_growing_delays(
    servers: tuple[DevProcess, dict[str, Any]],
) -> None:
    """Redis killed, and its port taken: every restart fails at once, and the delays
    grow to the cap; given its port back, it returns — empty, as it says."""
    dev, ready = servers
    before = service(read_status(ready), "redis")
    assert before["pid"] is not None
    port = int(ready["redis"]["url"].rsplit(":", 1)[1].split("/")[0])

    with socket.socket() as squatter:
        os.kill(before["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:  # the port is free once the process is gone, well before a restart
            try:
                squatter.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.001)
        squatter.listen()
        seen: dict[int, float] = {}  # deaths in a row -> the delay after them
        deadline = time.monotonic() + 30
        while 0.4 not in seen.values() or len(seen) < 3:
            assert time.monotonic() < deadline, seen
            redis = service(read_status(ready), "redis")
            if redis["state"] == "backing-off":
                assert redis["delay"] is not None and redis["nextStartAt"] is not None
                seen[redis["restarts"] - before["restarts"] + 1] = redis["delay"]
                assert redis["lastExit"] is not None
                if redis["restarts"] > before["restarts"]:  # a restart that failed
                    assert redis["lastExit"]["reason"], redis
            time.sleep(0.005)
    assert seen == {deaths: min(0.4, 0.05 * 2 ** (deaths - 1)) for deaths in seen}
    back = wait_for_status(ready, lambda s: service(s, "redis")["state"] == "running")
    # one restart per death: its port back, the next one brought it back
    assert service(back, "redis")["restarts"] - before["restarts"] >= max(seen)
    assert dev.logged("redis did not come back: ")
    assert dev.logged("redis is back", "came back empty")


def test_a_server_restarting_when_the_system_stops_is_stopped_too() -> None:
    """A stop that arrives while a process is being restarted stops it too: no process is
    left behind, and a kept working directory ends with the final status."""
    parent = Path(tempfile.mkdtemp(prefix="nexus-dev-test-"))
    parent.chmod(0o755)  # as root, PostgreSQL runs as another user who must pass through
    dev = DevProcess(
        "--services-only", "--workdir", str(parent), "--keep", "--restart-delay", "0.05"
    )
    try:
        ready = dev.ready()
        workdir = Path(ready["workdir"])
        assert _running_in(workdir)  # postgres, redis, weed
        s3 = service(read_status(ready), "s3")["pid"]
        assert s3 is not None
        os.kill(s3, signal.SIGKILL)
        wait_for_status(ready, lambda s: service(s, "s3")["state"] == "restarting")
        code, logs = dev.finish(signal.SIGTERM)
        assert code == 0, logs
        assert _running_in(workdir) == []  # the restarted weed included
        final = read_status(ready)
        assert final["state"] == "stopped"
        assert {s["state"] for s in final["services"]} == {"stopped"}
    finally:
        dev.kill()
        shutil.rmtree(parent, ignore_errors=True)


def _running_in(workdir: Path) -> list[int]:
    """Live processes whose command line names ``workdir`` (each server names its data)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if str(workdir).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return [pid for pid in found if is_alive(pid)]
