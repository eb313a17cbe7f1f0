"""The Nexus processes of a local system, and the example algorithms they serve.

``nexus dev`` and the benchmarks compose a local system from *components* started in order
and stopped in reverse (see :mod:`nexus_dev.cli`). This module has the components beyond the
real servers: the local clusters (``nexus devcluster``), the receiver, the scheduler(s) and
the maintainer, each a child process of its own — as in production, so that a benchmark
measures each one's CPU and a test can kill one — plus the example catalog (a workgroup per
shard, the ``echo`` and ``maybe-fail`` algorithms, and the ConfigMap their containers read
their environment from; :mod:`nexus_dev.catalog`) installed in the controller cluster, which
is the first shard. The
maintainer runs the configuration controller, so the other shards get copies of it.

Every component starts only when the previous ones are ready and is ready itself only when
its ``/health/ready`` (or the cluster's READY line) says so. Each process logs to a file
in the working directory; the READY line names them.

Each process can also be started again after it died (:class:`nexus_dev.restarts.Restartable`),
as the same pod would be: with the same command line and environment — ports, a
scheduler's pod name — and for the local clusters the same ports and tokens, so that the
kubeconfigs the Nexus processes read stay true; a local cluster keeps its objects in
memory, so it comes back empty and the example catalog is installed again. (In
``process`` mode the algorithm processes a killed cluster had started run in sessions of
their own and are not its children any more: they run to their end, and their
completions count, but nothing stops one that does not end.)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from nexus_dev import replicas
from nexus_dev.catalog import EXAMPLES, install_examples
from nexus_dev.servers.supervision import LocalServiceError, ServerProcess, free_ports
from nexus_dev.status import ServiceDetails

READY_TIMEOUT = 60.0
CLUSTER_LOST_ON_RESTART = (
    "the local cluster keeps its objects in memory, so it came back empty: the example "
    "catalog is installed again; the Jobs and pods it held are gone, and the maintainer "
    "settles their runs (FAILED, job lost) unless their completion had arrived"
)


@dataclass(frozen=True)
class StackOptions:
    """The shape of a local system."""

    shards: int = 1
    mode: str = "process"
    """How pods run: ``process`` (their command, locally), ``simulated`` or ``off``."""
    schedulers: int = 1
    receivers: int = 1
    """Receiver processes, sharing one port (:mod:`nexus_dev.replicas`) when more than one."""
    maintainer: bool = True
    duration: str = "fixed:0.05"
    """Simulated run time (``fixed:S``, ``uniform:A,B``, ``exponential:MEAN``)."""
    faults: str = ""
    """Simulated fault mix, e.g. ``oom=0.01,image-pull=0.01``."""
    create_rate: float = 500.0
    """Job creations per second the schedulers allow themselves per shard."""
    shard_rate: float | None = None
    """Mutating requests per second each local API server accepts (unset: unlimited)."""
    events: bool = True
    tls: bool = True
    """Whether the local clusters serve HTTPS (with a throwaway certificate authority their
    kubeconfigs name, so that kubectl works) or plain HTTP."""
    port: int = 0
    """First scheduler's port (0: a free one)."""
    host: str = "127.0.0.1"
    """Listen address of the scheduler(s) and the receiver (``0.0.0.0`` in a container)."""
    log_format: str = "text"
    inline_inputs: bool = True
    """Whether the example algorithms keep inputs with the checkpoint or in S3."""
    environment: Mapping[str, str] = field(default_factory=dict)
    """Extra ``NEXUS__…`` settings for every Nexus process."""
    pod_names: tuple[str, ...] = ()
    """Names of the scheduler pods (default: ``scheduler-<i>-<random>``)."""
    defer_schedulers: bool = False
    """Start the schedulers only on :meth:`NexusComponent.start_schedulers` (benchmarks fill
    their queues first)."""


