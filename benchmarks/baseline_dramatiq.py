"""The bar end_to_end.py is held to: Dramatiq no-op tasks end to end on the same machine.

    .venv/bin/pip install dramatiq==2.2.1   # once; not a dependency of Nexus
    .venv/bin/python benchmarks/baseline_dramatiq.py [--tasks 40000] [--processes 2] [--threads 8]
        [--rate 800]

Redis (a throwaway server, as Nexus' benchmarks use) is Dramatiq's broker and result store.
Workers run as ``dramatiq`` does in production, ``--processes`` times ``--threads``. The client
sends every task (``actor.send``), then reads every result (``get_result(block=True)``);
a task counts when its result has been read. With ``--rate``, tasks are sent at that pace
(open loop, as end_to_end.py offers runs) while a second thread reads the results, so
Dramatiq and Nexus can be compared at one offered load as well as flat out. Reported:
tasks per second from the first send to the last result, and CPU microseconds per task of
the client, the workers and Redis, with their sum: the figure Nexus' own processes plus
PostgreSQL and Redis are compared with. Prints human lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter

BROKER_URL = "NEXUS_BASELINE_REDIS_URL"
"""Where the workers (which import this module) find Redis."""


def _declare(url: str) -> Any:
    """The broker, result store and no-op actor, in the client and in every worker."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    dramatiq.set_broker(broker)
    return dramatiq.actor(lambda index: index, actor_name="noop", store_results=True, max_retries=0)


if os.environ.get(BROKER_URL):  # imported by a worker
    noop = _declare(os.environ[BROKER_URL])


def _own_cpu() -> float:
    """This process' CPU seconds, without its children (the workers)."""
    times = os.times()
    return times.user + times.system


def _paced(actor: Any, tasks: int, rate: float, began: float) -> float:
    """Send ``tasks`` at ``rate`` per second from this thread while another reads the
    results in order; returns when the last was sent."""
    sent: queue.SimpleQueue[Any] = queue.SimpleQueue()
    failed: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(tasks):
                sent.get().get_result(block=True, timeout=120_000)
        except BaseException as exc:  # the figures would be wrong: stop the benchmark
            failed.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for index in range(tasks):
        delay = began + index / rate - time.perf_counter()
        if delay > 0.002:
            time.sleep(delay)
        sent.put(actor.send(index))
    last_sent = time.perf_counter()
    reader.join()
    if failed:
        raise failed[0]
    return last_sent


def measure(args: argparse.Namespace, url: str, redis_pid: int) -> dict[str, object]:
    actor = _declare(url)
    environment = {**os.environ, BROKER_URL: url, "PYTHONPATH": str(Path(__file__).parent)}
    command = [
        str(Path(sys.executable).parent / "dramatiq"), Path(__file__).stem,
        "--processes", str(args.processes), "--threads", str(args.threads),
    ]  # fmt: skip
    workers = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        warm = [actor.send(-1) for _ in range(200)]  # workers up, connections made
        for message in warm:
            message.get_result(block=True, timeout=60_000)
        meter = CpuMeter({"workers": workers.pid, "redis": redis_pid})
        meter.start()
        client_before, began = _own_cpu(), time.perf_counter()
        if args.rate is None:
            messages = [actor.send(i) for i in range(args.tasks)]
            sent = time.perf_counter()
            for message in messages:
                message.get_result(block=True, timeout=120_000)
        else:
            sent = _paced(actor, args.tasks, args.rate, began)
        finished = time.perf_counter()
        used = {"client": _own_cpu() - client_before, **meter.stop()}
    finally:
        workers.terminate()
        workers.wait(timeout=30)
    per_task = {name: round(seconds / args.tasks * 1e6, 1) for name, seconds in used.items()}
    return {
        "tasks": args.tasks,
        "offered_per_second": args.rate,
        "processes": args.processes,
        "threads": args.threads,
        "sent_for_seconds": round(sent - began, 2),
        "seconds": round(finished - began, 2),
        "tasks_per_second": round(args.tasks / (finished - began), 1),
        "cpu_us_per_task": per_task,
        "cpu_us_per_task_total": round(sum(per_task.values()), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=40_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=float, help="tasks sent per second (default: all at once)")
    args = parser.parse_args()
    try:
        import dramatiq  # noqa: F401
    except ImportError:
        parser.exit(2, "this benchmark needs Dramatiq: .venv/bin/pip install dramatiq==2.2.1\n")
    from nexus_dev.servers.databases import LocalRedis

    with tempfile.TemporaryDirectory(prefix="nexus-baseline-") as directory:
        redis = LocalRedis(Path(directory))
        info = redis.start()
        try:
            assert redis.pid is not None
            figures = measure(args, info.url, redis.pid)
        finally:
            redis.stop()
    print(
        f"Dramatiq, {args.processes} processes x {args.threads} threads:"
        f" {figures['tasks']} no-op tasks in {figures['seconds']} s,"
        f" {figures['tasks_per_second']}/s"
    )
    print(
        f"CPU µs per task: {figures['cpu_us_per_task']};"
        f" total {figures['cpu_us_per_task_total']} µs"
    )
    print(json.dumps({"benchmark": "baseline-dramatiq", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
