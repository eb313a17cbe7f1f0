"""Completions per second taken by one receiver process.

    .venv/bin/python benchmarks/receiver.py [--seconds 15] [--connections 64]

The checkpoint store is filled with ``BUFFERED`` runs first (as submission writes them);
then a separate load-generator process posts one completion per run, each with its own
run token, on ``--connections`` keep-alive connections, as algorithm containers would.
Afterwards every completed run is checked in the store. Prints human lines, then one JSON
line with completions/s, latency and CPU per completion of the receiver and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from loadgen import closed_loop, request_bytes
from stack import StackOptions, local_stack

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings
from nexus.core.runs import NewRun, Stage
from nexus.core.signing import Signer


async def fill(dsn: str, count: int) -> list[uuid.UUID]:
    store = await CheckpointStore.open(PostgresSettings(dsn=dsn))
    ids = [uuid.uuid4() for _ in range(count)]
    try:
        for start in range(0, count, 2000):
            await asyncio.gather(
                *(
                    store.insert(
                        NewRun(
                            algorithm="echo",
                            id=run_id,
                            stage=Stage.BUFFERED,
                            caller="benchmark",
                            received_by_host="benchmark",
                            applied_configuration={"shard": "shard-0"},
                            payload_valid_for=timedelta(hours=1),
                            payload_inline=b"{}",
                        )
                    )
                    for run_id in ids[start : start + 2000]
                )
            )
    finally:
        await store.close()
    return ids


async def measure(
    url: str, dsn: str, signer: Signer, args: argparse.Namespace, meter: CpuMeter
) -> dict[str, object]:
    ids = await fill(dsn, args.runs)
    print(f"{len(ids)} runs waiting for their completion")
    body = orjson.dumps({"cause": None, "message": None, "sasUri": None})

    def make(index: int) -> bytes:
        run_id = str(ids[index % len(ids)])
        headers = {"Authorization": f"Bearer {signer.run_token('echo', run_id)}"}
        return request_bytes(
            "POST", f"{url}/algorithm/v1.2/complete/echo/requests/{run_id}", body, headers
        )

    meter.start()
    result = await closed_loop(url, make, connections=args.connections, duration=args.seconds)
    cpu = meter.stop()
    connection = await asyncpg.connect(dsn)
    try:
        completed = await connection.fetchval(
            "SELECT count(*) FROM runs WHERE lifecycle_stage = 'COMPLETED'"
        )
    finally:
        await connection.close()
    summary = result.summary()
    per = {name: round(seconds / max(1, result.ok) * 1e6, 1) for name, seconds in cpu.items()}
    print(f"closed loop x{args.connections}: {summary}")
    print(f"  runs COMPLETED in the store: {completed}; CPU µs per completion: {per}")
    return {"completions": summary, "completed_in_store": completed, "cpu_us_per_completion": per}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--runs", type=int, default=150_000, help="runs written before the load")
    args = parser.parse_args()
    options = StackOptions(
        tls=False, mode="off", maintainer=False, events=False, log_format="json",
        environment={"NEXUS__LOG__LEVEL": "WARNING"},
    )  # fmt: skip
    with local_stack(options) as stack:
        pids = stack.pids()
        meter = CpuMeter({k: pids[k] for k in ("receiver", "postgres")})
        signer = Signer((stack.credentials.signing_key,))
        dsn = stack.environment()["NEXUS__POSTGRES__DSN"]
        figures = asyncio.run(measure(stack.receiver, dsn, signer, args, meter))
    print(json.dumps({"benchmark": "receiver", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
