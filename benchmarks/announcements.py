"""What announcing finished runs costs PostgreSQL: terminal transitions with the trigger
that NOTIFYs each finished run, against the same transitions with it disabled.

    .venv/bin/python benchmarks/announcements.py [--runs 20000] [--batch 100] [--rounds 4]

A throwaway PostgreSQL (as the tests use) gets ``--runs`` queued runs per round; they are
then moved to COMPLETED by the store's own group-commit statement (``TRANSITION``),
``--batch`` runs per statement, with a listener connected (as a scheduler pod is), once
with the announcement trigger enabled and once disabled, alternating A/B/A/B over
``--rounds`` rounds. Measured: PostgreSQL CPU (every backend) and wall time per finished
run, and the notifications the listener received. Prints one JSON line.
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
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import new_run
from cpu import CpuMeter

from nexus.core.checkpoints import _insert_row, _transition_columns
from nexus.core.migrations import apply_migrations
from nexus.core.runs import Stage, Transition
from nexus.core.statements import INSERT, TRANSITION
from nexus_dev.servers.services import LocalPostgres


async def one_round(
    dsn: str, args: argparse.Namespace, announce: bool, meter: CpuMeter
) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    heard = 0

    def count(*_: object) -> None:
        nonlocal heard
        heard += 1

    await listener.add_listener("nexus_finished", count)
    try:
        await conn.set_type_codec(
            "jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text"
        )
        runs = [new_run() for _ in range(args.runs)]
        columns: list[list[object]] = [[] for _ in range(15)]
        for run in runs:
            for column, value in zip(columns, _insert_row(run), strict=True):
                column.append(value)
        await conn.fetch(INSERT, *columns, len(runs))  # $16: the batch's size
        state = "ENABLE" if announce else "DISABLE"
        await conn.execute(f"ALTER TABLE runs {state} TRIGGER runs_announce_finished")
        meter.start()
        started = time.perf_counter()
        for start in range(0, len(runs), args.batch):
            batch = sorted(runs[start : start + args.batch], key=lambda r: r.id)
            changes = [
                Transition(r.algorithm, r.id, Stage.COMPLETED, result_uri="s3://b/r") for r in batch
            ]
            await conn.fetch(TRANSITION, *_transition_columns(changes))
        wall = time.perf_counter() - started
        cpu = meter.stop()["postgres"]
        await asyncio.sleep(0.5)  # the last notifications
        return {
            "postgres_cpu_us_per_run": round(cpu / len(runs) * 1e6, 1),
            "wall_us_per_run": round(wall / len(runs) * 1e6, 1),
            "notifications": heard,
        }
    finally:
        await listener.close()
        await conn.close()


async def measure(dsn: str, pid: int, args: argparse.Namespace) -> dict[str, object]:
    await apply_migrations(dsn)
    meter = CpuMeter({"postgres": pid})
    rounds: dict[str, list[dict[str, float]]] = {"announced": [], "silent": []}
    for index in range(args.rounds * 2):
        announce = index % 2 == 0
        outcome = await one_round(dsn, args, announce, meter)
        rounds["announced" if announce else "silent"].append(outcome)
        print(("announced" if announce else "silent   "), outcome)
    summary = {
        name: {
            key: round(sum(r[key] for r in results) / len(results), 1)
            for key in ("postgres_cpu_us_per_run", "wall_us_per_run", "notifications")
        }
        for name, results in rounds.items()
    }
    return {"runs": args.runs, "batch": args.batch, "mean": summary, "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20_000, help="runs finished per round")
    parser.add_argument("--batch", type=int, default=100, help="runs per UPDATE")
    parser.add_argument("--rounds", type=int, default=4, help="A/B pairs")
    args = parser.parse_args()
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"nexus-bench-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o755)
    server = LocalPostgres(directory / "postgres")
    try:
        info = server.start()
        assert server.pid is not None
        figures = asyncio.run(measure(info.dsn, server.pid, args))
    finally:
        server.stop()
        server.close()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({"benchmark": "announcements", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
