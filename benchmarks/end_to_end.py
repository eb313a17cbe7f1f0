"""End to end: submit → Job → simulated pod → completion → result readable, sustained.

    .venv/bin/python benchmarks/end_to_end.py [--rate 2000] [--seconds 60] [--schedulers 1]
        [--runs N [--connections 32]] [--setting NEXUS__SECTION__KEY=VALUE ...] [--bulk N]
        [--read listing|each] [--profile DIR] [--statements N]

The local system runs as separate processes: PostgreSQL, Redis, SeaweedFS, one local
cluster whose simulated pods play the whole algorithm contract (read their input from the
Job, or GET it from the scheduler's signed link when it is too large to travel there, send
a small result inline or PUT it to S3 with the presigned URL, POST the completion to the
receiver with their run token), the scheduler(s), the receiver and the maintainer.

A load generator submits ``echo`` runs, one per request or, with ``--bulk N``, N per
request through bulk submit:

* at ``--rate`` per second for ``--seconds`` (open loop, so a slow system cannot slow the
  offered load), each run tagged with the 100 ms slot it was sent in;
* or, with ``--runs N``, flat out: N runs submitted as fast as ``--connections`` clients
  get their answers (each sends its next request when its last is answered; a system
  cannot be offered more than it accepts), tagged in blocks of 100 — the way the peers'
  clients send their tasks flat out in ``peers.py``.

Results are read as a client waiting for its batches would: ``WAITERS`` connections each
take the oldest tag whose runs are all submitted, hold ``GET …/tags/{tag}/summary?wait=30``
until the scheduler answers that every run of the tag is finished (no polling), then read
the tag's listing and check every run is COMPLETED with its result (the run's
parameters): with ``--read listing`` (the default) from the listing itself
(``?include=result``: inline results come with their runs, 100 a page), falling back to
the result URL for a result in S3; with ``--read each`` from each run's result URL, one GET
per run. Reported: offered and completed runs/s (completed from the first submission to
the last run seen finished), the completion rate over the steady part of the window, the
results read, the latency from submission to COMPLETED (p50/p90/p99, from the receiver's
histogram), CPU microseconds per run of every process, the load generator's own
included, and the round trips and wake-ups per run (:mod:`roundtrips`: Redis commands and
scripts, PostgreSQL transactions, each Nexus process' group-committed batches by writer
and its context switches), steadier from one invocation to the next than CPU time.
Prints human lines, then one JSON line. ``--profile DIR`` samples every Python process of
the system with py-spy during the submission window (see ``profiles.py``, which
summarises them). ``--statements N`` loads pg_stat_statements into the local PostgreSQL
and prints the N statements it spent most time executing during the submissions and the
drain, with their calls and execution time per run (all of them counted in a total; rows
are those a statement answered): which round trips a run costs PostgreSQL, and how much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from loadgen import _Connection, closed_loop, open_loop, request_bytes
from profiles import record
from roundtrips import RoundTrips
from stack import Stack, StackOptions, local_stack

SLOT = 0.1  # seconds of submissions sharing one tag
PAGE = 10_000
"""Runs per listing page: more than a tag ever holds, so one page (with a Content-Length:
the whole listing without ``limit`` is streamed, chunked) answers each poll; with results
the scheduler answers fewer a page, and the poller follows each page's Link."""
READERS = 8
"""Connections reading results back, each one GET at a time."""
PLAIN = ("postgres", "redis", "seaweedfs")
"""Processes that are not Python: py-spy cannot sample them."""
NEXT_PAGE = re.compile(rb'(?im)^link:\s*<([^>]+)>;\s*rel="next"')
"""The next page of a listing (a listing with results holds at most 100 runs a page)."""
WAITERS = 16
"""Connections waiting for tags to finish (``summary?wait``), each on the oldest tag not yet
taken: tags finish roughly in the order they were made."""
WAIT = 30
"""Seconds each ``summary?wait`` may be held."""
FLAT_TAG_RUNS = 100
"""Runs per tag when submitting flat out (``--runs``)."""
INF = float("inf")
STATEMENTS = (
    "SELECT calls, rows, total_exec_time, regexp_replace(query, '\\s+', ' ', 'g')"
    " FROM pg_stat_statements ORDER BY total_exec_time DESC"
)
"""Every statement PostgreSQL ran since the reset, the costliest first (``--statements``):
calls, rows, milliseconds executing, its text on one line."""
FINISHED = {"COMPLETED", "FAILED", "SCHEDULING_TIMEOUT", "DEADLINE_EXCEEDED", "CANCELLED"}


