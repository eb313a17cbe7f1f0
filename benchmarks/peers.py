"""The peers of the side-by-side report: no-op tasks through Dramatiq, Celery or ARQ.

    <peer venv>/bin/python benchmarks/peers.py dramatiq|celery|arq --redis URL --redis-pid PID
        [--tasks 10000] [--rate 800] [--processes 2]

Runs inside the peer's own virtual environment (``side_by_side.py`` makes them), with only
the standard library, the peer and ``cpu.py``. Redis, started by the caller, is broker and
result store. Workers run as each peer runs in production (``dramatiq``, ``celery worker
--pool prefork``, ``arq``), ``--processes`` of them; the client sends every task, paced at
``--rate`` per second (open loop) or all at once (flat out), while it reads every result
back; a task counts when its result has been read, within ``--limit`` seconds (a peer that
falls behind is cut off there: what it read counts). Reported as one JSON line: tasks
read per second from the first send to the last result read (or the limit), latency
from each task's scheduled send to its result read (p50, p90, p99, of the tasks read),
and CPU microseconds per task read of the client, the workers and Redis, with their sum.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter

PEER = "NEXUS_PEER"
"""Which peer the workers (which import this module) declare."""
REDIS = "NEXUS_PEER_REDIS_URL"
"""Where the workers find Redis."""
WARM = 200
"""Tasks sent and read before measuring: workers up, connections made."""


# -- the tasks, declared the same way in the client and in every worker ----------------------


def _dramatiq(url: str) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    dramatiq.set_broker(broker)
    return dramatiq.actor(lambda index: index, actor_name="noop", store_results=True, max_retries=0)


def _celery(url: str) -> Any:
    from celery import Celery

    celery = Celery("peers", broker=url, backend=url)
    celery.conf.update(worker_hijack_root_logger=False, task_ignore_result=False)

    @celery.task(name="noop")
    def noop(index: int) -> int:
        return index

    return celery, noop


async def noop(ctx: dict[str, Any], index: int) -> int:
    """ARQ's no-op task (ARQ finds it by name)."""
    return index


if os.environ.get(PEER) == "dramatiq":
    actor = _dramatiq(os.environ[REDIS])
elif os.environ.get(PEER) == "celery":
    app, _ = _celery(os.environ[REDIS])
elif os.environ.get(PEER) == "arq":
    from arq.connections import RedisSettings

    class WorkerSettings:
        """``arq peers.WorkerSettings``: the no-op task, results kept, queue polled every
        50 ms when empty (ARQ's default, 500 ms, would put half a second in each latency)."""

        functions = [noop]
        redis_settings = RedisSettings.from_dsn(os.environ[REDIS])
        max_jobs = 64
        poll_delay = 0.05
        keep_result = 3600


# -- workers ---------------------------------------------------------------------------------


def _workers(peer: str, url: str, processes: int) -> list[subprocess.Popen[bytes]]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, PEER: peer, REDIS: url, "PYTHONPATH": str(Path(__file__).parent)}
    match peer:
        case "dramatiq":
            commands = [[str(bin_dir / "dramatiq"), "peers", "--processes", str(processes),
                         "--threads", "8"]]  # fmt: skip
        case "celery":
            commands = [[str(bin_dir / "celery"), "-A", "peers", "worker", "--pool", "prefork",
                         "--concurrency", str(2 * processes), "--loglevel", "WARNING",
                         "--without-gossip", "--without-mingle",
                         "--without-heartbeat"]]  # fmt: skip
        case _:
            commands = [[str(bin_dir / "arq"), "peers.WorkerSettings"]] * processes
    return [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for c in commands
    ]


# -- clients: send(index) -> handle; read(handle) blocks until its result is there -----------


