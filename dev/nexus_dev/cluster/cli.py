"""``nexus devcluster``: run local Kubernetes API emulators (shards) until told to stop.

Prints one line ``DEVCLUSTER READY {json}`` on stdout once every shard listens — shard
name → ``url``, ``kubeconfig``, ``namespace``, ``mode`` — so that a parent process (tests,
benchmarks, ``nexus dev``) can wait for it and read where to connect. Shards serve HTTPS
with a throwaway certificate authority that their kubeconfigs name, so ``kubectl
--kubeconfig <file>`` works as with a real cluster; ``--plain-http`` serves plain HTTP
(kubernetes-asyncio and Nexus accept it, kubectl does not send its token there). SIGTERM or SIGINT
stops every shard, kills every container process the shards started, and exits 0.

Options set every shard; ``--shard NAME:key=value;key=value`` overrides some of them for
one shard (keys: ``mode``, ``port``, ``namespace``, ``token``, ``mutating-rate``,
``mutating-burst``, ``mutating-inflight``, ``read-rate``, ``read-burst``,
``read-inflight``, ``duration``, ``faults``, ``events`` and ``tls`` (``true``/``false``)).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import uvloop

from nexus.core.config import LogSettings
from nexus.core.errors import ConfigError
from nexus.core.logs import configure as configure_logs
from nexus_dev.cluster.emulators import MODES, DevCluster, ShardSpec
from nexus_dev.cluster.fairness import Limits
from nexus_dev.cluster.heap import HeapPolicy, HeapSettings
from nexus_dev.cluster.jobcontroller import JobControllerSettings
from nexus_dev.cluster.kubelet import KubeletSettings
from nexus_dev.cluster.processes import ProcessSettings
from nexus_dev.cluster.simulation import SimulationSettings, parse_distribution, parse_faults
from nexus_dev.cluster.watchstreams import WatchSettings

_LIMIT_KEYS = {
    "mutating-rate": ("mutating_rate", float),
    "mutating-burst": ("mutating_burst", int),
    "mutating-inflight": ("mutating_inflight", int),
    "read-rate": ("read_rate", float),
    "read-burst": ("read_burst", int),
    "read-inflight": ("read_inflight", int),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus devcluster",
        description="Run local Kubernetes API emulators (one per shard) with a simulated "
        "kubelet, for development, tests and benchmarks. Prints 'DEVCLUSTER READY {json}' "
        "when listening; stops on SIGTERM/SIGINT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    group = parser.add_argument_group("shards")
    group.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="N",
        help="number of shards named shard-0 … shard-N-1 (ignored with --shard)",
    )
    group.add_argument(
        "--shard",
        action="append",
        default=[],
        metavar="NAME[:K=V;K=V]",
        help="a shard by name, with optional per-shard overrides (repeatable); "
        "keys: mode, port, namespace, token, mutating-rate, mutating-burst, "
        "mutating-inflight, read-rate, read-burst, read-inflight, duration, "
        "faults, events, tls (true/false)",
    )
    group.add_argument("--host", default="127.0.0.1", help="listen address of every shard")
    group.add_argument(
        "--port",
        type=int,
        default=0,
        help="port of the first shard, the next get port+1, …; 0 = free ports",
    )
    group.add_argument(
        "--kubeconfig-dir",
        type=Path,
        default=Path(".devcluster"),
        help="folder where <shard>.kubeconfig files are written",
    )
    group.add_argument("--namespace", default="nexus", help="namespace in the kubeconfigs")
    group.add_argument("--token", default=None, help="bearer token (default: random per shard)")
    group.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP instead of HTTPS with a throwaway certificate authority "
        "(kubectl sends no token over plain HTTP; for measurements without TLS)",
    )
    group = parser.add_argument_group("API Priority and Fairness (unset = unlimited)")
    group.add_argument("--mutating-rate", type=float, help="mutating requests per second")
    group.add_argument("--mutating-burst", type=int, help="mutating burst (default: 1 s worth)")
    group.add_argument("--mutating-inflight", type=int, help="mutating requests in flight")
    group.add_argument("--read-rate", type=float, help="get/list requests per second")
    group.add_argument("--read-burst", type=int, help="read burst (default: 1 s worth)")
    group.add_argument("--read-inflight", type=int, help="get/list requests in flight")
    group = parser.add_argument_group("kubelet")
    group.add_argument(
        "--mode",
        choices=MODES,
        default="simulated",
        help="simulated: pods play the algorithm contract; process: pods run "
        "their command locally; off: no kubelet, pods stay Pending",
    )
    group.add_argument(
        "--duration",
        default="fixed:0.05",
        help="simulated run time: fixed:S, uniform:A,B or exponential:MEAN",
    )
    group.add_argument(
        "--faults",
        default="",
        help="simulated fault mix, e.g. oom=0.01,image-pull=0.01,exit=0.01,silent=0.01,hang=0.01",
    )
    group.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="simulated pods' concurrent HTTP calls (worker tasks)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds before a simulated pod's HTTP call fails (and is retried)",
    )
    group.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        help="seconds a simulated pod keeps retrying a call that failed in a way that may "
        "pass (no answer, 408, 425, 429, 5xx), honouring Retry-After",
    )
    group.add_argument(
        "--start-delay",
        type=float,
        default=0.0,
        help="seconds from pod creation to a running container",
    )
    group.add_argument(
        "--relist-interval",
        type=float,
        default=1.0,
        help="seconds between the kubelet's looks at its containers, when a started one is "
        "reported Running (one that ends before is never reported Running); 0: at once",
    )
    group.add_argument(
        "--image-pull-backoff",
        type=float,
        default=10.0,
        help="first image-pull back-off in seconds (doubles, max 300)",
    )
    group.add_argument(
        "--log-limit", type=int, default=1024 * 1024, help="bytes of container output kept per pod"
    )
    group.add_argument(
        "--memory-poll-interval",
        type=float,
        default=0.1,
        help="seconds between memory-limit checks of process containers",
    )
    group.add_argument(
        "--retry-backoff",
        type=float,
        default=10.0,
        help="seconds before a failed pod is replaced (doubles per failure)",
    )
    group.add_argument(
        "--retry-backoff-max",
        type=float,
        default=360.0,
        help="longest delay before a failed pod is replaced",
    )
    group = parser.add_argument_group("state and watches")
    group.add_argument(
        "--history-size",
        type=int,
        default=10_000,
        help="changes kept per resource for watch resumption (older: 410)",
    )
    group.add_argument(
        "--event-ttl",
        type=float,
        default=3600.0,
        help="seconds an Event lives after its last update",
    )
    group.add_argument("--max-events", type=int, default=100_000, help="Events kept at most")
    group.add_argument("--no-events", action="store_true", help="write no Events at all")
    group.add_argument(
        "--bookmark-interval",
        type=float,
        default=60.0,
        help="seconds between BOOKMARK events on watches that allow them",
    )
    group.add_argument(
        "--watch-buffer",
        type=int,
        default=64 * 1024 * 1024,
        help="bytes a slow watcher may lag before it is dropped",
    )
    group.add_argument(
        "--watch-coalesce",
        type=float,
        default=0.025,
        help="seconds a watch waits after a change for more before writing (0: at once)",
    )
    group = parser.add_argument_group("process")
    group.add_argument(
        "--gc-interval",
        type=float,
        default=300.0,
        help="seconds between full garbage collections, the only ones the process makes "
        "(0: Python's default collector)",
    )
    group = parser.add_argument_group("logging")
    add(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="INFO",
        help="log level (logs go to stderr)",
    )
    add("--log-format", choices=("json", "text"), default="text", help="log format")
    return parser


def shard_specs(args: argparse.Namespace) -> list[ShardSpec]:
    """The shards the arguments describe; ``ConfigError`` naming a bad option."""
    try:
        parse_distribution(args.duration)
        parse_faults(args.faults)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    limits = Limits(**{field: getattr(args, field) for field, _ in _LIMIT_KEYS.values()})
    base = ShardSpec(
        mode=args.mode,
        host=args.host,
        namespace=args.namespace,
        token=args.token,
        tls=not args.plain_http,
        limits=limits,
        simulation=SimulationSettings(
            args.duration,
            args.faults,
            args.concurrency,
            args.request_timeout,
            retry_for=args.retry_for,
        ),
        processes=ProcessSettings(args.memory_poll_interval),
        kubelet=KubeletSettings(
            args.start_delay, args.image_pull_backoff, args.log_limit, args.relist_interval
        ),
        jobs=JobControllerSettings(args.retry_backoff, args.retry_backoff_max),
        watch=WatchSettings(
            bookmark_interval=args.bookmark_interval,
            buffer_budget=args.watch_buffer,
            coalesce=args.watch_coalesce,
        ),
        history_size=args.history_size,
        event_ttl=args.event_ttl,
        max_events=args.max_events,
        events=not args.no_events,
    )
    entries = args.shard or [f"shard-{i}" for i in range(args.shards)]
    specs = []
    for index, entry in enumerate(entries):
        name, _, overrides = entry.partition(":")
        port = args.port + index if args.port else 0
        spec = dataclasses.replace(base, name=name, port=port)
        specs.append(_override(spec, overrides))
    return specs


def _override(spec: ShardSpec, text: str) -> ShardSpec:
    changes: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    simulation: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, value = part.partition("=")
        try:
            if key in _LIMIT_KEYS:
                field, kind = _LIMIT_KEYS[key]
                limits[field] = kind(value)
            elif key == "mode":
                if value not in MODES:
                    raise ValueError(f"mode must be one of {', '.join(MODES)}")
                changes["mode"] = value
            elif key == "port":
                changes["port"] = int(value)
            elif key in ("namespace", "token"):
                changes[key] = value
            elif key == "duration":
                parse_distribution(value)
                simulation["duration"] = value
            elif key == "faults":
                parse_faults(value)
                simulation["faults"] = value
            elif key in ("events", "tls"):
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"{key} must be true or false")
                changes[key] = value.lower() == "true"
            else:
                raise ValueError("unknown key")
        except ValueError as exc:
            raise ConfigError(f"--shard {spec.name}: {key}={value}: {exc}") from exc
    if limits:
        changes["limits"] = dataclasses.replace(spec.limits, **limits)
    if simulation:
        changes["simulation"] = dataclasses.replace(spec.simulation, **simulation)
    return dataclasses.replace(spec, **changes)


async def run(
    specs: list[ShardSpec], kubeconfig_dir: Path, heap: HeapSettings | None = None
) -> int:
    stop = asyncio.Event()
    policy = HeapPolicy(heap or HeapSettings())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with DevCluster(specs, kubeconfig_dir) as cluster:
            line = b"DEVCLUSTER READY " + orjson.dumps(cluster.describe())
            sys.stdout.write(line.decode() + "\n")
            sys.stdout.flush()
            policy.start()
            await stop.wait()
    finally:
        policy.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    specs = shard_specs(args)
    configure_logs(LogSettings(level=args.log_level, format=args.log_format), "devcluster")
    heap = HeapSettings(full_interval=args.gc_interval)
    return uvloop.run(run(specs, args.kubeconfig_dir, heap))
