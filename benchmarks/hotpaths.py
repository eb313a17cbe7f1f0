"""Instructions per accepted submit, per completion and per dispatched Job, counted by
callgrind inside the real server processes (deterministic on a busy machine).

    .venv/bin/python benchmarks/hotpaths.py [--baseline REV ...] [--runs 400] [--paths ...]

For each tree (every ``--baseline`` revision, then this one) a local system is started
with that tree's own code (its ``benchmarks/stack.py``: real PostgreSQL, Redis, SeaweedFS
and a local cluster with pods off). The receiver and the scheduler run under
``valgrind --tool=callgrind --instr-atstart=no`` through a small wrapper that turns
SIGUSR1 into "instrument and zero the counters" and SIGUSR2 into "dump the counters"
(callgrind's client requests, from a tiny C library compiled here with gcc). So start-up
runs almost at native speed and only the measured windows are counted:

* **completion** — ``--runs`` BUFFERED runs written first (that tree's
  ``benchmarks/receiver.py`` fill), then one ``POST …/complete/echo/requests/{id}`` each
  with its run token, ``--concurrency`` at a time, against the receiver;
* **dispatch** — a scheduler allowed 100,000 creations/s is stopped (SIGSTOP), its queue
  filled with ``--runs`` runs (that tree's ``benchmarks/dispatch.py`` fill), counters
  zeroed, continued, and counted until every run is RUNNING (Jobs created in the local
  cluster, whose own work is not counted);
* **submit** — a second scheduler whose dispatch is throttled to 0.01 Jobs/s takes
  ``--runs`` inline ``POST /algorithm/v1.2/run/echo`` (202 each);
* **bulk** — the same, with ``--runs`` inline runs in ``POST /algorithm/v1.2/runs/echo``
  of 100 runs each, 4 requests in flight (every item must be accepted).

Each window follows a warm-up of the same requests and a full garbage collection (a
collection of the oldest generation falling in a window would swamp it); an idle window of
the same wall time is counted right after it (timers, heartbeats, leases): the figure is
(window - idle) / runs. The receiver has next to no timers, so its figure repeats within
1 %; the schedulers' timers run by wall time, which callgrind stretches about 40x, so
theirs move by some 5 % with the machine's load: compare them over several runs, and with
``--profile DIR`` (the same windows natively under cProfile: Python function calls per
run, exactly repeatable, one .pstats file per window in DIR) to see where they come from.
A baseline revision is measured in an existing worktree of it with a ``.venv`` (see
``git worktree list``) or else in a temporary one made with ``make .venv/.installed``.
Prints a line per figure, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("submit", "completion", "dispatch", "bulk")
BULK = 100
"""Runs per request of the bulk path, as benchmarks/bulk_submit.py sends them."""
WARMUP = 40
NATIVE = r"""
#include <valgrind/callgrind.h>
static int on = 0;
void hotpaths_zero(void) {
    if (!on) { CALLGRIND_START_INSTRUMENTATION; on = 1; }
    CALLGRIND_ZERO_STATS;
}
void hotpaths_dump(void) { CALLGRIND_DUMP_STATS; }
"""


def wrap(library: str, argv: list[str]) -> None:
    """Run ``python -m nexus …`` (``argv``) with the two signals bound to callgrind."""
    import ctypes
    import runpy

    if profile := os.environ.get("HOTPATHS_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        dumps = iter(range(1, 1000))

        def start(*_: object) -> None:
            profiler.disable()
            profiler.clear()
            gc.collect()
            profiler.enable()

        def stop(*_: object) -> None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{next(dumps)}")

        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, stop)
    else:
        native = ctypes.CDLL(library)

        def zero(*_: object) -> None:
            gc.collect()  # a full collection due in the window would swamp its figure
            native.hotpaths_zero()

        signal.signal(signal.SIGUSR1, zero)
        signal.signal(signal.SIGUSR2, lambda *_: native.hotpaths_dump())
    assert argv[0] == "-m", argv
    here = str(Path(__file__).resolve().parent)  # benchmarks/receiver.py is no package
    sys.path[:] = [os.getcwd(), *(p for p in sys.path[1:] if p != here)]
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


class Counted:
    """A server process under callgrind: zero, dump, and read each dump's total."""

    def __init__(self, component: Any, out: Path) -> None:
        self.component = component
        self.out = out
        self.dumps = 0
        self.profile = bool(os.environ.get("HOTPATHS_PROFILE"))

    @property
    def pid(self) -> int:
        return int(self.component.pid)

    def zero(self) -> None:
        os.kill(self.pid, signal.SIGUSR1)

    def dump(self, timeout: float = 300.0) -> int:
        self.dumps += 1
        os.kill(self.pid, signal.SIGUSR2)
        path = Path(f"{self.out}.{self.dumps}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.profile:
                if not path.exists():
                    time.sleep(0.2)
                    continue
                time.sleep(0.5)  # written at once, but let it finish
                import pstats

                return int(pstats.Stats(str(path)).total_calls)  # type: ignore[attr-defined]
            elif path.exists():
                found = re.search(r"^totals:\s+(\d+)", path.read_text(), re.M)
                if found:  # the line comes last: the dump is whole
                    return int(found.group(1))
            time.sleep(0.2)
        raise RuntimeError(f"callgrind wrote no dump {path}")

    async def window(self, work: Any) -> tuple[int, int, float]:
        """Instructions of ``work()`` and of an idle window as long, and its seconds."""
        self.zero()
        began = time.monotonic()
        await work()
        seconds = time.monotonic() - began
        busy = self.dump()
        self.zero()
        await asyncio.sleep(seconds)
        idle = self.dump()
        return busy, idle, seconds


def under_callgrind(component: Any, library: Path, out: Path) -> Counted:
    """Rewrite a not yet started ProcessComponent to run under callgrind and the wrapper."""
    process = component.process
    python, *rest = process.argv
    if profile := os.environ.get("HOTPATHS_PROFILE"):  # function calls, natively, instead
        process.argv = [python, __file__, "--wrap", str(library), *rest]
        process.env = {**process.env, "HOTPATHS_PROFILE": f"{profile}-{out.stem}"}
        return Counted(component, Path(f"{profile}-{out.stem}"))
    process.argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
        f"--callgrind-out-file={out}", python, __file__, "--wrap", str(library), *rest,
    ]  # fmt: skip
    process.env = {**process.env, "PYTHONHASHSEED": "0"}
    return Counted(component, out)


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def posts(requests: list[tuple[str, bytes, dict[str, str]]], concurrency: int) -> None:
    import aiohttp

    pending = iter(requests)

    async def client(session: aiohttp.ClientSession) -> None:
        for url, body, headers in pending:
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                if answer.status not in (200, 202):
                    raise RuntimeError(f"{url}: {answer.status} {await answer.text()}")

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))


