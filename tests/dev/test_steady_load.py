"""The fault cases' load (:class:`nexus_dev.faults.SteadyLoad`) against a stand-in scheduler.

The stand-in acknowledges every submission and lists every run it acknowledged as
finished at once; it can hold its answers back for a while, as a scheduler waiting on a
store does. What is checked is the bookkeeping the fault suite judges by: every run
acknowledged is followed to its end, including one acknowledged after the load stopped.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nexus_dev.faults import SteadyLoad


class StandInScheduler(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.runs: list[str] = []
        self.hold = 0.0
        """Seconds each submission's answer is held back."""
        self.held = threading.Event()
        """Set once a submission is being held back."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandInScheduler

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200 if isinstance(body, list) else 202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.hold:
            self.server.held.set()
            time.sleep(self.server.hold)
        run = str(uuid.uuid4())
        with self.server.lock:
            self.server.runs.append(run)  # stored, hence listed, before it is acknowledged
        self._answer({"requestId": run})

    def do_GET(self) -> None:
        with self.server.lock:
            runs = list(self.server.runs)
        self._answer([{"requestId": r, "status": "COMPLETED"} for r in runs])


@pytest.fixture
def scheduler() -> Iterator[StandInScheduler]:
    server = StandInScheduler()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_run_acknowledged_after_the_load_stopped_is_followed_to_its_end(
    scheduler: StandInScheduler,
) -> None:
    load = SteadyLoad([scheduler.url], "token", rate=40.0, workers=2)
    load.start()
    time.sleep(0.3)
    scheduler.hold = 1.0  # the next submissions are answered a second late
    assert scheduler.held.wait(5)
    stopped = time.monotonic()
    load.stop()  # while they are in flight
    missing = load.settle(timeout=10)
    assert any(at > stopped for at in load.accepted.values())  # acknowledged after the stop
    assert len(load.accepted) == len(scheduler.runs)
    assert missing == set()
    assert set(load.finished) == set(load.accepted)
