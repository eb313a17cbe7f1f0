"""Instructions the local cluster spends per run, counted by callgrind (load-independent).

    .venv/bin/python benchmarks/devcluster_instructions.py [--runs 200] [--concurrency 16]
        [--devcluster-option=--relist-interval=30 ...] [--profile FILE] [--tree DIR]

A ``nexus devcluster`` process (one simulated shard, plain HTTP) runs under ``valgrind
--tool=callgrind --instr-atstart=no``, watched as Nexus's maintainer watches a shard (Jobs
and pods by the algorithm-run label, Events by ``reason=FailedCreate``), its simulated
pods playing the whole algorithm contract against a stub server in another process (input
GET, completion POST). Jobs shaped as the scheduler creates them (the same labels, env,
args, presigned URLs and defaults, about 4 KB) are created ``--concurrency`` at a time:
a warm-up batch, then, with instrumentation switched on and the counters zeroed
(``callgrind_control``), ``--runs`` Jobs until every completion has arrived and two seconds
more for the last status writes; then an idle window of the same wall time. The figure is
(window - idle) / runs: the emulator's instructions per run, its HTTP serving, Job
controller, kubelet, simulated pods, watches and event loop included.

Callgrind runs the emulator some 50 times slower while the simulated durations and the
kubelet's relist stay in wall-clock seconds, so a pod that ends long before the relist on
a native run may outlive it here: pass ``--devcluster-option=--relist-interval=30`` to
count what a run costs when, as natively at the default 1 s, its 10 ms pod ends first.

``--tree DIR`` runs the emulator from another checkout (``git archive REV | tar -x -C
DIR``): its packages come first on ``PYTHONPATH``, ahead of this venv's editable ones, so
two trees can be counted side by side with the same interpreter and dependencies.

``--profile FILE`` samples the emulator with py-spy instead (natively, no callgrind),
for ``profiles.py FILE``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent
SELECTOR = "science.sneaksanddata.com/nexus-component%3Dalgorithm-run"
STUB = r"""
from aiohttp import web
import asyncio, uvloop
completions = 0
async def handle(request):
    global completions
    await request.read()
    if request.path == "/completions":
        return web.Response(text=str(completions))
    if request.method == "POST":
        completions += 1
        return web.json_response({})
    return web.json_response({"x": 1})
async def main():
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def job(name: str, stub: str) -> dict[str, Any]:
    """A Job as Nexus's scheduler writes it for an ``echo`` run (values made up)."""
    labels = {
        "science.sneaksanddata.com/algorithm-template-name": "echo",
        "science.sneaksanddata.com/nexus-component": "algorithm-run",
        "science.sneaksanddata.com/request-id": name,
        "science.sneaksanddata.com/attempt": "1",
    }
    env = {
        "NEXUS__ALGORITHM_NAME": "echo",
        "NEXUS__SHARD_NAME": "shard-0",
        "NEXUS__REQUEST_ID": name,
        "NEXUS__ATTEMPT": "1",
        "NEXUS__RECEIVER_URL": stub,
        "NEXUS__RUN_TOKEN": "WHGERgHTbi04XSvdcgPPPFu0o1Yn4yxi",
        "NEXUS__RESULT_UPLOAD_URL": f"{stub}/nexus/results/algorithm%3Decho/{name}?X-Amz-"
        "Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=nexus-local%2F20261206%2Fus-east-1%2Fs3"
        "%2Faws4_request&X-Amz-Date=20261206T222637Z&X-Amz-Expires=4200&X-Amz-SignedHeaders="
        "host&X-Amz-Signature=486f809ff77e39a7d16a0faaffb86d8ec066fb67728513451c140c8cff9f8b93",
        "NEXUS__CRYSTAL_RECEIVER_URL": stub,
        "CRYSTAL__ALGORITHM_NAME": "echo",
        "NEXUS__RESULT_INLINE_LIMIT": "262144",
        "NEXUS__SCHEDULER_URL": stub,
        "NEXUS__RUN_CREDENTIAL": f"nexus-run.echo.{name}.1796600197.ZGV2ZWxvcGVy.coAbdIhuTCFL",
    }
    limits = {"cpu": "500m", "memory": "256Mi"}
    container = {
        "name": name,
        "image": "local/nexus:dev",
        "args": [
            f"--sas-uri={stub}/algorithm/v1.2/payload/echo/requests/{name}/content"
            "?expires=1796682397&signature=IkxdHAT4do9aX9pMAptrsd4lHlRMZM-j",
            f"--request-id={name}",
        ],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"limits": limits, "requests": limits},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "command": ["python", "-m", "nexus_sdk.examples", "echo"],
        "envFrom": [{"configMapRef": {"name": "nexus-examples"}}],
        "imagePullPolicy": "IfNotPresent",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"science.sneaksanddata.com/shard": "shard-0"},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels, "annotations": {}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
            "podReplacementPolicy": "TerminatingOrFailed",
        },
    }


