"""CPU the maintainer's watch of a shard spends per run: Jobs, Pods and Events followed
while runs complete.

    .venv/bin/python benchmarks/maintainer_watch.py [--runs 2000] [--warmup 200]
        [--concurrency 16] [--rounds 1] [--callgrind] [--profile FILE]

A ``nexus devcluster`` (one simulated shard, plain HTTP, 10 ms pods playing the algorithm
contract against a stub server) and, in a process of its own, the maintainer's
:class:`maintainer.shardwatch.ShardWatch` of that shard as the maintainer runs it (the
same shard client, ``follow`` loops, selectors and rules; its actions only counted, as
nearly every successful run submits none). Jobs shaped as the scheduler creates them
(those of ``devcluster_instructions.py``, about 4 KB) are created ``--concurrency`` at a
time: a warm-up, then ``--runs`` Jobs until the watch has seen every one succeed, then an
idle window of the same wall time. The figure is the watcher's (window - idle) / runs:

* CPU microseconds per run, from the watcher's own ``time.process_time()`` (noisy with
  the machine's load, since its wake-ups and batching change with it);
* with ``--callgrind``, instructions per run instead (the watcher runs under
  ``valgrind --tool=callgrind --instr-atstart=no``, switched on and zeroed with
  ``callgrind_control`` for the window): load-independent, about 50 times slower; with
  ``--keep`` its dumps stay (their paths printed) for ``callgrind_annotate``;
* with ``--profile FILE``, the window under cProfile (call counts per run: exactly
  repeatable), written to FILE (``python -m pstats FILE``).

``--compare DIR`` runs a second watcher, of the Nexus tree in DIR (a checkout, or
``git archive REV nexus maintainer | tar -x -C DIR``), on the same shard in the same
windows: two revisions measured side by side under the very same load and events.

``--tree DIR`` measures that tree alone (with ``--callgrind`` too: run it next to a
measure of this tree, as callgrind's counts move a little with how the emulator's writes
are batched).

``--rounds`` repeats the window (the figure of each round is printed; the JSON line has
all of them and their median). Every process started is stopped at the end. Prints one
line per round, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from devcluster_instructions import STUB, control, counted, run_batch

PYTHON = sys.executable
SHARD = "bench"


async def child(kubeconfig: Path, profile: Path | None, tree: Path | None) -> None:
    """The watcher: a ShardWatch of the shard, answering the driver's lines on stdin.

    ``seen N`` — once N Jobs were seen to succeed: ``SEEN <cpu seconds> <actions>``;
    ``start`` / ``stop`` — the cProfile window (``stop`` writes it to ``profile``).
    With ``tree``, Nexus's packages are imported from that directory instead."""
    import cProfile

    if tree is not None:  # ahead of the editable install's finder of this tree
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable___nexus_0" not in repr(f)]
        sys.path.insert(0, str(tree))

    from maintainer.actions import Act
    from maintainer.settings import MaintainerSection
    from maintainer.shardwatch import ShardWatch
    from nexus.core.shards import ShardClient

    class CountedActions:
        def __init__(self) -> None:
            self.count = 0

        def submit(self, act: Act) -> bool:
            self.count += 1
            return True

    client = await ShardClient.from_kubeconfig(SHARD, kubeconfig, "nexus")
    actions = CountedActions()
    watch = ShardWatch(client, actions, MaintainerSection())  # type: ignore[arg-type]
    stopping = asyncio.Event()
    task = asyncio.create_task(watch.run(stopping))
    while not watch.synced:  # noqa: ASYNC110 (the watch has no event to wait on)
        await asyncio.sleep(0.05)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    profiler = cProfile.Profile()
    while line := (await reader.readline()).decode().split():
        if line[0] == "seen":
            while len(watch.succeeded) < int(line[1]):  # noqa: ASYNC110 (as above)
                await asyncio.sleep(0.01)
            print(f"SEEN {time.process_time()} {actions.count}", flush=True)
        elif line[0] == "start":
            profiler.enable()
            print("OK", flush=True)
        elif line[0] == "stop":
            profiler.disable()
            if profile is not None:
                profiler.dump_stats(profile)
            print("OK", flush=True)
    stopping.set()
    await task
    await client.close()


