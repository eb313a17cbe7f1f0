"""Checkpoint inserts per second: group commit against one insert per round trip.

    .venv/bin/python benchmarks/checkpoints.py [--seconds 10] [--callers 256]

A throwaway PostgreSQL (as the tests use) gets the same rows, from the same number of
concurrent callers, two ways:

* **group commit** — every caller awaits ``CheckpointStore.insert``; concurrent inserts go
  out as one ``INSERT … SELECT FROM unnest(…)`` per batch (up to ``--batch`` rows);
* **one per round trip** — every caller awaits its own single-row ``INSERT`` on a pool of
  the same size (8 connections), which is what a handler doing its own insert costs.

Each caller inserts as fast as its inserts are acknowledged (read-your-writes: an await
returns only after the row is committed). Prints rows/s for both and the mean batch size,
then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
from prometheus_client import REGISTRY

from nexus.core.checkpoints import CheckpointStore, _insert_row
from nexus.core.config import PostgresSettings
from nexus.core.migrations import apply_migrations
from nexus.core.runs import NewRun, Stage
from nexus.core.statements import INSERT
from nexus_dev.servers.services import LocalPostgres

CONFIGURATION = {
    "image": "algorithms/echo", "registry": "example.io", "versionTag": "1.0",
    "cpuLimit": "1", "memoryLimit": "1Gi", "workgroup": "default", "shard": "shard-0",
    "deadlineSeconds": 600, "maximumRetries": 0,
}  # fmt: skip


def new_run() -> NewRun:
    return NewRun(
        algorithm="echo",
        id=uuid.uuid4(),
        stage=Stage.BUFFERED,
        caller="benchmark",
        received_by_host="benchmark",
        applied_configuration=CONFIGURATION,
        payload_valid_for=timedelta(hours=24),
        payload_inline=b'{"x": 1}',
    )


async def for_seconds(seconds: float, callers: int, insert: object) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await insert(new_run())  # type: ignore[operator]
            done += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return done


async def measure(dsn: str, args: argparse.Namespace) -> dict[str, object]:
    await apply_migrations(dsn)
    settings = PostgresSettings(dsn=dsn, pool_max_size=8, batch_max_size=args.batch)
    store = await CheckpointStore.open(settings)
    try:
        await for_seconds(1, args.callers, store.insert)  # warm up
        count = REGISTRY.get_sample_value
        batches0 = count("nexus_group_commit_batch_size_count", {"writer": "checkpoint-insert"})
        rows0 = count("nexus_group_commit_batch_size_sum", {"writer": "checkpoint-insert"})
        started = time.perf_counter()
        grouped = await for_seconds(args.seconds, args.callers, store.insert)
        grouped_rate = grouped / (time.perf_counter() - started)
        batches = count("nexus_group_commit_batch_size_count", {"writer": "checkpoint-insert"})
        rows = count("nexus_group_commit_batch_size_sum", {"writer": "checkpoint-insert"})
        mean_batch = (rows - rows0) / max(1, batches - batches0)  # type: ignore[operator]
    finally:
        await store.close()

    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8, init=_jsonb)
    try:

        async def single(run: NewRun) -> None:
            await pool.execute(INSERT, *([value] for value in _insert_row(run)))

        await for_seconds(1, args.callers, single)
        started = time.perf_counter()
        singles = await for_seconds(args.seconds, args.callers, single)
        single_rate = singles / (time.perf_counter() - started)
    finally:
        await pool.close()
    print(f"group commit:        {grouped_rate:8.0f} rows/s", end=" ")
    print(f"(mean batch {mean_batch:.0f} rows, max {args.batch})")
    print(f"one per round trip:  {single_rate:8.0f} rows/s")
    print(f"{args.callers} concurrent callers, 8 connections, {args.seconds:.0f} s each")
    return {
        "group_commit_rows_per_second": round(grouped_rate),
        "mean_batch_rows": round(mean_batch, 1),
        "max_batch_rows": args.batch,
        "one_per_round_trip_rows_per_second": round(single_rate),
        "callers": args.callers,
        "connections": 8,
    }


async def _jsonb(conn: asyncpg.Connection) -> None:
    import orjson

    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        format="text",
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=256)
    parser.add_argument("--batch", type=int, default=500, help="largest group-commit batch")
    args = parser.parse_args()
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"nexus-bench-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o755)
    server = LocalPostgres(directory / "postgres")
    try:
        info = server.start()
        figures = asyncio.run(measure(info.dsn, args))
    finally:
        server.stop()
        server.close()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({"benchmark": "checkpoint-inserts", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
