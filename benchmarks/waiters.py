"""Many requests waiting (?wait) on one scheduler pod: CPU while idle, and how fast an
announcement of a finished run reaches its waiter.

    .venv/bin/python benchmarks/waiters.py [--waiters 10000] [--batch 50] [--interval 0.05]

Starts the local system (real PostgreSQL, Redis, SeaweedFS, one local cluster with pods
off, one scheduler with dispatch throttled, so runs stay queued), submits ``--waiters``
runs by bulk submit, and opens one connection per run, each asking
``GET …/results/echo/requests/{id}?wait=60`` and closed after its answer (with
``--keep-alive`` kept open, as a pooled client such as the SDK's keeps it). Once the
scheduler reports them all waiting (``nexus_waiting_requests``), it measures:

1. **idle** — the scheduler's CPU over ``--idle`` seconds with every request waiting and
   nothing finishing (no per-waiter polling: this should be about what an idle pod costs);
2. **announcement to answer** — runs are finished ``--batch`` at a time by an ``UPDATE``
   in PostgreSQL every ``--interval`` seconds (the trigger announces each run in the
   commit; the moment the commit is acknowledged here is taken as the announcement), and
   each waiter's answer is timed from its run's commit: p50, p99, max; every answer must
   be ``COMPLETED``. CPU per answered waiter of the scheduler and PostgreSQL, and of
   this client (it shares the machine's cores: under uvloop it takes about half what it
   took with asyncio's own loop, and it is reported so that a client short of CPU is
   seen, not mistaken for a slow server);
3. **announcements nobody here waits for** — ``--unwaited`` more runs (submitted at the
   start, never waited for) are finished at the same pace: the scheduler's CPU per
   announcement it hears and has no waiter for. Every pod hears every run that finishes
   anywhere, so this is what each pod pays per finished run of the whole system.

Prints human lines, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from loadgen import _Connection, request_bytes
from profiles import record
from stack import StackOptions, local_stack


async def submit(url: str, token: str, count: int) -> list[str]:
    connection = await _Connection.open(url)
    ids: list[str] = []
    try:
        headers = {"Authorization": f"Bearer {token}"}
        for start in range(0, count, 1000):
            indexes = range(start, min(count, start + 1000))
            body = orjson.dumps({"runs": [{"algorithmParameters": {"i": i}} for i in indexes]})
            request = request_bytes("POST", f"{url}/algorithm/v1.2/runs/echo", body, headers)
            status, answer = await connection.exchange(request)
            assert status == 200, answer[:500]
            ids.extend(item["requestId"] for item in orjson.loads(answer)["runs"])
    finally:
        connection.close()
    return ids


async def waiting_requests(url: str) -> float:
    connection = await _Connection.open(url)
    try:
        _, body = await connection.exchange(request_bytes("GET", f"{url}/metrics"))
    finally:
        connection.close()
    for line in body.decode().splitlines():
        if line.startswith("nexus_waiting_requests "):
            return float(line.split()[1])
    return 0.0


async def measure(
    url: str, token: str, dsn: str, args: argparse.Namespace, meter: CpuMeter
) -> dict[str, object]:
    ids = await submit(url, token, args.waiters)
    unwaited = await submit(url, token, args.unwaited)
    print(f"{len(ids)} runs submitted to be waited for, {len(unwaited)} not")
    answers: dict[str, tuple[float, bytes]] = {}
    headers = {"Authorization": f"Bearer {token}"}
    kept: list[asyncio.StreamWriter] = []  # --keep-alive: closed once everything is measured

    async def wait(request_id: str) -> None:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            path = f"{url}/algorithm/v1.2/results/echo/requests/{request_id}?wait=60"
            writer.write(request_bytes("GET", path, b"", headers))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            answers[request_id] = (time.monotonic(), head[9:12] + b" " + body)
        finally:
            if args.keep_alive:
                kept.append(writer)
            else:
                writer.close()

    tasks = []
    for index, request_id in enumerate(ids):
        tasks.append(asyncio.create_task(wait(request_id)))
        if index % 500 == 499:
            await asyncio.sleep(0.05)  # connect in waves: the listen backlog is finite
    deadline = time.monotonic() + 60
    while await waiting_requests(url) < len(ids):
        assert time.monotonic() < deadline, "not every request was waiting within 60 s"
        await asyncio.sleep(0.2)
    print(f"{len(ids)} requests waiting")

    meter.start()
    await asyncio.sleep(args.idle)
    idle = meter.stop()
    idle_share = {k: round(v / args.idle * 100, 2) for k, v in idle.items()}
    print(f"idle with {len(ids)} waiting, CPU % of one core over {args.idle:g} s: {idle_share}")

    committed: dict[str, float] = {}
    connection = await asyncpg.connect(dsn)

    async def finish(runs: list[str]) -> None:
        for start in range(0, len(runs), args.batch):
            batch = runs[start : start + args.batch]
            await connection.execute(
                "UPDATE runs SET lifecycle_stage = 'COMPLETED', result_inline = '{}'::bytea"
                " WHERE algorithm = 'echo' AND id = ANY($1::uuid[])",
                batch,
            )
            committed.update(dict.fromkeys(batch, time.monotonic()))
            await asyncio.sleep(args.interval)

    seconds = len(ids) / args.batch * args.interval + 2
    recorders = record(meter.roots, args.profile, seconds) if args.profile else []
    meter.start()
    client_started = time.process_time()  # this process only: the servers are children
    try:
        await finish(ids)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        busy = meter.stop()
        busy["client"] = time.process_time() - client_started
        for recorder in recorders:
            recorder.wait()
        await asyncio.sleep(1)  # what answering left behind (closing connections) settles
        meter.start()
        await finish(unwaited)
        await asyncio.sleep(1)  # the last announcements are heard
        bystanding = meter.stop()
    finally:
        await connection.close()
        for writer in kept:
            writer.close()
    completed = sum(
        1
        for _, answer in answers.values()
        if answer.startswith(b"200") and b'"COMPLETED"' in answer
    )
    lags = sorted(answers[rid][0] - committed[rid] for rid in ids)

    def pct(p: float) -> float:
        return round(lags[min(len(lags) - 1, int(p / 100 * len(lags)))] * 1000, 1)

    figures: dict[str, object] = {
        "waiters": len(ids),
        "idle_seconds": args.idle,
        "idle_cpu_percent_of_a_core": idle_share,
        "answers_completed": completed,
        "announcement_to_answer_ms": {"p50": pct(50), "p99": pct(99), "max": pct(100)},
        "finish_batch": args.batch,
        "finish_interval_s": args.interval,
        "keep_alive": args.keep_alive,
        "cpu_us_per_answered_waiter": {
            k: round(v / max(1, len(answers)) * 1e6, 1) for k, v in busy.items()
        },
        "unwaited": len(unwaited),
        "cpu_us_per_unwaited_announcement": {
            k: round(v / max(1, len(unwaited)) * 1e6, 1) for k, v in bystanding.items()
        },
    }
    print(f"answered {len(answers)}, COMPLETED {completed}")
    print(f"announcement to answer: {figures['announcement_to_answer_ms']}")
    print(f"CPU µs per answered waiter: {figures['cpu_us_per_answered_waiter']}")
    print(
        f"CPU µs per announcement without a waiter: {figures['cpu_us_per_unwaited_announcement']}"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--waiters", type=int, default=10_000, help="concurrent waiters")
    parser.add_argument(
        "--unwaited", type=int, default=10_000, help="runs finished with no waiter (phase 3)"
    )
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="keep each connection open after its answer, as a pooled client (the SDK's)"
        " does, instead of closing it; closed once everything is measured",
    )
    parser.add_argument("--idle", type=float, default=10.0, help="seconds measured idle")
    parser.add_argument("--batch", type=int, default=50, help="runs finished per commit")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between commits")
    parser.add_argument(
        "--profile", type=Path, help="record py-spy profiles of the answering into this folder"
    )
    args = parser.parse_args()
    options = StackOptions(
        tls=False,
        mode="off",
        maintainer=False,
        create_rate=0.01,
        events=False,
        log_format="json",
        environment={"NEXUS__LOG__LEVEL": "WARNING", "NEXUS__HTTP__BACKLOG": "16384"},
    )
    with local_stack(options) as stack:
        pids = stack.pids()
        meter = CpuMeter({k: pids[k] for k in ("scheduler-0", "postgres")})
        dsn = stack.environment()["NEXUS__POSTGRES__DSN"]
        figures = uvloop.run(measure(stack.schedulers[0], stack.token, dsn, args, meter))
    print(json.dumps({"benchmark": "waiters", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
