"""Fair share across callers: a flood of one caller against another's trickle.

    .venv/bin/python benchmarks/fairness.py [--flood 50000] [--rate 2000] [--rounds 2]

For fair share on and off in turn (``NEXUS__TEAMS__FAIR_SHARE``; ``--rounds`` pairs), a
local system with two scheduler processes and a shard with pods off (Jobs are created,
nothing runs): caller A's ``--flood`` runs are queued on both pods before they start
(checkpoints and queue entries written as submission writes them, with the share submission
gives them), then, while the schedulers dispatch at up to ``--rate`` Jobs/s, caller B queues
one run a second. Reported per mode:

* B's queue wait (accepted → Job created, from its checkpoints), p50, p99 and max;
* the dispatch throughput of A's flood (Jobs/s between 10 % and 90 % of it) — its ratio
  on/off is the throughput cost of fair share.

Prints human lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from stack import Stack, StackOptions, local_stack

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import NewRun, Stage
from nexus.core.templates import AppliedConfiguration, apply, parse_template, parse_workgroup
from nexus.scheduler.authentication import Principal
from nexus.scheduler.fairshare import FairShare
from nexus.scheduler.teamsettings import TeamSettings
from nexus_dev.catalog import example_template, example_workgroup

PODS = ("bench-scheduler-a", "bench-scheduler-b")


class Writer:
    """Writes runs as the submitter would: checkpoint, then a queue push with its share."""

    def __init__(self, stack: Stack, fair: bool) -> None:
        self.env = stack.environment()
        self.fair = FairShare(TeamSettings(fair_share=fair))
        workgroups = {"default": parse_workgroup(example_workgroup("default", "shard-0"))}
        self.configuration: AppliedConfiguration = apply(
            parse_template(example_template("echo")), {}, workgroups
        )

    async def __aenter__(self) -> Writer:
        self.store = await CheckpointStore.open(
            PostgresSettings(dsn=self.env["NEXUS__POSTGRES__DSN"])
        )
        self.queues = QueueBackend.connect(RedisSettings(url=self.env["NEXUS__REDIS__URL"]))
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.store.close()
        await self.queues.close()

    async def write(self, caller: str, pod: str, count: int) -> None:
        runs = [
            NewRun(
                algorithm="echo",
                id=uuid.uuid4(),
                stage=Stage.BUFFERED,
                caller=caller,
                received_by_host=pod,
                applied_configuration=self.configuration,
                payload_valid_for=timedelta(hours=1),
                payload_inline=b'{"x": 1}',
            )
            for _ in range(count)
        ]
        await asyncio.gather(*(self.store.insert(r) for r in runs))
        share = self.fair.share(Principal(caller, frozenset({"*"})))
        await self.queues.queue(pod).push([QueuedRun("shard-0", r.key, 0.0, share) for r in runs])


async def counts(dsn: str) -> tuple[int, list[float]]:
    """A's runs dispatched, and B's queue waits (s) of its dispatched runs."""
    connection = await asyncpg.connect(dsn)
    try:
        done = await connection.fetchval(
            "SELECT count(*) FROM runs WHERE caller = 'a' AND lifecycle_stage = 'RUNNING'"
        )
        waits = await connection.fetch(
            "SELECT extract(epoch FROM sent_at - received_at) FROM runs"
            " WHERE caller = 'b' AND sent_at IS NOT NULL"
        )
    finally:
        await connection.close()
    return int(done), [float(w[0]) for w in waits]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def measure(args: argparse.Namespace, fair: bool) -> dict[str, object]:
    options = StackOptions(
        mode="off", maintainer=False, schedulers=2, create_rate=args.rate, events=False,
        log_format="json", pod_names=PODS, defer_schedulers=True,
        environment={
            "NEXUS__LOG__LEVEL": "WARNING", "NEXUS__TEAMS__FAIR_SHARE": str(fair).lower()
        },
    )  # fmt: skip
    with local_stack(options) as stack:
        dsn = stack.environment()["NEXUS__POSTGRES__DSN"]
        async with Writer(stack, fair) as writer:
            for start in range(0, args.flood, 1000):
                await writer.write("a", PODS[(start // 1000) % 2], min(1000, args.flood - start))
            print(f"fair share {'on' if fair else 'off'}: queued {args.flood} runs of A")
            stack.nexus.start_schedulers()
            marks: dict[int, float] = {}
            deadline = time.monotonic() + args.timeout
            submitted, next_b = 0, time.monotonic()
            while time.monotonic() < deadline and 90 not in marks:
                if time.monotonic() >= next_b:
                    await writer.write("b", PODS[submitted % 2], 1)
                    submitted += 1
                    next_b += 1.0
                done, _ = await counts(dsn)
                for share in (10, 90):
                    if share not in marks and done >= args.flood * share / 100:
                        marks[share] = time.perf_counter()
                await asyncio.sleep(0.05)
            await asyncio.sleep(2)  # B's last run dispatched
            _, waits = await counts(dsn)
    if 90 not in marks:
        raise SystemExit(f"the flood was not dispatched within {args.timeout} s")
    rate = args.flood * 0.8 / (marks[90] - marks[10])
    figures = {
        "flood_jobs_per_second": round(rate, 1),
        "b_runs": submitted,
        "b_dispatched": len(waits),
        "b_wait_p50_s": round(statistics.median(waits), 3) if waits else None,
        "b_wait_p99_s": round(percentile(waits, 0.99), 3),
        "b_wait_max_s": round(max(waits), 3) if waits else None,
    }
    print(f"fair share {'on' if fair else 'off'}: {figures}")
    return figures


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    # on and off alternate (on, off, on, off...), so that a machine shared with others
    # slows both alike
    rounds = [(await measure(args, True), await measure(args, False)) for _ in range(args.rounds)]
    costs = [
        1 - float(str(on["flood_jobs_per_second"])) / float(str(off["flood_jobs_per_second"]))
        for on, off in rounds
    ]
    cost = statistics.median(costs)
    print(f"throughput cost of fair share: {cost:.1%} (median of {len(costs)} rounds)")
    return {
        "rounds": [{"on": on, "off": off} for on, off in rounds],
        "b_wait_p99_s": {
            "on": max(float(str(on["b_wait_p99_s"])) for on, _ in rounds),
            "off": max(float(str(off["b_wait_p99_s"])) for _, off in rounds),
        },
        "throughput_cost": round(cost, 4),
        "flood": args.flood,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flood", type=int, default=50_000, help="caller A's runs")
    parser.add_argument("--rate", type=float, default=2000.0, help="Job creations/s allowed")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mode at most")
    parser.add_argument("--rounds", type=int, default=2, help="on/off pairs, alternated")
    args = parser.parse_args()
    figures = asyncio.run(main_async(args))
    print(json.dumps({"benchmark": "fairness", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
