"""Bulk submit throughput of one scheduler process: runs accepted per second.

    .venv/bin/python benchmarks/bulk_submit.py [--seconds 15] [--connections 8] [--batch 100]

Starts the local system (real PostgreSQL, Redis, SeaweedFS, one local cluster with pods
off, one scheduler with dispatch throttled to 0.01 Jobs/s, so the figures are those of
acceptance) and, from this separate process, posts ``POST /algorithm/v1.2/runs/echo`` with
``--batch`` runs of inline inputs each, in a closed loop on ``--connections`` keep-alive
connections. Every answer is checked: a run counts as accepted only when its item carries
a ``requestId``. Prints human lines, then one JSON line with runs accepted per second,
request latency, and CPU microseconds per accepted run of the scheduler, PostgreSQL and
Redis. ``--profile DIR`` records where each process spends its CPU (py-spy; summarise
with ``benchmarks/profiles.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from loadgen import closed_loop, request_bytes
from profiles import record
from stack import StackOptions, local_stack


def bulk_request(url: str, token: str, batch: int) -> object:
    headers = {"Authorization": f"Bearer {token}"}

    def build(index: int) -> bytes:
        runs = [
            {"algorithmParameters": {"index": index * batch + i, "text": "x" * 64}}
            for i in range(batch)
        ]
        body = orjson.dumps({"runs": runs})
        return request_bytes("POST", f"{url}/algorithm/v1.2/runs/echo", body, headers)

    # built beforehand, so that the load generator's CPU goes to sending, not to JSON
    prebuilt = [build(index) for index in range(64)]
    return lambda index: prebuilt[index % len(prebuilt)]


async def measure(
    url: str, token: str, args: argparse.Namespace, meter: CpuMeter
) -> dict[str, object]:
    make = bulk_request(url, token, args.batch)
    await closed_loop(url, make, connections=2, duration=2)  # warm up connections and caches
    recorders = record(meter.roots, args.profile, args.seconds) if args.profile else []
    meter.start()
    result = await closed_loop(
        url, make, connections=args.connections, duration=args.seconds, keep_bodies=True
    )
    cpu = meter.stop()
    for recorder in recorders:
        recorder.wait()
    accepted = refused = 0
    for body in result.bodies:
        for item in orjson.loads(body)["runs"]:
            if "requestId" in item:
                accepted += 1
            else:
                refused += 1
    per_second = accepted / result.seconds
    figures: dict[str, object] = {
        "batch": args.batch,
        "connections": args.connections,
        "requests": result.summary(),
        "runs_accepted": accepted,
        "runs_refused": refused,
        "runs_accepted_per_second": round(per_second, 1),
        "cpu_us_per_run": {
            name: round(seconds / max(1, accepted) * 1e6, 1) for name, seconds in cpu.items()
        },
    }
    print(f"bulk of {args.batch}, closed loop x{args.connections}: {result.summary()}")
    print(f"  runs accepted: {accepted} ({per_second:,.0f}/s), refused items: {refused}")
    print(f"  CPU µs per accepted run: {figures['cpu_us_per_run']}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the run")
    parser.add_argument("--connections", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--batch", type=int, default=100, help="runs per bulk request")
    parser.add_argument(
        "--profile", type=Path, help="record py-spy profiles of each process into this folder"
    )
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
            "NEXUS__SCHEDULER__MAX_QUEUE_DEPTH": "100000000",
        },
    )
    with local_stack(options) as stack:
        pids = stack.pids()
        meter = CpuMeter({k: pids[k] for k in ("scheduler-0", "postgres", "redis")})
        figures = asyncio.run(measure(stack.schedulers[0], stack.token, args, meter))
    print(json.dumps({"benchmark": "bulk_submit", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
