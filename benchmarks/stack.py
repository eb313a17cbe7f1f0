"""A local system for benchmarks: the same components as ``nexus dev``, each a process.

Every Nexus service, the local cluster and the real servers run as separate processes on
loopback, so each one's CPU can be measured (:mod:`benchmarks.cpu`) and none shares an
event loop with the load generator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from nexus_dev.cli import BUCKET, ServicesComponent
from nexus_dev.servers.services import LocalServices
from nexus_dev.stack import ClusterComponent, Credentials, NexusComponent, StackOptions


@dataclass
class Stack:
    services: LocalServices
    cluster: ClusterComponent
    nexus: NexusComponent
    credentials: Credentials

    @property
    def schedulers(self) -> list[str]:
        return [c.url for c in self.nexus.components if c.name.startswith("scheduler")]

    @property
    def receiver(self) -> str:
        return next(c.url for c in self.nexus.components if c.name == "receiver")

    @property
    def token(self) -> str:
        return self.credentials.token

    def pids(self) -> dict[str, int]:
        """Process trees to measure, by name."""
        found = {
            "postgres": self.services.postgres.pid,
            "redis": self.services.redis.pid,
            "seaweedfs": self.services.s3.pid,
            "devcluster": self.cluster.pid,
        }
        for component in self.nexus.components:
            found[component.name] = component.pid
        return {name: pid for name, pid in found.items() if pid}

    def environment(self) -> dict[str, str]:
        """Settings of the servers, for benchmark code that writes to them directly."""
        return {k: v for k, v in self.services.environment().items() if k.startswith("NEXUS__")}

    @property
    def workdir(self) -> Path:
        return self.services.directory


@contextlib.contextmanager
def local_stack(
    options: StackOptions, postgres_settings: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    services = LocalServices(None, env=os.environ, postgres_settings=postgres_settings)
    credentials = Credentials()
    workdir_component = ServicesComponent(services)
    cluster: ClusterComponent | None = None
    nexus: NexusComponent | None = None
    try:
        workdir_component.start()
        cluster = ClusterComponent(options, services.directory)
        cluster.start()
        nexus = NexusComponent(
            options, services.directory, services.environment, cluster, credentials
        )
        nexus.start()
        yield Stack(services, cluster, nexus, credentials)
    finally:
        if nexus is not None:
            nexus.stop()
        if cluster is not None:
            cluster.stop()
        workdir_component.stop()


__all__ = ["BUCKET", "Stack", "StackOptions", "local_stack"]