class ProcessComponent:
    """A Nexus service as a child process, ready when its ``/health/ready`` answers 200."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        workdir: Path,
        *,
        shared_port: bool = False,
    ) -> None:
        self.name = name
        self.port = port
        self.shared_port = shared_port
        """Replicas share ``port``: ready when *this* process listens (a probe through
        the port may reach another), and replaced one at a time by :meth:`replace`."""
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "logs" / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(name, argv, log_path=self.log_path, cwd=workdir, env=env)
        self.pod_name = env.get("NEXUS__SCHEDULER__POD_NAME")
        self.lost_on_restart: str | None = None

    def start(self) -> dict[str, Any]:
        self.process.start()
        if self.shared_port:
            replicas.wait_listening(self.process, self.port, READY_TIMEOUT)
            return {}
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.exited() is not None:
                raise LocalServiceError(
                    f"{self.name} exited during start-up:\n{self.process.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return {}
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise LocalServiceError(f"{self.name} was not ready in {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        self.process.stop(timeout=30)

    def restart(self) -> None:
        self.start()

    @property
    def replaceable(self) -> bool:
        return self.shared_port

    def replace(self) -> None:
        """A new process beside this one, then the old one stopped gracefully."""
        replicas.replace(self, READY_TIMEOUT)

    def kill(self) -> None:
        self.process.kill()

    def exit_status(self) -> int | None:
        return self.process.exited()

    def details(self) -> ServiceDetails:
        details: ServiceDetails = {"log": str(self.log_path), "url": self.url}
        if self.pod_name is not None:
            details["pod"] = self.pod_name
        return details

    @property
    def pid(self) -> int | None:
        return self.process.pid


class ClusterComponent:
    """The local clusters (``nexus devcluster``), one API server per shard, plus the example
    catalog in the first (which is also the controller cluster)."""

    name = "devcluster"
    lost_on_restart = CLUSTER_LOST_ON_RESTART

    def __init__(self, options: StackOptions, workdir: Path) -> None:
        self.options = options
        self.kubeconfig_dir = workdir / "shards"
        self.log_path = workdir / "logs" / "devcluster.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "nexus", "devcluster",
            "--mode", options.mode,
            "--kubeconfig-dir", str(self.kubeconfig_dir),
            "--duration", options.duration,
            "--log-format", options.log_format,
        ]  # fmt: skip
        if options.faults:
            argv += ["--faults", options.faults]
        if options.shard_rate is not None:
            argv += ["--mutating-rate", str(options.shard_rate)]
        if not options.events:
            argv.append("--no-events")
        if not options.tls:
            argv.append("--plain-http")
        self._argv = argv
        env = {**_python_environment(), "NEXUS__LOG__FORMAT": options.log_format}
        self.process = ServerProcess(
            self.name,
            [*argv, "--shards", str(options.shards)],
            log_path=self.log_path,
            cwd=workdir,
            env=env,
        )
        self.shards: dict[str, dict[str, Any]] = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> dict[str, Any]:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.exited() is not None:
                raise LocalServiceError(f"devcluster exited:\n{self.process.log_tail()}")
            with open(self.log_path, "rb") as log_file:  # this start's lines only
                log_file.seek(offset)
                lines = log_file.read().decode(errors="replace").splitlines()
            for line in lines:
                if line.startswith("DEVCLUSTER READY "):
                    self.shards = json.loads(line.removeprefix("DEVCLUSTER READY "))
                    self._install_examples()
                    return {"shards": self.shards}
            time.sleep(0.05)
        raise LocalServiceError(f"devcluster was not ready in {READY_TIMEOUT:.0f} s")

    def _install_examples(self) -> None:
        names = sorted(self.shards)
        install_examples(self.shards[names[0]], names, inline=self.options.inline_inputs)

    def stop(self) -> None:
        self.process.stop(timeout=15)

    def restart(self) -> None:
        """Start again on the ports and with the tokens of the first start, which the
        kubeconfigs name, and install the example catalog again."""
        argv = list(self._argv)
        for name, shard in sorted(self.shards.items()):
            port = urlsplit(shard["url"]).port
            config = yaml.safe_load(Path(shard["kubeconfig"]).read_text())
            token = config["users"][0]["user"]["token"]
            argv += ["--shard", f"{name}:port={port};token={token}"]
        self.process.argv = argv
        self.start()

    def kill(self) -> None:
        self.process.kill()

    def exit_status(self) -> int | None:
        return self.process.exited()

    def details(self) -> ServiceDetails:
        return {"log": str(self.log_path)}

    def processes(self) -> Sequence[ClusterComponent]:
        return [self]


def _python_environment() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k in keep}


@dataclass
class Credentials:
    """A bearer token for people and scripts, and the key that signs run tokens."""

    token: str = field(default_factory=lambda: "dev-" + secrets.token_urlsafe(24))
    signing_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def environment(self) -> dict[str, str]:
        tokens = [
            {"caller": "developer", "sha256": hashlib.sha256(self.token.encode()).hexdigest()}
        ]
        return {
            "NEXUS__AUTH__SERVICE_TOKENS": json.dumps(tokens),
            "NEXUS__SIGNING__KEYS": json.dumps([self.signing_key]),
        }


def nexus_components(
    options: StackOptions,
    workdir: Path,
    servers: Mapping[str, str],
    cluster: ClusterComponent,
    credentials: Credentials,
) -> list[ProcessComponent]:
    """The receiver, the scheduler(s) and the maintainer, configured for ``servers`` (the
    ``NEXUS__…`` settings of PostgreSQL, Redis and S3) and ``cluster``'s shards."""
    count = options.schedulers + 2
    ports = free_ports(count)
    if options.port:
        ports[1] = options.port
    receiver_port, scheduler_ports, maintainer_port = (
        ports[0],
        ports[1 : 1 + options.schedulers],
        ports[-1],
    )
    shard_names = [f"shard-{i}" for i in range(options.shards)]
    common = {
        **_python_environment(),
        **servers,
        **credentials.environment(),
        "NEXUS__STORAGE__BUCKET": "nexus",
        "NEXUS__LOG__FORMAT": options.log_format,
        "NEXUS__HTTP__HOST": options.host,
        "NEXUS__HTTP__DRAIN_DELAY": "0",
        "NEXUS__SHARDS__KUBECONFIG_DIR": str(cluster.kubeconfig_dir),
        "NEXUS__SHARDS__CONTROLLER_KUBECONFIG": str(
            cluster.kubeconfig_dir / f"{shard_names[0]}.kubeconfig"
        ),
        "NEXUS__SHARDS__CREATE_RATE": json.dumps({s: options.create_rate for s in shard_names}),
        "NEXUS__SCHEDULER__RECEIVER_URL": f"http://127.0.0.1:{receiver_port}",
        # settings given to `nexus dev` itself reach every Nexus process
        **{k: v for k, v in os.environ.items() if k.startswith("NEXUS__")},
        **options.environment,
    }
    nexus = [sys.executable, "-m", "nexus"]
    shared = options.receivers > 1  # behind one address, as a Service spreads over pods
    receiver_env = {**common, "NEXUS__HTTP__PORT": str(receiver_port)}
    if shared:
        receiver_env["NEXUS__HTTP__REUSE_PORT"] = "true"
    components = [
        ProcessComponent(
            f"receiver-{index}" if shared else "receiver",
            [*nexus, "receiver"],
            receiver_env,
            receiver_port,
            workdir,
            shared_port=shared,
        )
        for index in range(options.receivers)
    ]
    for index, port in enumerate(scheduler_ports):
        env = {
            **common,
            "NEXUS__HTTP__PORT": str(port),
            "NEXUS__SCHEDULER__POD_NAME": (
                options.pod_names[index]
                if index < len(options.pod_names)
                else f"scheduler-{index}-{secrets.token_hex(3)}"
            ),
            "NEXUS__SCHEDULER__PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        components.append(
            ProcessComponent(f"scheduler-{index}", [*nexus, "scheduler"], env, port, workdir)
        )
    if options.maintainer:
        # the configuration controller: the other shards get copies of the example catalog
        env = {
            "NEXUS__REPLICATION__ENABLED": "true",
            **common,
            "NEXUS__HTTP__PORT": str(maintainer_port),
        }
        components.append(
            ProcessComponent("maintainer", [*nexus, "maintainer"], env, maintainer_port, workdir)
        )
    return components