async def completions(
    stack: Any, counted: Counted, tree: Path, runs: int, concurrency: int
) -> dict[str, Any]:
    from nexus.core.signing import Signer

    filling = load("hotpaths_receiver_bench", tree / "benchmarks" / "receiver.py")
    dsn = stack.environment()["NEXUS__POSTGRES__DSN"]
    ids = await filling.fill(dsn, runs + WARMUP)
    signer = Signer((stack.credentials.signing_key,))
    body = b'{"cause": null, "message": null, "sasUri": null}'
    requests = [
        (
            f"{stack.receiver}/algorithm/v1.2/complete/echo/requests/{run_id}",
            body,
            {
                "Authorization": f"Bearer {signer.run_token('echo', str(run_id))}",
                "Content-Type": "application/json",
            },
        )
        for run_id in ids
    ]
    counted.zero()
    await posts(requests[:WARMUP], concurrency)
    busy, idle, seconds = await counted.window(lambda: posts(requests[WARMUP:], concurrency))
    return figure(busy, idle, seconds, runs)


async def submits(url: str, token: str, counted: Counted, runs: int, concurrency: int) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    requests = [
        (
            f"{url}/algorithm/v1.2/run/echo",
            json.dumps({"algorithmParameters": {"index": i, "text": "x" * 64}}).encode(),
            headers,
        )
        for i in range(runs + WARMUP)
    ]
    counted.zero()
    await posts(requests[:WARMUP], concurrency)
    busy, idle, seconds = await counted.window(lambda: posts(requests[WARMUP:], concurrency))
    return figure(busy, idle, seconds, runs)


