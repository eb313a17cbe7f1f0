"""Replicas sharing a port, and their rolling restart, on real processes.

Each replica is a tiny server that listens with ``SO_REUSEPORT`` on the shared port, as
``nexus dev --receivers N`` runs the receivers, answers each connection with its pid, and
on SIGTERM stops listening and exits 0.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import is_alive

from nexus_dev import replicas
from nexus_dev.restarts import RestartPolicy, Supervisor
from nexus_dev.servers.supervision import free_ports
from nexus_dev.stack import ProcessComponent
from nexus_dev.status import SystemStatus

pytestmark = pytest.mark.skipif(not replicas.SUPPORTED, reason="replicas need Linux")

SERVER = """
import os, signal, socket, sys
from pathlib import Path
if Path(sys.argv[2]).exists():
    sys.exit(3)  # a release that cannot start
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(64)
def stop(*_):
    listener.close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    connection, _ = listener.accept()
    connection.sendall(str(os.getpid()).encode())
    connection.close()
"""


@pytest.fixture
def port() -> int:
    return free_ports(1)[0]


@pytest.fixture
def pair(tmp_path: Path, port: int) -> Iterator[list[ProcessComponent]]:
    """Two replicas on ``port``, started and listening."""
    argv = [sys.executable, "-c", SERVER, str(port), str(tmp_path / "broken")]
    made = [
        ProcessComponent(f"replica-{i}", argv, {}, port, tmp_path, shared_port=True)
        for i in range(2)
    ]
    try:
        for replica in made:
            replica.start()
        yield made
    finally:
        for replica in made:
            replica.kill()


def ask(port: int) -> int | None:
    """The pid of the replica that answers a new connection; ``None`` if it was reset."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            answer = connection.recv(32)
    except ConnectionResetError:  # queued on a listener that closed: a client tries again
        return None
    return int(answer) if answer else None


def states(supervisor: Supervisor) -> list[tuple[str, int, int | None]]:
    document: SystemStatus = json.loads(supervisor.status_path.read_text())
    return [(s["state"], s["restarts"], s["pid"]) for s in document["services"]]


def test_listens_names_the_process_that_listens_on_a_port(port: int) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        assert not replicas.listens(os.getpid(), port)
        listener.listen()
        assert replicas.listens(os.getpid(), port)
        assert not replicas.listens(os.getpid(), port + 1)


def test_a_rolling_restart_replaces_each_replica_in_turn_and_the_port_never_refuses(
    tmp_path: Path, port: int, pair: list[ProcessComponent]
) -> None:
    supervisor = Supervisor(RestartPolicy(), tmp_path / "status.json")
    supervisor.watch(pair)
    old = [replica.pid for replica in pair]
    assert {ask(port) for _ in range(40)} <= set(old)
    answers: list[int | None] = []
    refused: list[OSError] = []
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            try:
                answers.append(ask(port))
            except OSError as exc:  # refused: nobody listening
                refused.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        supervisor.roll_out()
        deadline = time.monotonic() + 60
        while [(state, restarts) for state, restarts, _ in states(supervisor)] != [
            ("running", 1),
            ("running", 1),
        ]:
            assert supervisor.check()
            assert time.monotonic() < deadline, states(supervisor)
            time.sleep(0.01)
    finally:
        done.set()
        thread.join()
        supervisor.close()
    new = [replica.pid for replica in pair]
    assert not set(new) & set(old)
    assert [pid for _, _, pid in states(supervisor)] == new
    assert not any(is_alive(pid) for pid in old if pid is not None)
    assert refused == []
    served = [pid for pid in answers if pid is not None]
    assert set(served) >= set(new) and len(served) >= 0.95 * len(answers)
    assert {ask(port) for _ in range(40)} <= set(new)


def test_a_replacement_that_cannot_start_leaves_the_old_replica_serving(
    tmp_path: Path, port: int, pair: list[ProcessComponent]
) -> None:
    supervisor = Supervisor(RestartPolicy(), tmp_path / "status.json")
    supervisor.watch(pair)
    old = [replica.pid for replica in pair]
    (tmp_path / "broken").touch()
    supervisor.roll_out()
    deadline = time.monotonic() + 30
    while [state for state, _, _ in states(supervisor)] != ["running", "running"] or any(
        restarts == 0 for _, restarts, _ in states(supervisor)
    ):
        assert supervisor.check()
        assert time.monotonic() < deadline, states(supervisor)
        time.sleep(0.01)
    supervisor.close()
    assert [replica.pid for replica in pair] == old
    assert all(pid is not None and is_alive(pid) for pid in old)
    assert {ask(port) for _ in range(40)} <= set(old)