class Watcher:
    """The driver's side of the watcher process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ask(self, line: str) -> list[str]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()
        return (await self.process.stdout.readline()).decode().split()

    async def seen(self, count: int) -> float:
        answer = await self.ask(f"seen {count}")
        if not answer or answer[0] != "SEEN":
            raise RuntimeError(f"the watcher answered {answer!r}")
        return float(answer[1])


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="maintainer-watch-")
    out = f"{directory}/callgrind.out"
    processes: list[asyncio.subprocess.Process] = []

    async def start(*command: str, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(*command, **kwargs)
        processes.append(process)
        return process

    try:
        stub = await start(PYTHON, "-c", STUB, stdout=subprocess.PIPE)
        assert stub.stdout is not None
        stub_url = f"http://127.0.0.1:{int(await stub.stdout.readline())}"
        emulator = await start(
            *(PYTHON, "-m", "nexus", "devcluster", "--shard", SHARD, "--kubeconfig-dir"),
            *(directory, "--log-level", "WARNING", "--token", SHARD, "--plain-http"),
            *("--mode", "simulated", "--duration", "fixed:0.01"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert emulator.stdout is not None
        line = (await emulator.stdout.readline()).decode()
        if not line.startswith("DEVCLUSTER READY "):
            raise RuntimeError(f"devcluster did not start: {line!r}")
        base = json.loads(line.split(" ", 2)[2])[SHARD]["url"]
        prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no"] if args.callgrind else []
        if prefix:
            prefix.append(f"--callgrind-out-file={out}")
        watcher_process = await start(
            *prefix, PYTHON, __file__, "--child", f"{directory}/{SHARD}.kubeconfig",
            *(["--profile", str(args.profile)] if args.profile else []),
            *(["--tree", str(args.tree)] if args.tree else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        watcher = Watcher(watcher_process)
        compared: Watcher | None = None
        if args.compare:
            compared = Watcher(
                await start(
                    PYTHON, __file__, "--child", f"{directory}/{SHARD}.kubeconfig",
                    "--tree", str(args.compare), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                )
            )  # fmt: skip
        for each in (watcher, compared) if compared else (watcher,):
            assert each.process.stdout is not None
            ready = (await each.process.stdout.readline()).decode().strip()
            if ready != "READY":
                raise RuntimeError(f"the watcher did not start: {ready!r}")
        headers = {"Authorization": f"Bearer {SHARD}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def batch(runs: int) -> None:
                await run_batch(session, base, stub_url, runs, args.concurrency)

            total = args.warmup
            await batch(args.warmup)
            await watcher.seen(total)
            rounds = []
            for _ in range(args.rounds):
                if args.profile:
                    await watcher.ask("start")
                if args.callgrind:
                    pid = str(watcher_process.pid)
                    await control("-i", "on", pid)
                    await control("-z", pid)
                began, first = time.monotonic(), await watcher.seen(total)
                other_first = await compared.seen(total) if compared else 0.0
                await batch(args.runs)
                total += args.runs
                last = await watcher.seen(total)
                other_last = await compared.seen(total) if compared else 0.0
                busy = time.monotonic() - began
                if args.callgrind:
                    await control("-d", pid)
                if args.profile:
                    await watcher.ask("stop")
                await asyncio.sleep(busy)
                idle = await watcher.seen(total) - last
                other_idle = (await compared.seen(total) - other_last) if compared else 0.0
                if args.callgrind:
                    await control("-d", pid)
                    window, quiet = counted(f"{out}.*", args.keep)[:2]
                    figure = {"instructions_per_run": round((window - quiet) / args.runs)}
                else:
                    per_run = (last - first - idle) / args.runs * 1e6
                    figure = {"cpu_us_per_run": round(per_run, 1)}
                    if compared:
                        other = (other_last - other_first - other_idle) / args.runs * 1e6
                        figure["compared_cpu_us_per_run"] = round(other, 1)
                figure |= {"window_seconds": round(busy, 1), "idle_cpu_ms": round(idle * 1e3, 1)}
                print(json.dumps(figure), flush=True)
                rounds.append(figure)
                if args.profile:
                    break
        for each in (watcher, compared) if compared else (watcher,):
            assert each.process.stdin is not None
            each.process.stdin.close()
            await asyncio.wait_for(each.process.wait(), 60)
    finally:
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                await process.wait()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    if args.keep:
        print(f"callgrind's dumps: {out}.*", flush=True)
    keys = ["instructions_per_run"] if args.callgrind else ["cpu_us_per_run"]
    if args.compare:
        keys.append("compared_cpu_us_per_run")
    medians = {key: statistics.median(figure[key] for figure in rounds) for key in keys}
    compared_tree = {"compared_tree": str(args.compare)} if args.compare else {}
    return {
        "runs": args.runs,
        "concurrency": args.concurrency,
        **medians,
        **compared_tree,
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16, help="creations in flight")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--callgrind", action="store_true", help="instructions, not CPU time")
    parser.add_argument(
        "--keep", action="store_true", help="keep callgrind's dumps (callgrind_annotate)"
    )
    parser.add_argument("--profile", type=Path, metavar="FILE", help="cProfile the window")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="also a watcher of the tree in DIR (a checkout or `git archive` of another"
        " revision), measured in the same windows",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tree", type=Path, metavar="DIR", help="measure the tree in DIR (as --compare's)"
    )
    args = parser.parse_args()
    if args.child is not None:
        import uvloop

        uvloop.run(child(args.child, args.profile, args.tree))
        return 0
    if args.compare and (args.callgrind or args.profile):
        parser.error("--compare measures CPU time only")
    result = asyncio.run(measure(args))
    print(json.dumps({"benchmark": "maintainer-watch", **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
