"""Instructions one run costs the local cluster in process, without sockets (callgrind).

    .venv/bin/python benchmarks/devcluster_paths.py [--runs 400] [--stage create|start|finish]
        [--no-events] [--tree DIR]

A shard is built in this process (simulated mode, plain HTTP, the kubelet's relist at
30 s as ``devcluster_instructions.py`` is usually run) with the three watches Nexus's
maintainer opens (Jobs and pods by the algorithm-run label, Events by
``reason=FailedCreate``); ``--runs`` Jobs shaped as the scheduler creates them
(``devcluster_instructions.job``) are made beforehand, then, under ``valgrind
--tool=callgrind`` with counting switched on only around the loop, each run goes through

* ``create``: the API's handler for ``POST …/jobs`` (body parsed, validated, defaulted,
  stored, its watch line and its answer made);
* ``start``: and the Job controller's first sync (the pod, its Events, the kubelet
  starting its container, the Job's status);
* ``finish`` (the default): and the container's exit (the pod's status, the second sync,
  ``Completed``, the Job's last status),

the watch lines taken after each run, as a watch's write would. No HTTP parsing or
writing, no simulated pod's calls, no event loop turns: what is left is the emulator's own
Python, measured in seconds rather than the minutes of the whole benchmark, and the same
from one run to the next. ``--no-events`` turns the Events off (their cost is the
difference); ``--tree DIR`` counts another checkout (``git archive REV | tar -x -C
DIR``), its packages first on ``PYTHONPATH``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("create", "start", "finish")
SELECTOR = "science.sneaksanddata.com/nexus-component=algorithm-run"


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], capture_output=True, check=True)


async def _runs(runs: int, stage: int, events: bool, counted: bool) -> None:
    """Inside callgrind (``counted``) or natively: build a shard and go through the runs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from devcluster_instructions import job

    from nexus.core.httpserver import Answer, Request
    from nexus_dev.cluster.emulators import Shard, ShardSpec
    from nexus_dev.cluster.kubelet import KubeletSettings
    from nexus_dev.cluster.selectors import selector_predicate
    from nexus_dev.cluster.store import Watcher

    spec = ShardSpec(
        tls=False, token="bench", events=events, kubelet=KubeletSettings(relist_interval=30)
    )
    home = tempfile.TemporaryDirectory(prefix="devcluster-paths-")  # removed when done
    shard = Shard(spec, Path(home.name))
    watchers = []
    for plural, labels, fields in (
        ("jobs", SELECTOR, None),
        ("pods", SELECTOR, None),
        ("events", None, "reason=FailedCreate"),
    ):
        watcher = Watcher("nexus", selector_predicate(labels, fields, plural), 1 << 40)
        shard.store.collection(plural).watchers.add(watcher)
        watchers.append(watcher)
    bodies = [
        json.dumps(job(str(uuid.uuid4()), "http://127.0.0.1:9")).encode() for _ in range(runs)
    ]
    head = {"authorization": "Bearer bench", "content-type": "application/json", "host": "h"}
    path = "/apis/batch/v1/namespaces/nexus/jobs"
    kubelet, controller = shard.kubelet, shard.controller
    gc.collect()
    gc.freeze()
    gc.disable()  # as the emulator runs (heap.py)
    if counted:
        _control("-i", "on")
        _control("-z")
    for body in bodies:
        request = Request(None, "POST", path, dict(head))  # type: ignore[arg-type]
        request.body = body
        answer = shard.api.handle(request)
        if not isinstance(answer, Answer) or answer.status != 201:
            raise RuntimeError(f"the Job was not created: {answer}")
        if stage >= 1:
            controller._flush()
        if stage >= 2:
            for key, run in list(kubelet.runs.items()):
                if run.timer is not None:
                    run.timer.cancel()
                    run.timer = None
                kubelet.exited(run, 0, "Completed")
                del kubelet.runs[key]
            controller._flush()
        for watcher in watchers:
            watcher.take_lines()
    if counted:
        _control("-d")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="devcluster-paths-")
    out = f"{directory}/callgrind.out"
    environment = dict(os.environ)
    if args.tree is not None:
        paths = [str(args.tree), str(args.tree / "dev"), environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--inside", "--runs", str(args.runs), "--stage", args.stage,
    ]  # fmt: skip
    if args.no_events:
        command.append("--no-events")
    subprocess.run(command, env=environment, check=True, capture_output=True)
    dumps = sorted(glob.glob(f"{out}.*"))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    total = 0
    with open(dumps[0]) as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
                break
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "runs": args.runs,
        "stage": args.stage,
        "events": not args.no_events,
        "instructions_per_run": round(total / args.runs),
        "tree": str(args.tree or ROOT),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--stage", choices=STAGES, default="finish")
    parser.add_argument("--no-events", action="store_true", help="the shard writes no Events")
    parser.add_argument("--tree", type=Path, metavar="DIR", help="run another checkout's code")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        stage = STAGES.index(args.stage)
        uvloop.run(_runs(args.runs, stage, not args.no_events, counted=True))  # as the emulator
        return 0
    if args.tree is not None:
        args.tree = args.tree.resolve()
    print(json.dumps({"benchmark": "devcluster-paths", **measure(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
