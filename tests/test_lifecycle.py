"""Service lifecycle: readiness, SIGTERM draining, crashed loops stopping the process."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import aiohttp.web
import pytest
from support.system import free_port

from nexus.core.config import HttpSettings, load_settings
from nexus.core.errors import ConfigError
from nexus.core.lifecycle import LIFECYCLE, create_base_app, run_app
from receiver.settings import ReceiverSettings


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sample_service", str(port_file), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError("sample service did not start")
        time.sleep(0.02)
    return process, int(port_file.read_text())


async def status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    process, port = start(tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            assert await status(session, f"{base}/health/ready") == 200
            assert await status(session, f"{base}/health/live") == 200
            slow = asyncio.create_task(session.get(f"{base}/slow"))
            await asyncio.sleep(0.2)  # the slow request is in flight
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            # not ready at once, while still answering during the drain delay
            assert await status(session, f"{base}/health/ready") == 503
            response = await slow
            assert response.status == 200
            assert await response.json() == {"slow": "done"}
            response.release()
        out, _ = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    lines = out.splitlines()
    assert lines == ["loop drained", "clients closed", "exit 0"]


async def test_sigterm_answers_lean_and_handed_over_requests_before_clients_close(
    tmp_path: Path,
) -> None:
    """A service on the lean server with aiohttp behind it: a lean request and one on a
    connection handed over to aiohttp, both in flight at SIGTERM, are both answered; the
    lean one before the loops stop, and both before the clients close."""
    process, port = start(tmp_path, "partial")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as lean, aiohttp.ClientSession() as other:
            lean_slow = asyncio.create_task(lean.post(f"{base}/lean-slow"))
            slow = asyncio.create_task(other.get(f"{base}/slow"))  # handed over at once
            await asyncio.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            for answering, body in ((lean_slow, {"slow": "lean"}), (slow, {"slow": "done"})):
                response = await answering
                assert response.status == 200
                assert await response.json() == body
                if answering is slow:
                    assert response.headers["Server"].startswith("Python")  # aiohttp's
                else:
                    assert "Server" not in response.headers  # the lean server's
                response.release()
        out, _ = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert out.splitlines() == ["lean request answered", "loop drained", "clients closed", "exit 0"]


async def test_crashed_loop_stops_the_process_non_zero(tmp_path: Path) -> None:
    process, _ = start(tmp_path, "crash")
    try:
        out, _ = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1
    assert out.splitlines()[-2:] == ["clients closed", "exit 1"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_either_signal_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    process, _ = start(tmp_path)
    try:
        process.send_signal(sig)
        out, _ = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert out.splitlines()[-1] == "exit 0"


async def _serve_until_stopped(http: HttpSettings, check: Callable[[int], Awaitable[None]]) -> None:
    """Run the base application in this loop, call ``check(api_port)``, then stop it.

    Serving settles the garbage collector for a service's life; the test process gets its
    own settings back afterwards."""
    thresholds = gc.get_threshold()
    app = create_base_app("sample", http)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(run_app(app, http, on_listening=listening.set_result))
    try:
        await check(await asyncio.wait_for(asyncio.shield(listening), 30))
    finally:
        app[LIFECYCLE].stop_requested.set()
        try:
            assert await serving == 0
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)


async def test_metrics_are_served_beside_the_api_by_default() -> None:
    http = HttpSettings(host="127.0.0.1", port=0, drain_delay=0)

    async def check(port: int) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            assert response.status == 200
            assert "python_info" in await response.text()

    await _serve_until_stopped(http, check)


async def test_a_metrics_port_serves_metrics_alone_and_takes_them_off_the_api() -> None:
    metrics_port = free_port()
    http = HttpSettings(host="127.0.0.1", port=0, drain_delay=0, metrics_port=metrics_port)

    async def check(port: int) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                assert "python_info" in await response.text()
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 404
            async with session.get(f"http://127.0.0.1:{metrics_port}/health/ready") as response:
                assert response.status == 404  # probes stay on the API's port
            async with session.get(f"http://127.0.0.1:{port}/health/ready") as response:
                assert response.status == 200

    await _serve_until_stopped(http, check)
    with socket.socket() as probe:  # the metrics listener closed with the service
        probe.bind(("127.0.0.1", metrics_port))


def test_the_metrics_port_is_a_setting() -> None:
    settings = load_settings(ReceiverSettings, env={"NEXUS__HTTP__METRICS_PORT": "9090"})
    assert settings.http.metrics_port == 9090
    assert load_settings(ReceiverSettings, env={}).http.metrics_port is None
    with pytest.raises(ConfigError, match="NEXUS__HTTP__METRICS_PORT"):
        load_settings(ReceiverSettings, env={"NEXUS__HTTP__METRICS_PORT": "0"})


async def test_a_replacement_shares_the_port_and_the_old_process_hands_its_clients_over() -> None:
    """Two processes of one service on one port (``reuse_port``), as a rolling restart on
    one host has them: the new one listens beside the old, the old one stops and closes
    the connections its clients keep alive, and their next request reaches the new one."""
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT on this platform")
    thresholds = gc.get_threshold()
    http = HttpSettings(host="127.0.0.1", port=free_port(), drain_delay=0, reuse_port=True)
    apps, serving = [], []
    for name in ("old", "new"):
        app = create_base_app("sample", http)

        async def who(request: aiohttp.web.Request, name: str = name) -> aiohttp.web.Response:
            return aiohttp.web.Response(text=name)

        app.router.add_get("/who", who)
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        apps.append(app)
        serving.append(asyncio.create_task(run_app(app, http, on_listening=listening.set_result)))
        await asyncio.wait_for(listening, 30)
        if name == "old":  # a client keeps a connection to the old one alive
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            async with session.get(f"http://127.0.0.1:{http.port}/who") as response:
                assert await response.text() == "old"
    try:
        apps[0][LIFECYCLE].stop_requested.set()
        assert await serving[0] == 0
        async with session.get(f"http://127.0.0.1:{http.port}/who") as response:
            assert await response.text() == "new"  # the kept-alive connection was closed
    finally:
        await session.close()
        apps[1][LIFECYCLE].stop_requested.set()
        try:
            assert await serving[1] == 0
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)
