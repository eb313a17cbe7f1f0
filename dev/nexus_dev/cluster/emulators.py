"""Shards: emulated clusters, each on its own port with its own kubeconfig and state.

A :class:`DevCluster` runs one or more shards in the current event loop — from tests,
from ``nexus dev`` and from the ``nexus devcluster`` command::

    async with DevCluster([ShardSpec(name="shard-a"), ShardSpec(name="shard-b",
                          mode="process")], kubeconfig_dir=tmp_path) as cluster:
        cluster["shard-a"].url, cluster["shard-a"].kubeconfig
        cluster["shard-a"].inject_fault("my-job", "oom")

Each shard writes ``<kubeconfig_dir>/<name>.kubeconfig`` (server
``https://127.0.0.1:<port>`` with the certificate authority that signed its certificate, a
bearer token, the namespace), exactly what Nexus's shard client — and ``kubectl`` — load
for a real cluster (DESIGN §6). The authority is a throwaway one, shared by the shards of
one :class:`DevCluster` and kept beside the kubeconfigs, so that a cluster started again
there is trusted as before (:mod:`.certificates`); ``ShardSpec(tls=False)`` serves plain
``http://`` instead, which kubernetes-asyncio accepts and kubectl does not (it sends no
bearer token there). Shards share nothing else but the process: each has its own store,
version counter, limits, kubelet mode and metrics registry.

Stopping a shard closes its watches, stops its listener, kills every container process it
started and cancels its timers, so leaving the ``async with`` leaves nothing behind. A
stopped shard can be started again: it listens on the same port, with the objects it held
(a cluster whose API server was down for a while, for outage tests).
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from prometheus_client import CollectorRegistry

from nexus.core.httpserver import HttpServer
from nexus_dev.cluster.apiserver import ApiServer
from nexus_dev.cluster.certificates import LocalAuthority
from nexus_dev.cluster.deletion import GarbageCollector
from nexus_dev.cluster.discovery import RESOURCES
from nexus_dev.cluster.events import EventRecorder
from nexus_dev.cluster.fairness import Fairness, Limits, gauge_collector
from nexus_dev.cluster.jobcontroller import JobController, JobControllerSettings
from nexus_dev.cluster.kubelet import Kubelet, KubeletSettings, Runtime
from nexus_dev.cluster.processes import ProcessRuntime, ProcessSettings
from nexus_dev.cluster.simulation import FAULTS, SimulatedRuntime, SimulationSettings
from nexus_dev.cluster.store import ObjectStore
from nexus_dev.cluster.watchstreams import WatchSettings

log = logging.getLogger(__name__)

Mode = Literal["simulated", "process", "off"]
MODES: tuple[Mode, ...] = ("simulated", "process", "off")


@dataclass(frozen=True)
class ShardSpec:
    """Everything that makes one shard: where it listens, how it limits, how pods run."""

    name: str = "shard-0"
    mode: Mode = "simulated"
    """``simulated``: pods play the algorithm contract; ``process``: pods run their command
    locally; ``off``: no kubelet, pods stay Pending (pure API server)."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port."""
    namespace: str = "nexus"
    """Namespace written into the kubeconfig (every namespace exists)."""
    token: str | None = None
    """Bearer token clients must send; random when unset."""
    tls: bool = True
    """Serve HTTPS with a certificate of the cluster's throwaway authority, which the
    kubeconfig names (what kubectl needs to send the token); ``False`` serves plain HTTP."""
    limits: Limits = field(default_factory=Limits)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    processes: ProcessSettings = field(default_factory=ProcessSettings)
    kubelet: KubeletSettings = field(default_factory=KubeletSettings)
    jobs: JobControllerSettings = field(default_factory=JobControllerSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    history_size: int = 10_000
    """Changes kept per resource for watches that resume; older versions get 410."""
    event_ttl: float = 3600.0
    """Seconds an Event lives after its last update (the API server's ``--event-ttl``)."""
    max_events: int = 100_000
    """Events kept at most; the oldest are deleted first beyond it."""
    events: bool = True
    """Whether controllers and kubelet write Events at all."""


class Shard:
    """One running emulated cluster."""

    def __init__(
        self, spec: ShardSpec, kubeconfig_dir: Path, authority: LocalAuthority | None = None
    ) -> None:
        if spec.mode not in MODES:
            raise ValueError(f"shard {spec.name}: mode must be one of {', '.join(MODES)}")
        if spec.tls and authority is None:
            raise ValueError(f"shard {spec.name}: serving HTTPS needs a certificate authority")
        self.spec = spec
        self.name = spec.name
        self.authority = authority if spec.tls else None
        self.token = spec.token or secrets.token_urlsafe(24)
        self.kubeconfig = kubeconfig_dir / f"{spec.name}.kubeconfig"
        self.registry = CollectorRegistry()
        self.store = ObjectStore(list(RESOURCES), spec.history_size)
        self.recorder = EventRecorder(self.store, ttl=spec.event_ttl, max_events=spec.max_events)
        self.recorder.enabled = spec.events
        self.kubelet = Kubelet(self.store, self.recorder, spec.kubelet)
        self.collector = GarbageCollector(self.store, self.kubelet.terminate)
        self.controller = JobController(
            self.store, self.recorder, self.kubelet, self.collector, spec.jobs
        )
        self.fairness = Fairness(spec.limits, self.registry)
        self.registry.register(gauge_collector(self._gauges))
        self.simulated: SimulatedRuntime | None = None
        runtime: Runtime | None = None
        if spec.mode == "simulated":
            runtime = self.simulated = SimulatedRuntime(self.kubelet, spec.simulation)
        elif spec.mode == "process":
            runtime = ProcessRuntime(self.kubelet, spec.processes)
        self.kubelet.runtime = runtime
        self.api = ApiServer(
            store=self.store,
            fairness=self.fairness,
            registry=self.registry,
            token=self.token,
            collector=self.collector,
            kubelet=self.kubelet,
            recorder=self.recorder,
            watch=spec.watch,
        )
        self._server: HttpServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.authority is not None else "http"
        host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts this shard's certificate (``None`` for plain HTTP),
        for HTTP clients that do not read the kubeconfig."""
        return None if self.authority is None else self.authority.client_context()

    async def start(self) -> None:
        if self.simulated is not None:
            await self.simulated.open()
        self.recorder.start()
        self._server = self.api.server()
        # started again after a stop: the same port, so clients find it where it was
        port = self.port or self.spec.port
        tls = None if self.authority is None else self.authority.server_context([self.spec.host])
        self.port = await self._server.start(self.spec.host, port, backlog=1024, tls=tls)
        self._write_kubeconfig()
        log.info("shard ready", extra={"shard": self.name, "url": self.url, "mode": self.spec.mode})

    async def stop(self) -> None:
        for collection in self.store.collections.values():
            for watcher in list(collection.watchers):
                watcher.close()
        if self._server is not None:
            await self._server.close(grace=1.0)
            self._server = None
        if self.kubelet.runtime is not None:
            await self.kubelet.runtime.close()
        for state in self.controller.jobs.values():
            state.cancel_timers()
        self.controller.timeline.close()
        for run in self.kubelet.runs.values():
            if run.timer is not None:
                run.timer.cancel()
        self.kubelet.stop()
        self.recorder.stop()

    def _write_kubeconfig(self) -> None:
        cluster: dict[str, str] = {"server": self.url}
        if self.authority is not None:
            cluster["certificate-authority-data"] = self.authority.kubeconfig_data
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": self.name, "cluster": cluster}],
            "users": [{"name": f"{self.name}-admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": self.name,
                    "context": {
                        "cluster": self.name,
                        "user": f"{self.name}-admin",
                        "namespace": self.spec.namespace,
                    },
                }
            ],
            "current-context": self.name,
            "preferences": {},
        }
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.kubeconfig.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            yaml.safe_dump(config, stream, sort_keys=False)
        temporary.replace(self.kubeconfig)

    # -- fault injection -----------------------------------------------------------------

    def inject_fault(self, job: str, fault: str | None, namespace: str | None = None) -> None:
        """Make every pod of Job ``job`` show ``fault`` (``None`` clears it)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: choose from {', '.join(FAULTS)}")
        key = (namespace or self.spec.namespace, job)
        if fault is None:
            self.kubelet.forced_faults.pop(key, None)
        else:
            self.kubelet.forced_faults[key] = fault

    def set_fault_mix(self, faults: dict[str, float]) -> None:
        """Change the random fault mix of a simulated shard for pods started from now on."""
        if self.simulated is None:
            raise ValueError(f"shard {self.name} is not in simulated mode")
        self.simulated.set_faults(faults)

    def _gauges(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        for plural, collection in self.store.collections.items():
            labels = {"resource": plural}
            yield (
                "devcluster_objects",
                "Objects stored, by resource.",
                labels,
                float(len(collection.objects)),
            )
            yield (
                "devcluster_watchers",
                "Open watches, by resource.",
                labels,
                float(len(collection.watchers)),
            )
        yield (
            "devcluster_resource_version",
            "The shard's current resourceVersion.",
            {},
            float(self.store.rv),
        )
        for reason, count in self.kubelet.terminated.items():
            yield (
                "devcluster_containers_terminated",
                "Containers ended, by reason.",
                {"reason": reason},
                float(count),
            )
        yield from self.fairness.gauges()


class DevCluster:
    """Several shards in this event loop; ``async with`` starts and stops them all."""

    def __init__(self, shards: Sequence[ShardSpec], kubeconfig_dir: str | Path) -> None:
        names = [s.name for s in shards]
        if not names or len(set(names)) != len(names):
            raise ValueError("shard names must be given and distinct")
        directory = Path(kubeconfig_dir)
        self.authority = (
            LocalAuthority.kept_in(directory / "authority.pem")
            if any(spec.tls for spec in shards)
            else None
        )
        self.shards = {spec.name: Shard(spec, directory, self.authority) for spec in shards}

    def __getitem__(self, name: str) -> Shard:
        return self.shards[name]

    async def start(self) -> None:
        started: list[Shard] = []
        try:
            for shard in self.shards.values():
                await shard.start()
                started.append(shard)
        except BaseException:
            for shard in reversed(started):
                await shard.stop()
            raise

    async def stop(self) -> None:
        for shard in self.shards.values():
            await shard.stop()

    async def __aenter__(self) -> DevCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def describe(self) -> dict[str, Any]:
        """Shard name → url, kubeconfig, namespace and mode (the CLI's READY line)."""
        return {
            name: {
                "url": shard.url,
                "kubeconfig": str(shard.kubeconfig),
                "namespace": shard.spec.namespace,
                "mode": shard.spec.mode,
            }
            for name, shard in self.shards.items()
        }
