"""Service lifecycle: readiness, SIGTERM draining, crashed loops stopping the process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest


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
