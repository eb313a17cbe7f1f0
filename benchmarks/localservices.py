"""Time to start and to stop the three throwaway servers (PostgreSQL, Redis, SeaweedFS).

    .venv/bin/python benchmarks/localservices.py [--rounds 5] [--binaries auto|system|wheel]

Starts all three in parallel (as ``nexus dev`` and the test session do) ``--rounds`` times,
each ready when it accepts work, and prints the median and range of the start and stop
times, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from nexus_dev.servers.services import LocalServices


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--binaries", choices=("auto", "system", "wheel"), default=None)
    args = parser.parse_args()
    starts, stops = [], []
    for _ in range(args.rounds):
        services = LocalServices(None, env={}, binaries=args.binaries)
        began = time.perf_counter()
        services.start()
        started = time.perf_counter()
        services.stop()
        stopped = time.perf_counter()
        starts.append(started - began)
        stops.append(stopped - started)
    figures = {
        "rounds": args.rounds,
        "binaries": args.binaries or "auto",
        "start_median_s": round(statistics.median(starts), 3),
        "start_range_s": [round(min(starts), 3), round(max(starts), 3)],
        "stop_median_s": round(statistics.median(stops), 3),
        "stop_range_s": [round(min(stops), 3), round(max(stops), 3)],
    }
    print(f"start all three: median {figures['start_median_s']} s {figures['start_range_s']}")
    print(f"stop all three:  median {figures['stop_median_s']} s {figures['stop_range_s']}")
    print(json.dumps({"benchmark": "local-services", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
