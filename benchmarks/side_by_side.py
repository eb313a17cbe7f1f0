"""Nexus end to end beside Dramatiq, Celery (prefork) and ARQ, in one invocation.

    .venv/bin/python benchmarks/side_by_side.py [--loads 400,800] [--seconds 30]
        [--flat-tasks 10000] [--connections 32] [--budget 30] [--only nexus,dramatiq,...]

Each peer runs no-op tasks with Redis (a throwaway server per run) as broker and result
store, from its own virtual environment, which this script makes on first use from the
package registry (pinned below, cached in ``benchmarks/.venvs/``, which git ignores; one
more holds matplotlib for the plots). Nexus runs end to end as ``end_to_end.py`` runs it:
every service, PostgreSQL, Redis, SeaweedFS and the local cluster with simulated pods,
each a process on this machine, every result read back through the API.

Rounds, each system once per round, in an order that rotates from round to round, so a
noisy minute of a shared machine falls on every system in turn:

1. flat out: every system sent ``--flat-tasks`` as fast as its client gets them accepted
   (each peer's client sends them one after another; Nexus's load generator on
   ``--connections`` keep-alive connections, each sending its next run when its last is
   answered, as a client with a pool of connections does); then Nexus flat out with its
   runs submitted 100 per request (bulk submit), and with results in S3 instead of inline
   (``NEXUS__SCHEDULER__RESULT_INLINE_LIMIT=0``);
2. the same offered load for all, for ``--seconds`` each: half of Nexus' flat-out rate
   (the latency target is read there; Nexus with results in S3 too), then each of
   ``--loads``.

Completed per second is, for every system, what it completed (and the client read) from
the first submission to the last result read.

Bounded: every run has a timeout, and once ``--budget`` minutes have passed no new run
starts (those left are listed as skipped). Writes ``benchmarks/results/side_by_side.json``
(with the date, the machine and ``python -m timeit "sum(range(10**6))"`` before and
after) and three plots beside it (``plot_side_by_side.py``): completed per second and CPU
per run against offered load, and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
VENVS = HERE / ".venvs"
RESULTS = HERE / "results"
PEERS: dict[str, list[str]] = {
    "dramatiq": ["dramatiq[redis]==2.2.1"],
    "celery": ["celery[redis]==5.6.3"],
    "arq": ["arq==0.28.0"],
}
PLOTS = ["matplotlib==3.10.9"]
INLINE_OFF = "NEXUS__SCHEDULER__RESULT_INLINE_LIMIT=0"
BULK = 100
"""Runs per request of the bulk-submit variant (the peers' clients send one at a time)."""
NEXUS_OWN = ("scheduler", "receiver", "maintainer", "postgres", "redis")
"""Nexus' own processes: the CPU the targets count (the emulator and S3 apart)."""


def venv(name: str, requirements: list[str]) -> Path:
    """The Python of ``benchmarks/.venvs/<name>``, made with ``requirements`` if it is not
    there yet (or was made with others)."""
    home = VENVS / name
    python = home / "bin" / "python"
    stamp = home / "requirements.txt"
    wanted = "\n".join(requirements)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"making the virtual environment {home} ({', '.join(requirements)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    stamp.write_text(wanted)
    return python


def timeit() -> float:
    """Milliseconds of ``python -m timeit "sum(range(10**6))"`` (best of 5): the machine's
    speed at that moment."""
    out = subprocess.run(
        [sys.executable, "-m", "timeit", "-n", "10", "sum(range(10**6))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    value, unit = out.split("best of 5: ")[1].split()[:2]
    return float(value) * {"msec": 1.0, "usec": 0.001, "sec": 1000.0}[unit]


def _last_json(out: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError(f"no JSON line in: {out[-500:]}")


def _run(command: list[str], timeout: float) -> dict[str, Any]:
    """Run a benchmark in its own process group (a timeout ends its workers too)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    if process.returncode != 0:
        return {"error": f"exit {process.returncode}: {err.strip()[-400:]}"}
    return _last_json(out)


def nexus(
    rate: float | None, seconds: float, settings: list[str], bulk: int, flat: tuple[int, int]
) -> dict[str, Any]:
    """Nexus end to end at ``rate`` runs/s for ``seconds``, or (``rate`` None) flat out:
    ``flat`` = (runs, connections)."""
    load = ["--rate", str(rate), "--seconds", str(seconds)] if rate else []
    if rate is None:
        load = ["--runs", str(flat[0]), "--connections", str(flat[1])]
    command = [
        sys.executable, str(HERE / "end_to_end.py"), *load, "--drain", "60", "--bulk", str(bulk),
    ]  # fmt: skip
    for setting in settings:
        command += ["--setting", setting]
    found = _run(command, timeout=seconds + 180)
    if "error" in found:
        return found
    cpu = found["cpu_us_per_run"]
    own = sum(v for k, v in cpu.items() if k.startswith(NEXUS_OWN))
    finished = found["finished"].get("COMPLETED", 0)
    # as for the peers: runs completed (and read) from the first submission to the last
    # result seen, so a flat-out run counts its backlog's drain too
    finished_after = max(1e-9, found["all_finished_after_seconds"])
    return {
        "completed_per_second": round(finished / finished_after, 1),
        "completed_per_second_steady": found["completed_per_second_steady"],
        "completed": finished,
        "unfinished": found["unfinished"],
        "results_read": found["results_read"],
        "latency_ms": found["latency_ms"],
        "cpu_us_per_run": cpu,
        "cpu_us_per_run_nexus": round(own, 1),
        "cpu_us_per_run_emulator": cpu.get("devcluster", 0.0),
        "cpu_us_per_run_total": round(sum(cpu.values()), 1),
        "submit": found["submit"],
    }


def peer(name: str, python: Path, tasks: int, rate: float | None, limit: float) -> dict[str, Any]:
    """One peer's run; one that falls behind is cut off after ``limit`` seconds."""
    from nexus_dev.servers.databases import LocalRedis

    with tempfile.TemporaryDirectory(prefix="nexus-peer-") as directory:
        redis = LocalRedis(Path(directory))
        info = redis.start()
        try:
            command = [
                str(python), str(HERE / "peers.py"), name, "--redis", info.url,
                "--redis-pid", str(redis.pid), "--tasks", str(tasks),
            ]  # fmt: skip
            if rate is not None:
                command += ["--rate", str(rate)]
            command += ["--limit", str(limit)]
            return _run(command, timeout=limit + 120)
        finally:
            redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loads", default="400,800", help="offered loads, runs/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run")
    parser.add_argument("--flat-tasks", type=int, default=10_000, help="runs sent flat out")
    parser.add_argument(
        "--connections", type=int, default=32, help="Nexus's client connections flat out"
    )
    parser.add_argument("--budget", type=float, default=30.0, help="minutes, then no new run")
    parser.add_argument("--only", default="nexus,dramatiq,celery,arq")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    systems = args.only.split(",")
    pythons = {name: venv(name, PEERS[name]) for name in systems if name in PEERS}
    plotter = venv("plots", PLOTS)
    began = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": _processor(),
            "python": platform.python_version(),
        },
        "timeit_ms_before": timeit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "peers": {name: PEERS[name] for name in pythons},
        "runs": [],
    }
    rotation = 0

    def one(system: str, offered: float | None, variant: str = "") -> dict[str, Any]:
        label = f"{system}{variant} at {offered or 'flat out'}"
        if time.monotonic() - began > args.budget * 60:
            print(f"skipped (over budget): {label}", flush=True)
            return {"system": system + variant, "offered_per_second": offered, "skipped": True}
        print(f"running {label} ...", flush=True)
        if system == "nexus":
            settings = [INLINE_OFF] if variant == "-s3" else []
            flat = (args.flat_tasks, args.connections)
            bulk = BULK if variant == "-bulk" else 1
            found = nexus(offered, args.seconds, settings, bulk, flat)
        else:
            tasks = int(offered * args.seconds) if offered else args.flat_tasks
            limit = 2 * args.seconds  # a peer that falls behind is cut off there
            found = peer(system, pythons[system], tasks, offered, limit)
        found.update(system=system + variant, offered_per_second=offered, timeit_ms=timeit())
        report["runs"].append(found)
        print(f"  {json.dumps(_brief(found))}", flush=True)
        return found

    def round_of(offered: float | None) -> dict[str, dict[str, Any]]:
        nonlocal rotation
        order = systems[rotation % len(systems) :] + systems[: rotation % len(systems)]
        rotation += 1
        return {system: one(system, offered) for system in order}

    capacity = 400.0
    flat = round_of(None)
    capacity = flat.get("nexus", {}).get("completed_per_second") or capacity
    half = round(capacity / 2 / 10) * 10 or 10
    report["nexus_half_capacity"] = half
    if "nexus" in systems:
        one("nexus", None, "-bulk")
        one("nexus", None, "-s3")
    round_of(half)
    if "nexus" in systems:
        one("nexus", half, "-s3")
    for offered in sorted({float(x) for x in args.loads.split(",") if x} - {half}):
        round_of(offered)
    report["timeit_ms_after"] = timeit()
    report["minutes"] = round((time.monotonic() - began) / 60, 1)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "side_by_side.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    subprocess.run(
        [str(plotter), str(HERE / "plot_side_by_side.py"), str(path), str(args.output)],
        check=True,
    )
    print(f"wrote {path} and its plots in {report['minutes']} min")
    return 0


def _brief(found: dict[str, Any]) -> dict[str, Any]:
    keys = ("completed_per_second", "latency_ms", "cpu_us_per_run_total",
            "cpu_us_per_run_nexus", "cpu_us_per_run_emulator", "error")  # fmt: skip
    return {k: found[k] for k in keys if k in found}


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