def _own_cpu() -> float:
    """The load generator's CPU seconds (its children, the system, are measured apart)."""
    times = os.times()
    return times.user + times.system


async def finished_latency(receiver: str) -> dict[str, float]:
    """p50/p90/p99 of submission → COMPLETED written (from then on the result is readable),
    in ms, from the receiver's ``nexus_run_duration_seconds`` histogram: by the database's
    clock, interpolated within buckets as Prometheus' ``histogram_quantile`` does."""
    connection = await _Connection.open(receiver)
    try:
        _, text = await connection.exchange(request_bytes("GET", f"{receiver}/metrics"))
    finally:
        connection.close()
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if (
                sample.name == "nexus_run_duration_seconds_bucket"
                and sample.labels.get("stage") == "COMPLETED"
            ):
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    found: dict[str, float] = {}
    for p in (50, 90, 99):
        rank, low, below = total * p / 100, 0.0, 0.0
        for upper, count in buckets:
            if count >= rank and total:
                if upper == float("inf"):
                    found[f"p{p}"] = round(low * 1000, 1)
                else:
                    share = (rank - below) / max(count - below, 1e-9)
                    found[f"p{p}"] = round((low + (upper - low) * share) * 1000, 1)
                break
            low, below = upper, count
    return found


async def run(
    urls: list[str],
    receiver: str,
    token: str,
    args: argparse.Namespace,
    meter: CpuMeter,
    counts: RoundTrips,
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    started = time.time()
    made: dict[str, int] = {}  # tag -> runs submitted with it
    done_at: dict[str, float] = {}  # request id -> when the poller first saw it finished
    statuses: dict[str, int] = {}
    closed: asyncio.Queue[str | None] = asyncio.Queue()  # tags all submitted, in order
    deadline = [INF]  # when the waiters give up: set once the load has ended

    def tag_of(index: int) -> str:
        if args.runs:  # flat out: runs in blocks
            return f"e2e-{index // FLAT_TAG_RUNS}"
        return f"e2e-{int(index / args.rate / SLOT)}"

    def note(tag: str, runs: int) -> None:
        """Count ``runs`` submitted with ``tag``; the tag before it is then closed."""
        if tag not in made:
            if made:
                closed.put_nowait(next(reversed(made)))
            made[tag] = 0
        made[tag] += runs

    def make(index: int) -> bytes:
        url = urls[index % len(urls)]
        if args.bulk > 1:  # request i carries runs i*N … i*N+N-1, all of one tag
            first = index * args.bulk
            tag = tag_of(first)
            note(tag, args.bulk)
            runs = [
                {"algorithmParameters": {"index": first + j}, "tag": tag} for j in range(args.bulk)
            ]
            body = orjson.dumps({"runs": runs})
            return request_bytes("POST", f"{url}/algorithm/v1.2/runs/echo", body, headers)
        tag = tag_of(index)
        note(tag, 1)
        body = orjson.dumps({"algorithmParameters": {"index": index}, "tag": tag})
        return request_bytes("POST", f"{url}/algorithm/v1.2/run/echo", body, headers)

    to_read: asyncio.Queue[str] = asyncio.Queue()
    read = {"ok": 0, "bad": 0}

    async def read_results() -> None:
        """GET each COMPLETED run's resultUri (a signed link of the API, or of S3) and
        check it is the run's parameters, as a client reading its results would."""
        connections: dict[str, _Connection] = {}
        try:
            while True:
                url = await to_read.get()
                origin = "/".join(url.split("/", 3)[:3])
                try:
                    if origin not in connections:
                        connections[origin] = await _Connection.open(origin)
                    status, body = await connections[origin].exchange(request_bytes("GET", url))
                except (OSError, asyncio.IncompleteReadError):
                    connections.pop(origin).close()
                    status, body = 0, b""
                ok = status == 200 and "index" in orjson.loads(body or b"{}")
                read["ok" if ok else "bad"] += 1
                to_read.task_done()
        finally:
            for connection in connections.values():
                connection.close()

    async def exchange(connection: list[_Connection], url: str) -> tuple[int, bytes, bytes]:
        """One GET on the waiter's connection, made anew if the server closed it."""
        try:
            return await connection[0].exchange_head(request_bytes("GET", url, b"", headers))
        except (OSError, asyncio.IncompleteReadError):
            connection[0].close()
            connection[0] = await _Connection.open(urls[0])
            return 0, b"", b""

    async def finished(connection: list[_Connection], tag: str) -> bool:
        """Wait for the tag's batch to finish as a client would: ``summary?wait``, answered
        by the scheduler as soon as every run of the tag is finished (no polling)."""
        summary = f"{urls[0]}/algorithm/v1.2/results/echo/tags/{tag}/summary"
        while (left := deadline[0] - time.time()) > 0:
            wait = max(1, int(min(WAIT, left)))
            status, body, _ = await exchange(connection, f"{summary}?wait={wait}")
            if status != 200:
                await asyncio.sleep(0.5)
                continue
            answer = orjson.loads(body)
            if answer["finished"] and (answer["total"] >= made[tag] or deadline[0] < INF):
                return True  # (once the load is over, every submission has been answered)
            if answer["finished"]:  # some of its submissions are still being answered
                await asyncio.sleep(0.05)
        return False

    async def collect(connection: list[_Connection], tag: str) -> None:
        """Read a finished tag's runs (with their inline results) and check each."""
        listing = f"{urls[0]}/algorithm/v1.2/results/echo/tags/{tag}?limit={PAGE}"
        if args.read == "listing":
            listing += "&include=result"
        runs: list[Any] = []
        while listing:
            status, body, head = await exchange(connection, listing)
            if status != 200:
                await asyncio.sleep(0.5)
                continue
            runs.extend(orjson.loads(body))
            following = NEXT_PAGE.search(head)
            listing = following.group(1).decode() if following else ""
        now = time.time()
        for answer in runs:
            if answer["status"] not in FINISHED or answer["requestId"] in done_at:
                continue
            done_at[answer["requestId"]] = now
            label = answer["status"]
            if label == "COMPLETED" and not answer["resultUri"]:
                label = "COMPLETED without resultUri"
            elif label == "COMPLETED" and "result" in answer:
                ok = isinstance(answer["result"], dict) and "index" in answer["result"]
                read["ok" if ok else "bad"] += 1
            elif label == "COMPLETED":
                to_read.put_nowait(answer["resultUri"])
            statuses[label] = statuses.get(label, 0) + 1

    async def wait_tags() -> None:
        """Take the oldest closed tag, wait for it to finish, read it; until none is left."""
        connection = [await _Connection.open(urls[0])]
        try:
            while (tag := await closed.get()) is not None:
                if await finished(connection, tag):
                    await collect(connection, tag)
            closed.put_nowait(None)  # for the other waiters
        finally:
            connection[0].close()

    await counts.start()
    meter.start()
    own_before = _own_cpu()
    readers = [asyncio.create_task(read_results()) for _ in range(READERS)]
    recorders = []
    if args.profile is not None:
        python = {k: v for k, v in meter.roots.items() if k not in PLAIN}
        recorders = record(python, args.profile, args.seconds)
    waiters = [asyncio.create_task(wait_tags()) for _ in range(WAITERS)]
    if args.runs:
        requests = -(-args.runs // max(1, args.bulk))
        load = await closed_loop(
            urls, make, connections=args.connections, duration=args.drain, total=requests
        )
    else:
        requests = args.rate / max(1, args.bulk)
        load = await open_loop(
            urls, make, rate=requests, duration=args.seconds, max_connections=512
        )
    submitted_for = time.time() - started
    if made:
        closed.put_nowait(next(reversed(made)))
    closed.put_nowait(None)
    deadline[0] = time.time() + args.drain
    await asyncio.gather(*waiters)
    with contextlib.suppress(TimeoutError):  # what is left unread is reported as such
        await asyncio.wait_for(to_read.join(), timeout=60)
    read["unread"] = to_read.qsize()
    for reader in readers:
        reader.cancel()
    cpu = {**meter.stop(), "loadgen": _own_cpu() - own_before}
    counted = await counts.stop(statuses.get("COMPLETED", 0))
    latency = await finished_latency(receiver)
    for recorder in recorders:
        recorder.wait()
    completed = statuses.get("COMPLETED", 0)
    finished_by = max(done_at.values(), default=started) - started
    # the steady part starts once the pipeline is full and ends with the load (flat out:
    # a second before the last run finished, as the last tags finish together)
    warm = min(10.0, args.seconds / 3) if not args.runs else min(2.0, finished_by / 4)
    end = args.seconds if not args.runs else max(warm + 1.0, finished_by - 1.0)
    steady = [t for t in done_at.values() if started + warm <= t <= started + end]
    steady_rate = len(steady) / max(1e-9, end - warm)
    per_run = {name: round(seconds / max(1, completed) * 1e6, 1) for name, seconds in cpu.items()}
    ours = sum(v for k, v in per_run.items() if k not in ("devcluster", "seaweedfs", "loadgen"))
    figures = {
        "offered_per_second": None if args.runs else args.rate,
        "flat_out_runs": args.runs or None,
        "completed_per_second": round(completed / max(1e-9, finished_by), 1),
        "results_read_by": args.read,
        "submit": load.summary(),
        "finished": statuses,
        "unfinished": sum(made.values()) - len(done_at),
        "completed_per_second_steady": round(steady_rate, 1),
        "all_finished_after_seconds": round(finished_by, 1),
        "submitted_for_seconds": round(submitted_for, 1),
        "results_read": read,
        "latency_ms": latency,
        "cpu_us_per_run": per_run,
        "cpu_us_per_run_nexus_postgres_redis": round(ours, 1),
        "round_trips_per_run": counted,
    }
    offered = f"flat out on {args.connections} connections" if args.runs else f"at {args.rate}/s"
    print(f"submitted for {submitted_for:.1f} s {offered}: {load.summary()}")
    print(
        f"finished: {statuses}, unfinished: {figures['unfinished']}; steady completion rate"
        f" {steady_rate:.0f}/s (from {warm:.0f} s to {end:.0f} s);"
        f" all finished after {finished_by:.1f} s: {figures['completed_per_second']}/s"
    )
    print(f"results read back through the API: {read}; submit → COMPLETED: {latency} ms")
    print(f"CPU µs per run: {per_run}; Nexus + PostgreSQL + Redis: {ours:.0f} µs")
    services = counted["services"]
    batches = {name: c["batches"] for name, c in services.items()}
    switches = {name: c["switches"] for name, c in services.items()}
    print(
        f"per run: Redis scripts {counted['redis_scripts']}, PostgreSQL transactions"
        f" {counted['postgres_transactions']}; batches {batches}; context switches {switches}"
    )
    return figures


def statement_costs(stack: Stack, runs: int, top: int) -> dict[str, Any]:
    """What PostgreSQL executed per run since the reset (``--statements``): the ``top``
    statements by time executing, and the totals of all of them."""
    listed = []
    calls_total = ms_total = 0.0
    for line in stack.services.postgres.psql(STATEMENTS).splitlines():
        calls, rows, ms, query = line.split("|", 3)
        calls_total += int(calls)
        ms_total += float(ms)
        listed.append({
            "calls_per_run": round(int(calls) / max(1, runs), 4),
            "rows_per_call": round(int(rows) / max(1, int(calls)), 1),
            "exec_us_per_run": round(float(ms) * 1000 / max(1, runs), 1),
            "query": query.strip()[:100],
        })  # fmt: skip
    figures = {
        "calls_per_run": round(calls_total / max(1, runs), 3),
        "exec_us_per_run": round(ms_total * 1000 / max(1, runs), 1),
        "top": listed[:top],
    }
    print(
        f"PostgreSQL per run: {figures['calls_per_run']} statements,"
        f" {figures['exec_us_per_run']} µs executing them; the costliest:"
    )
    for one in figures["top"]:
        print(
            f"  {one['exec_us_per_run']:>7} µs {one['calls_per_run']:>7} calls"
            f" {one['rows_per_call']:>6} rows/call  {one['query']}"
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="runs submitted per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long runs are submitted")
    parser.add_argument(
        "--runs",
        type=int,
        default=0,
        metavar="N",
        help="flat out instead: N runs submitted as fast as --connections clients get answers",
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="clients submitting flat out (--runs)"
    )
    parser.add_argument("--drain", type=float, default=60.0, help="longest wait for the last runs")
    parser.add_argument("--schedulers", type=int, default=1)
    parser.add_argument("--no-maintainer", dest="maintainer", action="store_false")
    parser.add_argument("--duration", default="fixed:0.01", help="simulated algorithm run time")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NEXUS__SECTION__KEY=VALUE",
        help="a setting for every Nexus process (repeatable), e.g. to compare two values",
    )
    parser.add_argument(
        "--bulk",
        type=int,
        default=1,
        metavar="N",
        help="submit N runs per request (bulk submit, at most 1,000) instead of one",
    )
    parser.add_argument(
        "--read",
        choices=("listing", "each"),
        default="listing",
        help="read inline results with the tag listings (default), or each from its URL",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy every Python process into DIR"
    )
    parser.add_argument(
        "--statements",
        type=int,
        default=0,
        metavar="N",
        help="print the N statements PostgreSQL spent most time executing, per run",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    if any(not key.startswith("NEXUS__") for key in settings):
        parser.error("--setting takes NEXUS__SECTION__KEY=VALUE")
    options = StackOptions(
        tls=False, mode="simulated", maintainer=args.maintainer, schedulers=args.schedulers,
        duration=args.duration, create_rate=100_000, log_format="json",
        environment={"NEXUS__LOG__LEVEL": "WARNING", **settings},
    )  # fmt: skip
    preload = {"shared_preload_libraries": "pg_stat_statements"} if args.statements else None
    with local_stack(options, postgres_settings=preload) as stack:
        pids = stack.pids()
        meter = CpuMeter(pids)
        for url in stack.schedulers:  # warm: connections, catalog, first Jobs
            with urllib.request.urlopen(f"{url}/health/ready", timeout=5):
                pass
        environment = stack.environment()
        counts = RoundTrips(
            environment["NEXUS__REDIS__URL"],
            environment["NEXUS__POSTGRES__DSN"],
            {c.name: (c.url, pids[c.name]) for c in stack.nexus.components if c.name in pids},
        )
        if args.statements:
            stack.services.postgres.psql(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;"
                " SELECT pg_stat_statements_reset()"
            )
        figures = asyncio.run(
            run(stack.schedulers, stack.receiver, stack.token, args, meter, counts)
        )
        if args.statements:
            runs = sum(figures["finished"].values())
            figures["statements"] = statement_costs(stack, runs, args.statements)
    print(json.dumps({"benchmark": "end-to-end", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
