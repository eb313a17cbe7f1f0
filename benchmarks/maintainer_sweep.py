"""Benchmark of the maintainer: what a sweep costs, and how soon a dead pod's queue moves.

(a) **Sweep cost** with ``--rows`` checkpoints in the table (default 1,000,000, loaded with
    one ``INSERT … SELECT generate_series``), of which ``--candidates`` are ``BUFFERED``
    and as many ``RUNNING`` runs old enough to be looked at, the rest finished:

    - the store's keyset pages alone (``Sweeps.page``), and the plan of
      that query (it must be an index scan of ``runs_unfinished_by_age``);
    - the ``BUFFERED`` sweep as the maintainer runs it: pages, plus one Redis script per
      page asking which runs are in no queue (all are queued on a live pod here, the
      steady state of a backlog, so nothing is written);
    - the ``RUNNING`` sweep: pages, plus the shard's Job list in memory (every Job
      exists, so no shard is asked).

    Each as milliseconds per 10,000 candidate rows.

(b) **Death to adoption**: a scheduler pod holding ``--queued`` runs (half queued, half in
    flight) stops its heartbeat (as a SIGKILL would); the maintainer's adopter (default
    ``adopt_interval`` of 1 s) moves them to a live pod. Measured from the last heartbeat
    to the runs being on the live pod's queue, with ``--heartbeat-ttl`` (the scheduler's
    default is 10 s; the figure is that TTL plus the adoption delay). Also the adoption
    script's own time for that many runs.

(c) **Watch events**: microseconds of the maintainer's own work per Job/Pod/Event watch
    event of each common kind (decoding is the shard client's and not counted), for the
    2,000 runs/s times 10+ events a shard produces.

Throwaway PostgreSQL and Redis servers are started and removed. Human-readable lines
first, then one JSON line with every figure. Defaults take about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from maintainer.actions import Actions
from maintainer.adoption import Adopter
from maintainer.settings import MaintainerSection
from maintainer.sweeping import Sweeper
from nexus.core import statements as sql
from nexus.core.checkpoints import (
    PLAN_SETTINGS,
    CheckpointStore,
)
from nexus.core.config import PostgresSettings, RedisSettings
from nexus.core.migrations import apply_migrations
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import RunKey, Stage
from nexus.core.sweeps import Sweeps
from nexus_dev.servers.databases import LocalPostgres, LocalRedis

SHARD = "shard-0"
COMMAND = "python benchmarks/maintainer_sweep.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def report(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>10.1f} {unit}  {note}", flush=True)


# -- (a) sweep cost -----------------------------------------------------------------------

_LOAD = """
INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host, received_at,
                  last_modified, sent_at, applied_configuration, payload_valid_for,
                  payload_inline, api_version, shard)
SELECT 'bench', gen_random_uuid(),
       CASE WHEN g <= $2 THEN 'BUFFERED' WHEN g <= 2 * $2 THEN 'RUNNING' ELSE 'COMPLETED' END,
       'bench', 'host', now() - interval '2 hours' + g * interval '1 ms',
       now() - interval '1 hour' + (g / 500) * interval '1 ms',
       CASE WHEN g > $2 AND g <= 2 * $2 THEN now() - interval '1 hour' END,
       '{"shard": "shard-0", "deadlineSeconds": 86400}'::jsonb, interval '1 hour',
       '\\x7b7d'::bytea, 'v1.2', CASE WHEN g > $2 THEN 'shard-0' END
