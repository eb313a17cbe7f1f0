"""What the local system costs at rest: CPU of every process while nothing is submitted.

    .venv/bin/python benchmarks/idle.py [--seconds 30] [--schedulers 1] [--profile DIR]
        [--setting NEXUS__SECTION__KEY=VALUE ...]

Starts the same local system as end_to_end.py (every process on its own), lets it settle
for ``--settle`` seconds, then reads each process tree's CPU over ``--seconds`` of rest.
Reported: CPU milliseconds per second (‰ of one core) of each process and their sum.
``--profile DIR`` samples the Python processes with py-spy meanwhile (see profiles.py).
Prints human lines, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from profiles import record
from stack import StackOptions, local_stack

PLAIN = ("postgres", "redis", "seaweedfs")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to measure")
    parser.add_argument("--settle", type=float, default=10.0, help="rest before measuring")
    parser.add_argument("--schedulers", type=int, default=1)
    parser.add_argument("--profile", type=Path, metavar="DIR")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NEXUS__SECTION__KEY=VALUE",
        help="a setting for every Nexus process (repeatable), e.g. to compare two values",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    if any(not key.startswith("NEXUS__") for key in settings):
        parser.error("--setting takes NEXUS__SECTION__KEY=VALUE")
    options = StackOptions(
        tls=False, mode="simulated", maintainer=True, schedulers=args.schedulers,
        duration="fixed:0.01", create_rate=100_000, log_format="json",
        environment={"NEXUS__LOG__LEVEL": "WARNING", **settings},
    )  # fmt: skip
    with local_stack(options) as stack:
        time.sleep(args.settle)
        meter = CpuMeter(stack.pids())
        recorders = []
        if args.profile is not None:
            python = {k: v for k, v in meter.roots.items() if k not in PLAIN}
            recorders = record(python, args.profile, args.seconds)
        meter.start()
        time.sleep(args.seconds)
        used = meter.stop()
        for recorder in recorders:
            recorder.wait()
    per_second = {name: round(seconds / args.seconds * 1000, 2) for name, seconds in used.items()}
    total = round(sum(per_second.values()), 2)
    print(f"at rest for {args.seconds:.0f} s, CPU ms per second: {per_second}; total {total}")
    print(json.dumps({"benchmark": "idle", "cpu_ms_per_second": per_second, "total": total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
