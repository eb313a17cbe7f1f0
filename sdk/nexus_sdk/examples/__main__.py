"""``python -m nexus_sdk.examples <name> --sas-uri=… --request-id=…``

* ``echo``: the result is the run's own ``algorithmParameters``.
* ``maybe-fail``: like ``echo``, unless the parameters ask otherwise —
  ``{"fail": "<message>"}`` reports a failure with cause ``RequestedFailure``;
  ``{"exitCode": <n>}`` exits with that code without reporting anything (as a crashing
  container would); ``{"sleepSeconds": <s>}`` waits first (to try cancellation and
  deadlines).
* ``fan-out``: ``{"algorithm": "<name>", "inputs": [...]}`` runs the algorithm on each
  input as a child run (``Run.map``) and reports their results, in order, as its own.
"""

from __future__ import annotations

import sys
import time

from nexus_sdk.algorithm import Run


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("echo", "maybe-fail", "fan-out"):
        print(__doc__, file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    with Run.from_environment(rest) as run:
        parameters = run.input()
        if name == "fan-out":
            run.succeed(run.map(parameters["algorithm"], parameters["inputs"], timeout=600))
            return 0
        if name == "maybe-fail" and isinstance(parameters, dict):
            time.sleep(float(parameters.get("sleepSeconds", 0)))
            if "exitCode" in parameters:
                return int(parameters["exitCode"])
            if "fail" in parameters:
                run.fail("RequestedFailure", str(parameters["fail"]))
                return 0
        run.succeed(parameters)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