FROM generate_series(1, $1) AS g
"""


@dataclass
class StubWatch:
    """What the RUNNING sweep reads of a shard watch: its Jobs, all present, none of them
    succeeded."""

    jobs: dict[str, str]
    succeeded: dict[str, float] = field(default_factory=dict)
    shard: str = SHARD
    synced: bool = True
    client: Any = None

    def succeeded_at(self, name: str) -> float | None:
        return self.succeeded.get(name)

    def copies_running(self, job: str) -> bool:
        return False  # no run here was started in several copies


@dataclass
class Timing:
    figures: dict[str, float] = field(default_factory=dict)


async def sweep_cost(dsn: str, redis_url: str, rows: int, candidates: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    await conn.execute(_LOAD, rows, candidates)
    await conn.execute("VACUUM ANALYZE runs")
    load_seconds = time.perf_counter() - started
    await conn.close()
    # the sweep's own statement, planned as the store plans it: once per connection, with
    # the store's session settings (a generic plan, made without the parameters' values)
    conn = await asyncpg.connect(dsn, server_settings=PLAN_SETTINGS)
    await conn.execute(f"PREPARE sweep_page AS {sql.SWEEP_PAGE}")
    plan = await conn.fetch(
        "EXPLAIN EXECUTE sweep_page('BUFFERED', '60 s', '-infinity', '', "
        f"'{uuid.UUID(int=0)}', 1000)"
    )
    await conn.close()
    report("rows loaded", rows, "rows", f"in {load_seconds:.1f} s")
    plan_text = " / ".join(r[0].strip() for r in plan)
    print(f"page query plan: {plan_text}", flush=True)

    store = await CheckpointStore.open(PostgresSettings(dsn=dsn, pool_max_size=4))
    sweeps = Sweeps(store)
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix="bench"))
    figures: dict[str, Any] = {"rows": rows, "candidates": candidates, "plan": plan_text}
    try:
        per = 10_000 / candidates
        for _ in range(2):  # the first pass warms the cache; the second is reported
            started = time.perf_counter()
            cursor, seen = None, 0
            while True:
                page = await sweeps.page(Stage.BUFFERED, timedelta(seconds=60), cursor, 1000)
                seen += len(page)
                if len(page) < 1000:
                    break
                cursor = page[-1].cursor
            pages_ms = (time.perf_counter() - started) * 1000 * per
        assert seen == candidates, seen
        report("store pages (BUFFERED)", pages_ms, "ms / 10k candidates")
        figures["pages_ms_per_10k"] = round(pages_ms, 1)

        # every BUFFERED candidate is queued on a live pod: nothing is missing
        pod = queues.queue("live-pod")
        await pod.heartbeat(600)
        page, cursor, queued = [], None, 0
        while True:
            page = await sweeps.page(Stage.BUFFERED, timedelta(seconds=60), cursor, 5000)
            await pod.push(
                [QueuedRun(SHARD, r.key, r.received_at.timestamp() * 1000) for r in page]
            )
            queued += len(page)
            if len(page) < 5000:
                break
            cursor = page[-1].cursor
        running = await sweeps.page(Stage.RUNNING, timedelta(seconds=60), None, candidates)
        watch = StubWatch({str(r.id): "bench" for r in running})
        section = MaintainerSection(sweep_max_rows=10 * candidates, sweep_batch=1000)
        actions = Actions(store, {}, lambda: True)
        sweeper = Sweeper(
            store=store, queues=queues, payloads=None, watches={SHARD: watch},  # type: ignore[dict-item, arg-type]
            actions=actions, section=section, leading=lambda: True,
        )  # fmt: skip
        for name, stage, handle in (
            ("buffered", Stage.BUFFERED, sweeper._buffered),
            ("running", Stage.RUNNING, sweeper._running),
        ):
            started = time.perf_counter()
            await sweeper._stage(stage, 60, handle)
            ms = (time.perf_counter() - started) * 1000 * per
            report(f"{name} sweep (store + checks)", ms, "ms / 10k candidates")
            figures[f"{name}_sweep_ms_per_10k"] = round(ms, 1)
        conn = await asyncpg.connect(dsn)
        changed = await conn.fetchval("SELECT count(*) FROM runs WHERE attempts > 0")
        await conn.close()
        assert changed == 0, f"{changed} runs were requeued; all were queued"
    finally:
        await store.close()
        await queues.close()
    return figures


# -- (b) death to adoption ----------------------------------------------------------------


async def death_to_adoption(redis_url: str, queued: int, ttl: float) -> dict[str, Any]:
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix="adopt"))
    try:
        # the adoption script alone, for `queued` runs
        await queues.queue("warm-live").heartbeat(600)
        await fill(queues, "warm-dead", queued)
        await queues.queue("warm-dead").leave()  # as a stopping pod does
        started = time.perf_counter()
        moved = await queues.adopt("warm-dead", "warm-live")
        script_ms = (time.perf_counter() - started) * 1000
        assert moved == queued, moved
        report(f"adoption script, {queued} runs", script_ms, "ms")

        live, dead = queues.queue("live"), queues.queue("dead")
        stop = asyncio.Event()

        async def beat() -> None:
            while not stop.is_set():
                await live.heartbeat(ttl)
                await asyncio.sleep(ttl / 5)

        beating = asyncio.create_task(beat())
        # the adopter runs already, at its own pace, as in a maintainer: the death falls
        # anywhere in its interval
        adopter = Adopter(queues, MaintainerSection().adopt_interval, lambda: True)
        adopting = asyncio.create_task(adopter.run(stop))
        await fill(queues, "dead", queued)
        await dead.heartbeat(ttl)  # its last heartbeat: the pod dies now
        died = time.perf_counter()
        while await live.depth(SHARD) < queued:  # noqa: ASYNC110 (state in Redis, polled)
            await asyncio.sleep(0.01)
        took = time.perf_counter() - died
        stop.set()
        await asyncio.gather(beating, adopting)
        report(
            "death to adoption", took * 1000, "ms",
            f"(heartbeat TTL {ttl:g} s + adopt_interval {MaintainerSection().adopt_interval:g} s)",
        )  # fmt: skip
        return {
            "queued": queued,
            "heartbeat_ttl_s": ttl,
            "adopt_interval_s": MaintainerSection().adopt_interval,
            "death_to_adoption_ms": round(took * 1000, 1),
            "after_expiry_ms": round((took - ttl) * 1000, 1),
            "adopt_script_ms": round(script_ms, 1),
        }
    finally:
        await queues.close()


async def fill(queues: QueueBackend, pod: str, count: int) -> None:
    """``count`` runs on ``pod``: half waiting on its queue, half taken into flight."""
    queue = queues.queue(pod)
    await queue.heartbeat(600)
    runs = [QueuedRun(SHARD, RunKey("bench", uuid.uuid4()), float(i)) for i in range(count)]
    for start in range(0, count, 5000):
        await queue.push(runs[start : start + 5000])
    for _ in range(0, count // 2, 1000):
        await queue.pop(SHARD, min(1000, count // 2))


# -- (c) watch events -----------------------------------------------------------------------


class _Client:
    name = SHARD


class _Outbox:
    def __init__(self) -> None:
        self.count = 0

    def submit(self, act: object) -> None:
        self.count += 1


async def event_cost(events: int) -> dict[str, Any]:
    """Microseconds one watch event costs the maintainer, by kind, on realistic objects."""
    from maintainer.shardwatch import ShardWatch
    from nexus.core.shards import WatchEvent

    outbox = _Outbox()
    watch = ShardWatch(_Client(), outbox, MaintainerSection())  # type: ignore[arg-type]
    labels = {
        "science.sneaksanddata.com/algorithm-template-name": "bench",
        "science.sneaksanddata.com/nexus-component": "algorithm-run",
    }
    names = [str(uuid.uuid4()) for _ in range(events)]

    def pod(name: str, state: dict[str, Any], phase: str) -> WatchEvent:
        meta = {
            "name": f"{name}-abcde", "namespace": "nexus", "uid": name,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {**labels, "science.sneaksanddata.com/request-id": name,
                       "batch.kubernetes.io/job-name": name},
            "ownerReferences": [{"kind": "Job", "name": name, "uid": name}],
        }  # fmt: skip
        status = {"phase": phase, "containerStatuses": [{"name": name, "state": state}]}
        return WatchEvent("MODIFIED", {"metadata": meta, "status": status})

    def job(name: str, status: dict[str, Any]) -> WatchEvent:
        meta = {"name": name, "namespace": "nexus", "uid": name, "labels": labels}
        return WatchEvent("MODIFIED", {"metadata": meta, "status": status})

    complete = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    kinds = {
        "pod running": (watch._on_pod, [pod(n, {"running": {}}, "Running") for n in names]),
        "pod succeeded": (
            watch._on_pod,
            [pod(n, {"terminated": {"exitCode": 0, "reason": "Completed"}}, "Succeeded")
             for n in names],
        ),
        "job active": (watch._on_job, [job(n, {"active": 1, "ready": 1}) for n in names]),
        "job complete": (watch._on_job, [job(n, complete) for n in names]),
        "event (normal)": (
            watch._on_event,
            [WatchEvent("ADDED", {"reason": "Started", "involvedObject": {"kind": "Pod"}})]
            * events,
        ),
    }  # fmt: skip
    figures: dict[str, Any] = {}
    for kind, (handle, batch) in kinds.items():
        started = time.perf_counter()
        for event in batch:
            await handle(event)
        us = (time.perf_counter() - started) / events * 1e6
        report(f"watch event: {kind}", us, "µs / event")
        figures[kind.replace(" ", "_").replace("(", "").replace(")", "")] = round(us, 2)
    return figures


async def main(args: argparse.Namespace) -> None:
    postgres, redis = LocalPostgres(), LocalRedis()
    postgres.start()
    redis.start()
    try:
        postgres.psql("CREATE DATABASE bench")
        dsn = postgres.info.with_database("bench").dsn
        await apply_migrations(dsn)
        print(f"command: {COMMAND}", flush=True)
        figures = {"command": COMMAND}
        figures["sweep"] = await sweep_cost(dsn, redis.info.url, args.rows, args.candidates)
        figures["adoption"] = await death_to_adoption(
            redis.info.url, args.queued, args.heartbeat_ttl
        )
        figures["watch_event_us"] = await event_cost(args.events)
        print(json.dumps(figures), flush=True)
    finally:
        postgres.close()
        redis.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="checkpoints in the table")
    parser.add_argument("--candidates", type=int, default=20_000, help="BUFFERED (and RUNNING)")
    parser.add_argument("--queued", type=int, default=10_000, help="runs of the dead pod")
    parser.add_argument("--heartbeat-ttl", type=float, default=3.0, help="seconds")
    parser.add_argument("--events", type=int, default=50_000, help="watch events per kind")
    asyncio.run(main(parser.parse_args()))
