"""Dispatch throughput: queued runs turned into Kubernetes Jobs by scheduler processes.

    .venv/bin/python benchmarks/dispatch.py unthrottled [--runs 20000]
    .venv/bin/python benchmarks/dispatch.py limited [--seconds 30] [--limit 100]

Before a scheduler starts, its queue is filled directly (checkpoints written through the
checkpoint store, queue entries through the queue module — exactly what submission
writes), so the measured window contains dispatch alone:

* ``unthrottled`` — one scheduler, a local cluster with no API limit and pods off (the
  emulator's kubelet would otherwise compete for the CPU): Jobs/s from the RUNNING
  checkpoints, measured between 10 % and 90 % of the backlog, and CPU per Job;
* ``limited`` — the local cluster's API server accepts 100 mutating requests/s (429 with
  Retry-After beyond), two scheduler processes configured for the same 100/s share the
  shard's throttle through Redis: the achieved creation rate as a share of the limit, and
  the share of create calls answered 429 (from the schedulers' own counters).

Prints human lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from stack import Stack, StackOptions, local_stack

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import NewRun, Stage
from nexus.core.templates import apply, parse_template, parse_workgroup
from nexus_dev.catalog import example_template, example_workgroup


async def fill(stack: Stack, pods: list[str], runs_per_pod: int) -> None:
    """Write BUFFERED checkpoints and queue entries as the submitter would."""
    env = stack.environment()
    store = await CheckpointStore.open(PostgresSettings(dsn=env["NEXUS__POSTGRES__DSN"]))
    queues = QueueBackend.connect(RedisSettings(url=env["NEXUS__REDIS__URL"]))
    workgroups = {"default": parse_workgroup(example_workgroup("default", "shard-0"))}
    configuration = apply(parse_template(example_template("echo")), {}, workgroups)
    try:
        for pod in pods:
            queue = queues.queue(pod)
            for start in range(0, runs_per_pod, 1000):
                runs = [
                    NewRun(
                        algorithm="echo",
                        id=uuid.uuid4(),
                        stage=Stage.BUFFERED,
                        caller="benchmark",
                        received_by_host=pod,
                        applied_configuration=configuration,
                        payload_valid_for=timedelta(hours=1),
                        payload_inline=b'{"x": 1}',
                    )
                    for _ in range(min(1000, runs_per_pod - start))
                ]
                await asyncio.gather(*(store.insert(r) for r in runs))
                now = time.time() * 1000
                await queue.push([QueuedRun("shard-0", r.key, now) for r in runs])
    finally:
        await store.close()
        await queues.close()


async def running_count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM runs WHERE lifecycle_stage = 'RUNNING'")
        )
    finally:
        await connection.close()


def creates(url: str) -> dict[str, float]:
    """The scheduler's ``nexus_job_creates_total`` by outcome."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("nexus_job_creates_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            found[outcome] = found.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def unthrottled(args: argparse.Namespace) -> dict[str, object]:
    pod = "bench-scheduler"
    options = StackOptions(
        tls=False, mode="off", maintainer=False, create_rate=100_000, events=False,
        log_format="json", pod_names=(pod,), defer_schedulers=True,
        environment={"NEXUS__LOG__LEVEL": "WARNING"},
    )  # fmt: skip
    with local_stack(options) as stack:
        await fill(stack, [pod], args.runs)
        dsn = stack.environment()["NEXUS__POSTGRES__DSN"]
        print(f"queued {args.runs} runs; starting the scheduler")
        stack.nexus.start_schedulers()
        pids = stack.pids()
        meter = CpuMeter({k: pids[k] for k in ("scheduler-0", "postgres", "redis", "devcluster")})
        meter.start()
        marks: dict[int, float] = {}
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = await running_count(dsn)
            now = time.perf_counter()
            for share in (10, 90):
                if share not in marks and done >= args.runs * share / 100:
                    marks[share] = now
                    if share == 90:
                        cpu = meter.stop()
            if 90 in marks:
                break
            await asyncio.sleep(0.05)
        rate = args.runs * 0.8 / (marks[90] - marks[10])
        jobs = args.runs * 0.9
        per_job = {k: round(v / jobs * 1e6, 1) for k, v in cpu.items()}
        print(
            f"unthrottled: {rate:.0f} Jobs/s (10 %→90 % of {args.runs}); CPU µs per Job {per_job}"
        )
        return {"jobs_per_second": round(rate, 1), "runs": args.runs, "cpu_us_per_job": per_job}


async def limited(args: argparse.Namespace) -> dict[str, object]:
    pods = ["bench-scheduler-a", "bench-scheduler-b"]
    backlog = int(args.limit * args.seconds * 1.5 / len(pods)) + 500
    options = StackOptions(
        tls=False, mode="off", maintainer=False, schedulers=2, create_rate=args.limit,
        shard_rate=args.limit, events=False, log_format="json", pod_names=tuple(pods),
        defer_schedulers=True, environment={"NEXUS__LOG__LEVEL": "WARNING"},
    )  # fmt: skip
    with local_stack(options) as stack:
        await fill(stack, pods, backlog)
        dsn = stack.environment()["NEXUS__POSTGRES__DSN"]
        print(f"queued {backlog} runs on each of 2 schedulers; starting them")
        stack.nexus.start_schedulers()
        await asyncio.sleep(3)  # past start-up and the initial burst
        before, t0 = await running_count(dsn), time.perf_counter()
        calls_before = [creates(url) for url in stack.schedulers]
        await asyncio.sleep(args.seconds)
        after, t1 = await running_count(dsn), time.perf_counter()
        calls_after = [creates(url) for url in stack.schedulers]
    rate = (after - before) / (t1 - t0)
    delta = {
        k: sum(a.get(k, 0) - b.get(k, 0) for a, b in zip(calls_after, calls_before, strict=True))
        for k in {"created", "exists", "throttled", "rejected", "failed"}
    }
    total = sum(delta.values())
    throttled_share = delta["throttled"] / total if total else 0.0
    print(
        f"limited to {args.limit}/s, 2 schedulers: {rate:.1f} Jobs/s = {rate / args.limit:.1%} "
        f"of the limit; {delta['throttled']:.0f} of {total:.0f} create calls answered 429 "
        f"({throttled_share:.2%})"
    )
    return {
        "limit": args.limit,
        "jobs_per_second": round(rate, 2),
        "share_of_limit": round(rate / args.limit, 4),
        "create_calls": delta,
        "share_429": round(throttled_share, 5),
        "seconds": args.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=("unthrottled", "limited"))
    parser.add_argument("--runs", type=int, default=20_000, help="backlog (unthrottled)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window (limited)")
    parser.add_argument("--limit", type=float, default=100.0, help="API server limit (limited)")
    args = parser.parse_args()
    run = unthrottled if args.scenario == "unthrottled" else limited
    figures = asyncio.run(run(args))
    print(json.dumps({"benchmark": f"dispatch-{args.scenario}", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