def _threaded(
    send: Callable[[int], Any],
    read: Callable[[Any, float], Any],
    tasks: int,
    rate: float | None,
    limit: float,
) -> tuple[float, list[float]]:
    """Send ``tasks`` (paced, or all at once) from this thread while another reads the
    results in order (``read(handle, timeout)`` returns when its result is there), for at
    most ``limit`` seconds; (seconds from first send to last result read, latencies)."""
    sent: queue.SimpleQueue[tuple[float, Any]] = queue.SimpleQueue()
    latencies: list[float] = []
    failed: list[BaseException] = []

    def reader() -> None:
        try:
            left = tasks
            while left:
                batch = [sent.get()]
                while not sent.empty() and len(batch) < 1000:
                    batch.append(sent.get())
                for scheduled, handle in batch:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        return
                    try:
                        read(handle, remaining)
                    except Exception as exc:
                        if time.perf_counter() >= deadline:
                            return  # over the deadline: what was read counts
                        raise exc
                    latencies.append(time.perf_counter() - scheduled)
                left -= len(batch)
        except BaseException as exc:  # the figures would be wrong: stop the benchmark
            failed.append(exc)

    thread = threading.Thread(target=reader)
    began = time.perf_counter()
    deadline = began + limit
    thread.start()
    for index in range(tasks):
        if time.perf_counter() > deadline:
            break
        scheduled = began + index / rate if rate else began
        delay = scheduled - time.perf_counter()
        if delay > 0.002:
            time.sleep(delay)
        sent.put((scheduled, send(index)))
    thread.join()
    if failed:
        raise failed[0]
    return min(time.perf_counter(), deadline) - began, latencies


async def _arq(url: str, tasks: int, rate: float | None, limit: float) -> tuple[float, list[float]]:
    """ARQ's client: enqueue paced (or all at once) while one reader awaits each result in
    order (``Job.result`` polls Redis; one poller at a time keeps that cheap)."""
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(url))
    sent: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
    latencies: list[float] = []

    async def reader() -> None:
        for _ in range(tasks):
            scheduled, job = await sent.get()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            try:
                await job.result(timeout=remaining, poll_delay=0.005)
            except TimeoutError:
                return  # over the deadline: what was read counts
            latencies.append(time.perf_counter() - scheduled)

    began = time.perf_counter()
    deadline = began + limit
    reading = asyncio.ensure_future(reader())
    for index in range(tasks):
        if time.perf_counter() > deadline:
            break
        scheduled = began + index / rate if rate else began
        delay = scheduled - time.perf_counter()
        if delay > 0.002:
            await asyncio.sleep(delay)
        job = await pool.enqueue_job("noop", index)
        assert job is not None
        sent.put_nowait((scheduled, job))
    await reading
    seconds = min(time.perf_counter(), deadline) - began
    await pool.aclose()
    return seconds, latencies


Measure = Callable[[int, float | None, float], tuple[float, list[float]]]


def _client(peer: str, url: str) -> Measure:
    """``measure(tasks, rate, limit)`` for the peer's own client API."""
    if peer == "dramatiq":
        sender = _dramatiq(url)

        def read_dramatiq(message: Any, timeout: float) -> None:
            message.get_result(block=True, timeout=int(timeout * 1000))

        return lambda tasks, rate, limit: _threaded(sender.send, read_dramatiq, tasks, rate, limit)
    if peer == "celery":
        _, task = _celery(url)
        return lambda tasks, rate, limit: _threaded(
            task.delay, lambda result, timeout: result.get(timeout=timeout), tasks, rate, limit
        )
    return lambda tasks, rate, limit: asyncio.run(_arq(url, tasks, rate, limit))


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workers = _workers(args.peer, args.redis, args.processes)
    client = _client(args.peer, args.redis)
    try:
        client(WARM, None, 120.0)
        roots = {f"workers-{i}": w.pid for i, w in enumerate(workers)}
        meter = CpuMeter({**roots, "redis": args.redis_pid})
        meter.start()
        before = _own_cpu()
        seconds, latencies = client(args.tasks, args.rate, args.limit)
        used = {"client": _own_cpu() - before, **meter.stop()}
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a busy machine: the figures still stand
                worker.kill()
                worker.wait()
    workers_cpu = sum(v for k, v in used.items() if k.startswith("workers-"))
    used = {"client": used["client"], "workers": workers_cpu, "redis": used["redis"]}
    done = max(1, len(latencies))
    per_task = {name: round(s / done * 1e6, 1) for name, s in used.items()}
    return {
        "system": args.peer,
        "offered_per_second": args.rate,
        "tasks": args.tasks,
        "completed": len(latencies),
        "processes": args.processes,
        "seconds": round(seconds, 2),
        "completed_per_second": round(len(latencies) / seconds, 1),
        "latency_ms": {f"p{p}": round(_percentile(latencies, p) * 1000, 1) for p in (50, 90, 99)},
        "cpu_us_per_run": per_task,
        "cpu_us_per_run_total": round(sum(per_task.values()), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("peer", choices=["dramatiq", "celery", "arq"])
    parser.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    parser.add_argument("--redis-pid", type=int, required=True)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rate", type=float, help="tasks sent per second (default: flat out)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--limit", type=float, default=120.0, help="seconds, then what was read counts"
    )
    args = parser.parse_args()
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
