"""What a v1.2 run body costs the submit path before anything is stored: in-process.

    .venv/bin/python benchmarks/validation.py [--body minimal|python-client|overrides]
                                              [--count N] [--repeat 5]

Parses the body as the handler does, then runs the submitter's checks of it: the fields
under their canonical names (``null`` absent, any letter case), the parent, the
``customConfiguration`` and the configuration applied to the example template. Prints the
best time per body of ``--repeat`` rounds of ``--count`` bodies.

Time on a shared machine moves with its load; instructions do not. To compare two
checkouts, count instructions with ``--count 0`` and ``--count N`` under valgrind (the
difference divided by N is the instructions per body), each with ``PYTHONPATH`` set to
the checkout::

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/validation.py --count 5000 --repeat 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
from submit import run_body

from nexus.core.compatibility import canonical
from nexus.core.overrides import apply, normalise
from nexus.core.templates import Workgroup, parse_template
from nexus.scheduler.submission import RUN_FIELDS, _parent

TEMPLATE = parse_template(
    {
        "metadata": {"name": "echo"},
        "spec": {"container": {"image": "nexus"}, "workgroupRef": {"name": "default"}},
    }
)
WORKGROUPS = {"default": Workgroup("default", "shard-0")}


def check(data: bytes) -> None:
    """The submitter's checks of one body, as in :meth:`Submitter.submit`."""
    body = canonical(orjson.loads(data), RUN_FIELDS)
    body.get("algorithmParameters")
    body.get("algorithmName")
    body.get("tag")
    _parent(body)
    apply(TEMPLATE, normalise(body.get("customConfiguration")), WORKGROUPS)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--body", choices=("minimal", "python-client", "overrides"), default="minimal"
    )
    parser.add_argument("--count", type=int, default=100_000, help="bodies per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the best counts)")
    args = parser.parse_args()
    data = orjson.dumps(run_body(args.body, "echo", {"index": 1, "text": "x" * 64}))
    best = float("inf")
    for _ in range(args.repeat):
        started = time.perf_counter()
        for _ in range(args.count):
            check(data)
        best = min(best, time.perf_counter() - started)
    if args.count:
        print(f"{args.body}: {best / args.count * 1e9:.0f} ns per body")
    return 0


if __name__ == "__main__":
    sys.exit(main())
