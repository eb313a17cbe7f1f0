"""Submission throughput and latency of one scheduler process.

    .venv/bin/python benchmarks/submit.py [--seconds 15] [--connections 64] [--rate 2000]
                                          [--body minimal|python-client|overrides]

Starts the local system (real PostgreSQL, Redis, SeaweedFS, one local cluster with pods
off, one scheduler, one receiver) and measures, from a separate load-generator process:

1. **inline inputs, maximum throughput** — closed loop on ``--connections`` keep-alive
   connections: runs accepted (202) per second;
2. **inline inputs, latency at ``--rate``/s** — open loop: p50/p99 from each request's
   scheduled start;
3. **inputs in SeaweedFS, maximum throughput** (``echo-stored``).

``--body`` chooses the run body: ``minimal`` (``algorithmParameters`` alone),
``python-client`` (as the v1.2 Python client sends it: every field, null when unset, down
to each ``customConfiguration`` field) or ``overrides`` (that, with env, args and limits).

By default the scheduler's dispatch is throttled to 0.01 Jobs/s, so the figures are those
of acceptance alone; ``--with-dispatch`` lets it create Jobs (into the pod-less cluster) at
up to 5,000/s in the same process while it accepts. Prints human lines, then one JSON line
with every figure, including CPU seconds per accepted run of the scheduler, PostgreSQL and
Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from loadgen import closed_loop, open_loop, request_bytes
from stack import StackOptions, local_stack

_UNSET = dict.fromkeys(
    ["imageRepository", "imageTag", "deadlineSeconds", "maximumRetries", "env", "secrets",
     "args", "cpuLimit", "memoryLimit", "workgroup", "additionalWorkgroups", "version",
     "monitoringParameters", "customResources", "speculativeAttempts"]
)  # fmt: skip
_OVERRIDES = {
    **_UNSET,
    "env": [{"name": "MODE", "value": "fast", "valueType": "PLAIN"}],
    "args": [{"name": "max-iterations", "value": "10", "valueType": None}],
    "cpuLimit": "250m",
    "deadlineSeconds": 300,
}


def run_body(kind: str, algorithm: str, parameters: dict[str, object]) -> dict[str, object]:
    if kind == "minimal":
        return {"algorithmParameters": parameters}
    configuration = _UNSET if kind == "python-client" else _OVERRIDES
    return {
        "algorithmParameters": parameters,
        "algorithmName": algorithm,
        "customConfiguration": configuration,
        "parentRequest": None,
        "tag": None,
    }


def run_request(url: str, algorithm: str, token: str, kind: str = "minimal") -> object:
    headers = {"Authorization": f"Bearer {token}"}

    def make(index: int) -> bytes:
        parameters = {"index": index, "text": "x" * 64}
        body = orjson.dumps(run_body(kind, algorithm, parameters))
        return request_bytes("POST", f"{url}/algorithm/v1.2/run/{algorithm}", body, headers)

    return make


async def measure(
    url: str, token: str, args: argparse.Namespace, meter: CpuMeter
) -> dict[str, object]:
    figures: dict[str, object] = {}
    inline = run_request(url, "echo", token, args.body)
    await closed_loop(url, inline, connections=8, duration=2)  # warm up connections and caches

    meter.start()
    result = await closed_loop(url, inline, connections=args.connections, duration=args.seconds)
    cpu = meter.stop()
    figures["inline_max"] = result.summary()
    figures["inline_max_cpu_us_per_run"] = {
        name: round(seconds / max(1, result.ok) * 1e6, 1) for name, seconds in cpu.items()
    }
    print(f"inline, closed loop x{args.connections}: {result.summary()}")
    print(f"  CPU µs per accepted run: {figures['inline_max_cpu_us_per_run']}")

    result = await open_loop(url, inline, rate=args.rate, duration=args.seconds)
    figures["inline_at_rate"] = {"rate": args.rate, **result.summary()}
    print(f"inline, open loop at {args.rate}/s: {result.summary()}")

    stored = run_request(url, "echo-stored", token, args.body)
    meter.start()
    result = await closed_loop(url, stored, connections=args.connections, duration=args.seconds)
    cpu = meter.stop()
    figures["stored_max"] = result.summary()
    figures["stored_max_cpu_us_per_run"] = {
        name: round(seconds / max(1, result.ok) * 1e6, 1) for name, seconds in cpu.items()
    }
    print(f"S3 inputs, closed loop x{args.connections}: {result.summary()}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop clients")
    parser.add_argument("--rate", type=float, default=2000.0, help="open-loop requests/s")
    parser.add_argument(
        "--with-dispatch", action="store_true", help="let the scheduler create Jobs meanwhile"
    )
    parser.add_argument(
        "--body",
        choices=("minimal", "python-client", "overrides"),
        default="minimal",
        help="the run body sent (see above)",
    )
    args = parser.parse_args()
    options = StackOptions(
        tls=False,
        mode="off",
        maintainer=False,
        create_rate=5000.0 if args.with_dispatch else 0.01,
        events=False,
        log_format="json",
        # every accepted run stays queued: lift the queue's back-pressure limit
        environment={
            "NEXUS__LOG__LEVEL": "WARNING",
            "NEXUS__SCHEDULER__MAX_QUEUE_DEPTH": "10000000",
        },
    )
    with local_stack(options) as stack:
        url = stack.schedulers[0]
        pids = stack.pids()
        meter = CpuMeter({k: pids[k] for k in ("scheduler-0", "postgres", "redis", "seaweedfs")})
        figures = asyncio.run(measure(url, stack.token, args, meter))
    figures["dispatch"] = "on" if args.with_dispatch else "throttled to 0.01/s"
    figures["body"] = args.body
    print(json.dumps({"benchmark": "submit", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