async def bulk_submits(url: str, token: str, counted: Counted, runs: int, concurrency: int) -> Any:
    """``runs`` accepted by bulk submits of :data:`BULK` inline runs each (every item must
    be accepted)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    requests = [
        json.dumps(
            {"runs": [{"algorithmParameters": {"index": i * BULK + j, "text": "x" * 64}}
                      for j in range(BULK)]}
        ).encode()
        for i in range((runs + WARMUP) // BULK + 1)
    ]  # fmt: skip
    warm, measured = requests[:1], requests[1 : 1 + runs // BULK]

    async def send(bodies: list[bytes]) -> None:
        pending = iter(bodies)

        async def client(session: aiohttp.ClientSession) -> None:
            for body in pending:
                async with session.post(f"{url}/algorithm/v1.2/runs/echo", data=body,
                                        headers=headers) as answer:  # fmt: skip
                    items = (await answer.json())["runs"]
                    if answer.status != 200 or not all("requestId" in i for i in items):
                        raise RuntimeError(f"bulk submit: {answer.status} {items[:3]}")

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            await asyncio.gather(*(client(session) for _ in range(concurrency)))

    counted.zero()
    await send(warm)
    busy, idle, seconds = await counted.window(lambda: send(measured))
    return figure(busy, idle, seconds, len(measured) * BULK)


async def dispatches(stack: Any, counted: Counted, pod: str, tree: Path, runs: int) -> Any:
    filling = load("hotpaths_dispatch_bench", tree / "benchmarks" / "dispatch.py")
    dsn = stack.environment()["NEXUS__POSTGRES__DSN"]

    async def until(count: int) -> None:
        deadline = time.monotonic() + 1200
        while await filling.running_count(dsn) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} runs RUNNING after 1200 s")
            await asyncio.sleep(0.2)

    counted.zero()
    await filling.fill(stack, [pod], WARMUP)
    await until(WARMUP)
    os.kill(counted.pid, signal.SIGSTOP)
    try:
        await filling.fill(stack, [pod], runs)
    finally:
        os.kill(counted.pid, signal.SIGCONT)
    busy, idle, seconds = await counted.window(lambda: until(WARMUP + runs))
    return figure(busy, idle, seconds, runs)


def figure(busy: int, idle: int, seconds: float, runs: int) -> dict[str, Any]:
    return {
        "per_run": round((busy - idle) / runs),
        "window_per_run": round(busy / runs),
        "window": busy,
        "idle": idle,
        "seconds": round(seconds, 1),
    }


@contextlib.contextmanager
def patched_start(stack_module: ModuleType, counted: dict[str, Counted], library: Path,
                  directory: Path) -> Iterator[None]:  # fmt: skip
    """Every receiver started through the tree's dev stack runs under callgrind."""
    component_class = stack_module.ProcessComponent
    original = component_class.start

    def start(self: Any) -> Any:
        if self.name == "receiver" and "completion" in counted:
            counted["completion"] = under_callgrind(self, library, directory / "receiver.out")
        return original(self)

    component_class.start = start
    stack_module.READY_TIMEOUT = 900.0
    try:
        yield
    finally:
        component_class.start = original