class NexusComponent:
    """The receiver, scheduler(s) and maintainer, started in that order once the servers
    (whose settings they need) are up."""

    name = "nexus"

    def __init__(
        self,
        options: StackOptions,
        workdir: Path,
        servers: Callable[[], Mapping[str, str]],
        cluster: ClusterComponent,
        credentials: Credentials,
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.servers = servers
        self.cluster = cluster
        self.credentials = credentials
        self.components: list[ProcessComponent] = []

    def start(self) -> dict[str, Any]:
        servers = {k: v for k, v in self.servers().items() if k.startswith("NEXUS__")}
        self.components = nexus_components(
            self.options, self.workdir, servers, self.cluster, self.credentials
        )
        for component in self.components:
            if not (self.options.defer_schedulers and component.name.startswith("scheduler")):
                component.start()
        return describe(self.components, self.credentials)

    def start_schedulers(self) -> None:
        """Start schedulers deferred by :attr:`StackOptions.defer_schedulers`."""
        for component in self.components:
            if component.name.startswith("scheduler") and component.pid is None:
                component.start()

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def processes(self) -> Sequence[ProcessComponent]:
        return self.components


def describe(components: list[ProcessComponent], credentials: Credentials) -> dict[str, Any]:
    """What the READY line tells about the Nexus processes."""
    schedulers = [c.url for c in components if c.name.startswith("scheduler")]
    receivers = [c.name for c in components if c.name.startswith("receiver")]
    found = {c.name: c for c in components}
    return {
        "scheduler": schedulers[0] if schedulers else None,
        "schedulers": schedulers,
        "receiver": found[receivers[0]].url if receivers else None,
        "receivers": receivers,
        "maintainer": found["maintainer"].url if "maintainer" in found else None,
        "token": credentials.token,
        "algorithms": list(EXAMPLES),
        "logs": {c.name: str(c.log_path) for c in components},
    }
