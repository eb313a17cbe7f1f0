"""The client commands as a person runs them: ``nexus run|submit|wait|status|result|cancel``
against the whole local system, ``nexus wait`` under a pseudo-terminal with its progress
bar, and ``nexus submit`` interrupted by Ctrl-C, then run again to the end."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys
import threading
from pathlib import Path

import pytest
from harness import Servers
from support.devprocess import as_from_a_terminal
from support.system import TOKEN, System, local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.simulation import SimulationSettings

SLOW = ShardSpec(name="shard-0", simulation=SimulationSettings(duration="uniform:3,12"))


def environment(system: System) -> dict[str, str]:
    return {**os.environ, "NEXUS_URL": system.balancer_url, "NEXUS_TOKEN": TOKEN}


async def nexus(system: System, *argv: str) -> tuple[int, bytes, str]:
    """(exit status, stdout, stderr) of ``nexus ARGV`` in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus_sdk", *argv, env=environment(system),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out, err.decode()


async def runs_tagged(system: System, tag: str) -> int:
    status, body = await system.get(f"/algorithm/v1.2/results/echo/tags/{tag}")
    assert status == 200, body
    return len(body)


@pytest.mark.slow
async def test_run_status_result_and_cancel(servers: Servers, tmp_path: Path) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:
        code, out, err = await nexus(system, "run", "echo", "--params", '{"a": [1, "é"]}', "--wait")
        assert code == 0, err
        assert json.loads(out) == {"a": [1, "é"]}

        (tmp_path / "params.json").write_text('{"from": "a file"}')
        code, out, err = await nexus(
            system, "run", "echo", "--params", f"@{tmp_path / 'params.json'}", "--tag", "cli"
        )
        assert code == 0, err
        request_id = out.decode().strip()
        await system.wait_for("echo", request_id)
        code, out, err = await nexus(system, "status", "echo", request_id)
        assert code == 0 and json.loads(out)["status"] == "COMPLETED", (out, err)
        code, out, err = await nexus(system, "result", "echo", request_id)
        assert code == 0 and json.loads(out) == {"from": "a file"}, err
        code, out, err = await nexus(system, "cancel", "echo", request_id)
        assert code == 1 and out == b""
        assert "Conflict (409)" in err and err[-1] == "\n" and err.count("\n") == 1, err

        code, out, err = await nexus(system, "wait", "echo", "--tag", "nothing-here")
        assert code == 1 and "no runs of echo are tagged 'nothing-here'" in err, err

        mixed = tmp_path / "mixed.jsonl"
        mixed.write_text('{"good": 1}\n[1, 2]\n{nope\n{"good": 2}\n')
        code, out, err = await nexus(system, "submit", "echo", "--from", str(mixed), "--tag", "m")
        assert code == 1 and json.loads(out) == {"tag": "m", "submitted": 2, "refused": 2}
        assert "line 2: invalid_request: algorithmParameters" in err, err
        assert "line 3: not JSON" in err, err
        assert await runs_tagged(system, "m") == 2

        code, out, err = await nexus(system, "status", "echo", "not-an-id")
        assert code == 1 and "Refused (400): requestId" in err, err
        code, out, err = await nexus(system, "run", "echo", "--params", "{nope")
        assert code == 2 and "not JSON" in err, err
        code, out, err = await nexus(system, "run", "echo", "--params", "@/no/such/file")
        assert code == 2 and "cannot read /no/such/file" in err, err


@pytest.mark.slow
async def test_a_bulk_file_driven_to_the_end_with_a_progress_bar(
    servers: Servers, tmp_path: Path
) -> None:
    source = tmp_path / "runs.jsonl"
    lines = [json.dumps({"i": i}) for i in range(120)]
    lines[7] = json.dumps({"algorithmParameters": {"i": 7}, "payloadValidFor": "1h"})
    lines.insert(50, "")  # skipped
    source.write_text("\n".join(lines) + "\n")
    async with local_system(servers, shards=[SLOW], templates=[template("echo")]) as system:
        code, out, err = await nexus(
            system, "submit", "echo", "--from", str(source), "--tag", "bulk", "--chunk", "25"
        )
        assert code == 0, err
        assert json.loads(out) == {"tag": "bulk", "submitted": 120, "refused": 0}

        code, screen = await under_terminal(system, "wait", "echo", "--tag", "bulk")
        assert code == 0, screen
        frames = [f for f in screen.split("\r\x1b[K") if f.startswith("[")]
        assert len(frames) >= 2, screen  # redrawn in place as runs finish
        assert frames[-1].startswith("[" + "#" * 10) and "120/120  COMPLETED 120" in frames[-1]
        assert any("RUNNING" in f or "BUFFERED" in f for f in frames[:-1]), frames

        # again: the same runs, none new
        code, out, err = await nexus(
            system, "submit", "echo", "--from", str(source), "--tag", "bulk", "--chunk", "25"
        )
        assert code == 0, err
        assert await runs_tagged(system, "bulk") == 120


async def under_terminal(system: System, *argv: str) -> tuple[int, str]:
    """``nexus ARGV`` with its stderr on a pseudo-terminal: (exit status, what it drew)."""
    main, secondary = pty.openpty()
    drawn: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the process is gone and the terminal closed
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus_sdk", *argv, env=environment(system),
            stdout=asyncio.subprocess.DEVNULL, stderr=secondary,
        )  # fmt: skip
        os.close(secondary)
        code = await asyncio.wait_for(process.wait(), 120)
    finally:
        await asyncio.to_thread(reader.join, 10)
        os.close(main)
    return code, b"".join(drawn).decode(errors="replace")


@pytest.mark.slow
async def test_ctrl_c_leaves_nothing_a_rerun_would_duplicate(
    servers: Servers, tmp_path: Path
) -> None:
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(600)))
    command = ["submit", "echo", "--from", str(source), "--tag", "resumed", "--chunk", "20"]
    async with local_system(servers, templates=[template("echo")]) as system:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus_sdk", *command, env=environment(system),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=as_from_a_terminal,
        )  # fmt: skip
        assert process.stderr is not None
        first = await asyncio.wait_for(process.stderr.readline(), 60)
        assert first.startswith(b"submitted "), first
        process.send_signal(signal.SIGINT)  # Ctrl-C, in the middle of the file
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 130, err
        assert b"none is submitted twice" in err
        stored = await runs_tagged(system, "resumed")
        assert 0 < stored < 600

        code, out, err = await nexus(system, *command)
        assert code == 0, err
        assert json.loads(out)["submitted"] == 600
        assert await runs_tagged(system, "resumed") == 600  # each line once