def native_library(directory: Path) -> Path:
    """The two client requests as a shared library, for the wrapper to call by ctypes."""
    library = directory / "hotpaths.so"
    source = directory / "hotpaths.c"
    source.write_text(NATIVE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", library, source], check=True)
    return library


def keep_dumps(directory: Path) -> None:
    if keep := os.environ.get("HOTPATHS_KEEP"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        for dump in directory.glob("*.out*"):
            shutil.copy(dump, Path(keep) / dump.name)


async def measure_tree(
    tree: Path, directory: Path, paths: list[str], runs: int, concurrency: int
) -> Any:
    sys.path.insert(0, str(tree / "benchmarks"))
    stack_bench = load("hotpaths_stack_bench", tree / "benchmarks" / "stack.py")
    stack_module = sys.modules[stack_bench.NexusComponent.__module__]
    library = directory / "hotpaths.so"
    names = {f.name for f in dataclasses.fields(stack_bench.StackOptions)}
    settings = {
        "tls": False, "mode": "off", "maintainer": False, "create_rate": 100_000.0,
        "events": False, "log_format": "json", "pod_names": ("hotpaths-dispatch",),
        "defer_schedulers": True, "environment": {"NEXUS__LOG__LEVEL": "WARNING"},
    }  # fmt: skip
    options = stack_bench.StackOptions(**{k: v for k, v in settings.items() if k in names})
    results: dict[str, Any] = {}
    counted: dict[str, Counted] = {}
    if "completion" in paths:
        counted["completion"] = None  # type: ignore[assignment]  # filled in at start
    with (
        patched_start(stack_module, counted, library, directory),
        stack_bench.local_stack(options) as stack,
    ):
        if "completion" in paths:
            receiver = counted["completion"]
            results["completion"] = await completions(stack, receiver, tree, runs, concurrency)
            print(f"  completion: {results['completion']}", file=sys.stderr, flush=True)
            receiver.component.stop()
        (scheduler,) = [c for c in stack.nexus.components if c.name.startswith("scheduler")]
        if "dispatch" in paths:
            dispatcher = under_callgrind(scheduler, library, directory / "dispatch.out")
            scheduler.start()
            results["dispatch"] = await dispatches(
                stack, dispatcher, "hotpaths-dispatch", tree, runs
            )
            print(f"  dispatch: {results['dispatch']}", file=sys.stderr, flush=True)
            scheduler.stop()
        for path in ("submit", "bulk"):
            if path not in paths:
                continue
            port = free_port()
            env = {
                **scheduler.process.env,
                "NEXUS__HTTP__PORT": str(port),
                "NEXUS__SCHEDULER__POD_NAME": f"hotpaths-{path}",
                "NEXUS__SCHEDULER__PUBLIC_URL": f"http://127.0.0.1:{port}",
                "NEXUS__SHARDS__CREATE_RATE": json.dumps({"shard-0": 0.01}),
                "NEXUS__SCHEDULER__MAX_QUEUE_DEPTH": "10000000",
            }
            argv = [sys.executable, "-m", "nexus", "scheduler"]
            component = stack_module.ProcessComponent(
                f"scheduler-{path}", argv, env, port, stack.workdir
            )
            submitter = under_callgrind(component, library, directory / f"{path}.out")
            component.start()
            try:
                if path == "submit":
                    results[path] = await submits(
                        component.url, stack.token, submitter, runs, concurrency
                    )
                else:  # 4 requests in flight: batches as large as the benchmark's
                    results[path] = await bulk_submits(
                        component.url, stack.token, submitter, runs, min(concurrency, 4)
                    )
            finally:
                component.stop()
            print(f"  {path}: {results[path]}", file=sys.stderr, flush=True)
    return results


def worktree_of(revision: str) -> tuple[Path, bool]:
    """A worktree checked out at ``revision`` with a venv: an existing one, else a new one
    (second value True: remove it afterwards)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", f"{revision}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for block in listing.split("\n\n"):
        lines = dict(line.split(" ", 1) for line in block.splitlines() if " " in line)
        path = Path(lines.get("worktree", "/nonexistent"))
        if lines.get("HEAD") == commit and (path / ".venv" / "bin" / "python").exists():
            dirty = subprocess.run(
                ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True,
            ).stdout  # fmt: skip
            if not dirty.strip():
                return path, False
    path = Path(tempfile.mkdtemp(prefix="hotpaths-tree-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True
    )
    subprocess.run(["make", "-C", str(path), ".venv/.installed"], check=True)
    return path, True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", action="append", default=[], help="revision to compare")
    parser.add_argument("--runs", type=int, default=400, help="requests/Jobs per window")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument(
        "--profile", metavar="DIR", help="cProfile the windows natively into DIR instead"
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR/<tree>")
    parser.add_argument("--wrap", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wrap:
        wrap(args.wrap[0], args.wrap[1:])
        return 0
    if args.tree:
        directory = Path(tempfile.mkdtemp(prefix="hotpaths-"))
        try:
            native_library(directory)
            figures = asyncio.run(
                measure_tree(Path(args.tree), directory, args.paths, args.runs, args.concurrency)
            )
        finally:
            keep_dumps(directory)
            shutil.rmtree(directory, ignore_errors=True)
        print(json.dumps(figures))
        return 0
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    trees: dict[str, tuple[Path, bool]] = {}
    for revision in args.baseline:
        trees[revision] = worktree_of(revision)
    trees["this tree"] = (ROOT, False)
    results: dict[str, Any] = {"runs": args.runs, "concurrency": args.concurrency, "trees": {}}
    try:
        for name, (tree, _) in trees.items():
            print(f"{name} ({tree}):", flush=True)
            python = tree / ".venv" / "bin" / "python"
            command = [str(python), __file__, "--tree", str(tree), "--runs", str(args.runs),
                       "--concurrency", str(args.concurrency), "--paths", *args.paths]  # fmt: skip
            env = dict(os.environ)
            if args.keep:
                env["HOTPATHS_KEEP"] = str(Path(args.keep).resolve() / re.sub(r"\W+", "-", name))
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                label = re.sub(r"\W+", "-", name)
                env["HOTPATHS_PROFILE"] = str(Path(args.profile).resolve() / label)
            done = subprocess.run(
                command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, timeout=3600
            )
            if done.returncode != 0:
                raise SystemExit(f"{name}: the measurement failed (its log is above)")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            results["trees"][name] = figures
            for path in args.paths:
                unit = "function calls" if args.profile else "instructions"
                figure = figures[path]
                print(
                    f"  {path:10} {figure['per_run']:>12,} {unit} per run"
                    f" ({figure['window_per_run']:,} with the timers of"
                    f" {figure['seconds']} s counted in)"
                )
    finally:
        for tree, made in trees.values():
            if made:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)])
    print(json.dumps({"benchmark": "hotpaths", **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
