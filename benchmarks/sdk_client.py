"""The client SDK's own CPU per submitted run.

    .venv/bin/python benchmarks/sdk_client.py [--runs 5000] [--concurrency 64] [--chunk 100]

Starts the local system (real PostgreSQL, Redis, SeaweedFS, one local cluster with pods
off, one scheduler whose dispatch is throttled to 0.01 Jobs/s, so that only acceptance is
measured) and submits runs from this process with the SDK, measuring this process's CPU
(user + system, ``getrusage``) over each phase — the servers are other processes:

1. ``async_submit`` — ``AsyncClient.submit`` from ``--concurrency`` tasks, one run a request;
2. ``async_bulk`` — ``AsyncClient.submit_many`` in chunks of ``--chunk`` (bulk requests
   where the server has the bulk route; one by one, 16 at a time, where it has not:
   ``bulk_route`` says which);
3. ``sync_submit`` — ``Client.submit`` from one thread.

Each run's parameters are small (an index and 64 characters). Prints human lines, then one
JSON line with, per phase, runs/s and the SDK's CPU µs per run (and the scheduler's, for
scale).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from stack import StackOptions, local_stack

from nexus_sdk.client import AsyncClient
from nexus_sdk.syncclient import Client


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def params(index: int) -> dict[str, Any]:
    return {"index": index, "text": "x" * 64}


def figures(runs: int, wall: float, cpu: float, server: dict[str, float]) -> dict[str, Any]:
    return {
        "runs": runs,
        "runs_per_s": round(runs / wall),
        "sdk_cpu_us_per_run": round(cpu / runs * 1e6, 1),
        "scheduler_cpu_us_per_run": round(server["scheduler-0"] / runs * 1e6, 1),
    }


def measured(meter: CpuMeter, runs: int, work: Callable[[], Any]) -> dict[str, Any]:
    meter.start()
    cpu, started = own_cpu(), time.monotonic()
    work()
    wall, cpu = time.monotonic() - started, own_cpu() - cpu
    return figures(runs, wall, cpu, meter.stop())


async def async_phases(url: str, token: str, args: argparse.Namespace, meter: CpuMeter) -> Any:
    results: dict[str, Any] = {}
    async with AsyncClient(url, token) as client:
        await asyncio.gather(*(client.submit("echo", params(i)) for i in range(200)))  # warm

        async def submit_all() -> None:
            queue = iter(range(args.runs))

            async def worker() -> None:
                for index in queue:
                    await client.submit("echo", params(index), tag="bench-single")

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        meter.start()
        cpu, started = own_cpu(), time.monotonic()
        await submit_all()
        wall, cpu = time.monotonic() - started, own_cpu() - cpu
        results["async_submit"] = figures(args.runs, wall, cpu, meter.stop())

        meter.start()
        cpu, started = own_cpu(), time.monotonic()
        outcomes = await client.submit_many(
            "echo", (params(i) for i in range(args.runs)), tag="bench-bulk", chunk_size=args.chunk
        )
        wall, cpu = time.monotonic() - started, own_cpu() - cpu
        assert all(o.accepted for o in outcomes), [o for o in outcomes if not o.accepted][:3]
        results["async_bulk"] = figures(args.runs, wall, cpu, meter.stop())
        results["bulk_route"] = client._has_bulk
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5000, help="runs per phase")
    parser.add_argument("--concurrency", type=int, default=64, help="async submitting tasks")
    parser.add_argument("--chunk", type=int, default=100, help="runs per bulk request")
    parser.add_argument("--sync-runs", type=int, default=2000, help="runs of the sync phase")
    args = parser.parse_args()
    options = StackOptions(
        tls=False,
        mode="off",
        maintainer=False,
        create_rate=0.01,
        events=False,
        log_format="json",
        environment={
            "NEXUS__LOG__LEVEL": "WARNING",
            "NEXUS__SCHEDULER__MAX_QUEUE_DEPTH": "10000000",
        },
    )
    with local_stack(options) as stack:
        url, token = stack.schedulers[0], stack.token
        meter = CpuMeter({"scheduler-0": stack.pids()["scheduler-0"]})
        results = asyncio.run(async_phases(url, token, args, meter))
        with Client(url, token) as client:

            def submit_sync() -> None:
                for index in range(args.sync_runs):
                    client.submit("echo", params(index), tag="bench-sync")

            results["sync_submit"] = measured(meter, args.sync_runs, submit_sync)
    for phase in ("async_submit", "async_bulk", "sync_submit"):
        print(f"{phase}: {results[phase]}")
    print(json.dumps({"benchmark": "sdk_client", **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