def counted(pattern: str, keep: bool = False) -> list[int]:
    """The instruction totals of callgrind's dumps, in dump order (the files removed unless
    ``keep``)."""
    found = []
    for path in sorted(glob.glob(pattern), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as dump:
            for line in dump:
                if line.startswith(("summary:", "totals:")):
                    found.append(int(line.split()[1]))
                    break
        if not keep:
            os.remove(path)
    return found


async def control(*args: str) -> None:
    """``callgrind_control`` on the process under callgrind: switch counting on, zero or
    dump it."""
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await process.wait():
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


async def run_batch(
    session: aiohttp.ClientSession, base: str, stub_url: str, runs: int, concurrency: int
) -> None:
    """Create ``runs`` Jobs, ``concurrency`` at a time, and return once the stub server has
    seen every one's completion (ten minutes at most)."""

    async def completions() -> int:
        async with session.get(f"{stub_url}/completions") as response:
            return int(await response.text())

    slots = asyncio.Semaphore(concurrency)
    jobs = f"{base}/apis/batch/v1/namespaces/nexus/jobs"

    async def create() -> None:
        body = json.dumps(job(str(uuid.uuid4()), stub_url))
        async with slots, session.post(jobs, data=body) as response:
            assert response.status == 201, (response.status, await response.text())

    before = await completions()
    await asyncio.gather(*(create() for _ in range(runs)))
    for _ in range(3000):
        if await completions() >= before + runs:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the runs did not complete")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="devcluster-instructions-")
    out = f"{directory}/callgrind.out"
    stub = await asyncio.create_subprocess_exec(PYTHON, "-c", STUB, stdout=subprocess.PIPE)
    assert stub.stdout is not None
    stub_url = f"http://127.0.0.1:{int(await stub.stdout.readline())}"
    prefix = [] if args.profile else [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"
    ]  # fmt: skip
    command = [
        *prefix, PYTHON, "-m", "nexus", "devcluster", "--shard", "bench", "--kubeconfig-dir",
        directory, "--log-level", "WARNING", "--token", "bench", "--plain-http",
        "--mode", "simulated", "--duration", "fixed:0.01", *args.devcluster_option,
    ]  # fmt: skip
    environment = dict(os.environ)
    if args.tree is not None:
        tree = args.tree
        paths = [str(tree), str(tree / "dev"), environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    emulator = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment
    )
    pid = str(emulator.pid)
    try:
        assert emulator.stdout is not None
        line = (await emulator.stdout.readline()).decode()
        if not line.startswith("DEVCLUSTER READY "):
            raise RuntimeError(f"devcluster did not start: {line!r}")
        base = json.loads(line.split(" ", 2)[2])["bench"]["url"]
        headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
        query = "watch=true&allowWatchBookmarks=true&timeoutSeconds=3600"
        async with aiohttp.ClientSession(headers=headers) as session:
            watches = [
                await session.get(base + path)
                for path in (
                    f"/apis/batch/v1/namespaces/nexus/jobs?labelSelector={SELECTOR}&{query}",
                    f"/api/v1/namespaces/nexus/pods?labelSelector={SELECTOR}&{query}",
                    f"/api/v1/namespaces/nexus/events?fieldSelector=reason%3DFailedCreate&{query}",
                )
            ]

            async def drain(response: aiohttp.ClientResponse) -> None:
                async for _ in response.content.iter_any():
                    pass

            drains = [asyncio.create_task(drain(r)) for r in watches]

            async def batch(runs: int) -> None:
                await run_batch(session, base, stub_url, runs, args.concurrency)
                await asyncio.sleep(2.0)

            await batch(args.warmup)
            if args.profile:
                spy = Path(PYTHON).parent / "py-spy"
                recorder = await asyncio.create_subprocess_exec(
                    *(spy, "record", "--nonblocking", "-r", "200", "-f", "raw"),
                    *("-o", str(args.profile), "--pid", pid),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await batch(args.runs)
                recorder.send_signal(2)
                await recorder.wait()
                return {"runs": args.runs, "profile": str(args.profile)}
            await control("-i", "on", pid)
            await control("-z", pid)
            started = time.monotonic()
            await batch(args.runs)
            busy = time.monotonic() - started
            await control("-d", pid)
            await asyncio.sleep(busy)
            await control("-d", pid)
            for task in drains:
                task.cancel()
    finally:
        emulator.terminate()
        await emulator.wait()
        stub.terminate()
        await stub.wait()
    try:
        window, idle = counted(f"{out}.*")[:2]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "runs": args.runs,
        "instructions_per_run": round((window - idle) / args.runs),
        "idle_per_run": round(idle / args.runs),
        "window_seconds": round(busy, 1),
        "options": args.devcluster_option,
        "tree": str(args.tree or ROOT),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=16, help="creations in flight")
    parser.add_argument("--devcluster-option", action="append", default=[], metavar="OPTION")
    parser.add_argument("--profile", type=Path, metavar="FILE", help="py-spy instead")
    parser.add_argument("--tree", type=Path, metavar="DIR", help="run another checkout's code")
    args = parser.parse_args()
    if args.tree is not None:
        args.tree = args.tree.resolve()
    print(json.dumps({"benchmark": "devcluster-instructions", **asyncio.run(measure(args))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
