"""The fault suite, longer and heavier: each real part fails under a steady load, in turn.

Starts ``nexus dev --mode simulated --schedulers 2 --receivers 2`` (real PostgreSQL,
Redis, SeaweedFS, the Kubernetes emulator, two receivers behind one address, two
schedulers and the maintainer, each restarted by its supervisor as a kubelet would), then
for each fault (the receivers' are done to both: killed or stopped together, or replaced
one at a time as a rolling update does): ``--before`` seconds of load at ``--rate`` runs
a second (``echo-stored``: input in S3), the fault, ``--after`` seconds more, and every
acknowledged run followed to its end (:mod:`nexus_dev.faults`).
Prints one line of figures per fault (runs accepted, lost, wrongly failed, refused,
recovery seconds) and a final JSON line with all of them; exits 1 if any run was lost or
wrongly failed, or a store's outage was answered otherwise than 503/429 with Retry-After.

    .venv/bin/python benchmarks/faults_soak.py --rate 100 --before 5 --after 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from nexus_dev.cli import READY_PREFIX
from nexus_dev.faults import CaseResult, LocalSystem, run_case
from nexus_dev.servers.supervision import descendants

FAULTS = (
    "postgres-killed",
    "redis-killed",
    "s3-frozen",
    "s3-killed",
    "receiver-killed",
    "receiver-restarted",
    "receiver-rolling-restart",
    "scheduler-killed",
    "scheduler-restarted",
    "maintainer-killed",
)

RECEIVERS = ("receiver-0", "receiver-1")


def start(restart_delay: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("PGHOST", "NEXUS_REDIS_URL")},
        "NEXUS__MAINTAINER__INSTANCE": "maintainer-soak",
        "NEXUS__LOG__LEVEL": "WARNING",
        # as in the fault suite: a submission waiting on object storage answers 503 well
        # within the load's patience (10 s a request), not as that patience runs out
        "NEXUS__STORAGE__REQUEST_TIMEOUT": "4",
    }
    dev = subprocess.Popen(
        [sys.executable, "-m", "nexus", "dev", "--mode", "simulated", "--schedulers", "2",
         "--receivers", str(len(RECEIVERS)), "--restart-delay", str(restart_delay)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment,
    )  # fmt: skip
    assert dev.stdout is not None
    ready: dict[str, Any] = {}
    found = threading.Event()

    def read() -> None:
        assert dev.stdout is not None
        for line in dev.stdout:
            if line.startswith(READY_PREFIX):
                ready.update(json.loads(line.removeprefix(READY_PREFIX)))
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(180):
        stop(dev)
        raise SystemExit("nexus dev printed no READY line within 3 minutes")
    return dev, ready


def stop(dev: subprocess.Popen[str]) -> None:
    dev.send_signal(signal.SIGTERM)
    try:
        dev.wait(timeout=60)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(dev.pid), dev.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        dev.wait(timeout=30)


def one(system: LocalSystem, fault: str, args: argparse.Namespace) -> CaseResult:
    killed = None
    match fault:
        case "postgres-killed":
            action = system.kill("postgres")
        case "redis-killed":
            action = system.kill("redis")
        case "s3-frozen":
            action = system.freeze("s3", args.freeze)
        case "s3-killed":
            action = system.kill("s3")
        case "receiver-killed":
            action = system.kill(*RECEIVERS)
        case "receiver-restarted":
            action = system.restart(*RECEIVERS)
        case "receiver-rolling-restart":
            action = system.roll_out(*RECEIVERS)
        case "scheduler-killed":
            killed = system.service("scheduler-0")["url"]
            action = system.kill("scheduler-0")
        case "scheduler-restarted":
            killed = system.service("scheduler-1")["url"]
            action = system.restart("scheduler-1")
        case "maintainer-killed":
            action = system.kill("maintainer")
        case _:
            raise SystemExit(f"unknown fault {fault!r}: choose from {', '.join(FAULTS)}")
    return run_case(
        system, fault, action, rate=args.rate, before=args.before, after=args.after,
        patience=args.patience, killed=killed,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="runs submitted a second")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of load after")
    parser.add_argument("--freeze", type=float, default=8.0, help="seconds S3 is frozen")
    parser.add_argument("--patience", type=float, default=300.0, help="seconds to settle")
    parser.add_argument("--restart-delay", type=float, default=1.0, help="supervisor's delay")
    parser.add_argument("--faults", default=",".join(FAULTS), help="which, comma-separated")
    args = parser.parse_args()
    dev, ready = start(args.restart_delay)
    results: list[dict[str, Any]] = []
    try:
        system = LocalSystem(ready)
        time.sleep(3)
        for fault in filter(None, args.faults.split(",")):
            result = one(system, fault, args)
            figures = result.figures()
            results.append({**figures, "outcomes": result.outcomes})
            print(
                f"{fault:22} accepted {result.accepted:6}  lost {result.lost}"
                f"  wrongly failed {result.wrongly_failed}  refused {result.refused:5}"
                f"  bad answers {len(result.bad_answers)}  recovery {result.recovery_s:6.2f} s"
                f" (fault {result.fault_s:.2f} s)",
                flush=True,
            )
            for bad in result.bad_answers[:3]:
                print(f"    {bad}", flush=True)
    finally:
        stop(dev)
    failed = any(r["lost"] or r["wronglyFailed"] or r["badAnswers"] for r in results)
    print(json.dumps({"benchmark": "faults_soak", "rate": args.rate, "faults": results}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
