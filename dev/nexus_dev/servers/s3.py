"""A throwaway S3 server: SeaweedFS on loopback, signed requests only.

:class:`LocalS3` runs ``weed mini`` — master, volume server, filer and S3 gateway in one
process, ready in well under a second where ``weed server`` takes three — with the life
cycle of :class:`~nexus_dev.servers.databases.LocalServer` (restart keeps ports and objects).

Guarantees beyond the common ones:

* **Signatures are enforced.** The gateway gets an identity file with one access key
  (:class:`S3Info`), so every request must be signed: unsigned requests, tampered
  presigned URLs (path, expiry, signature) and expired ones are refused with 403, as by
  AWS. Buckets are not created on upload (``-s3.autoCreateBucket=false``), as on AWS.
  Tests of key rotation give it more keys (``extra_keys``), tests of virtual-host
  addressing a domain (``domain_name``: ``bucket.<domain>`` names the bucket), and tests
  of temporary credentials an IAM configuration (``iam_config``: its STS, OIDC providers,
  roles and policies), so that it hands out session tokens and checks them.
* **Contained.** Every listener binds 127.0.0.1: ten ports, HTTP and gRPC of master,
  volume, filer, S3 and the embedded admin server. Each gRPC port is its HTTP port + 10000,
  SeaweedFS' own convention, which some of its clients assume whatever they are told (the
  maintenance worker of ``weed mini`` dials the admin server that way), so both are
  checked free and passed explicitly. Data, logs (``-logdir``), the admin data and the
  filer's and gateway's unix sockets live in the server's directory. Telemetry, WebDAV,
  the admin UI, IAM, Iceberg and Lance endpoints are off.
* **Ready means readable.** After a restart, :meth:`~LocalServer.start` also waits until
  the volume server has reported its volumes to the master, so objects written before
  the restart can be read as soon as it returns. Not always writable: a master that
  takes the lead once the volume server has reported its volumes refuses new writes for
  15 s ("warming up": three heartbeat periods of 5 s) and the gateway holds uploads
  meanwhile, retrying; which of the two comes first after a restart is a race.
* **Ports are checked.** ``weed mini`` silently moves to another port when one is taken;
  its log line saying so fails the start instead (and a first start retries elsewhere).
* **Stopped within seconds.** A graceful stop takes 1.2-1.5 s, but after load the volume
  server may wait up to a minute for connections that are not idle, opened inside weed
  (clients only talk to the gateway). :meth:`LocalS3.stop` waits ``STOP_GRACE`` seconds,
  then kills; an object is written once its PUT is answered, so nothing is lost (a test
  kills and restarts it).

One thing SeaweedFS does not let us move: it also listens on
``/tmp/seaweedfs-<component>-grpc-<port>.sock``. It removes those on a graceful stop;
after a kill, :meth:`LocalS3.kill` removes them.
"""

from __future__ import annotations

import json
import secrets
import stat
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus.core import sigv4
from nexus_dev.servers.binaries import BinarySource, find_weed
from nexus_dev.servers.lifecycle import LocalServer
from nexus_dev.servers.supervision import free_ports

STOP_GRACE = 3.0
"""Seconds a stop waits for SeaweedFS to exit by itself (see the module docstring)."""


@dataclass(frozen=True)
class S3Info:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def signer(self) -> sigv4.Signer:
        return sigv4.Signer(self.access_key_id, self.secret_access_key, self.region)

    def call(
        self, method: str, bucket: str = "", key: str = "", body: bytes = b""
    ) -> sigv4.Response:
        """One signed path-style request, e.g. ``call("PUT", "bucket")`` makes a bucket."""
        url = sigv4.object_url(self.endpoint_url, bucket, key)
        return sigv4.request(self.signer(), method, url, body=body)


class LocalS3(LocalServer[S3Info]):
    """SeaweedFS ``weed mini`` with one identity; see the module docstring."""

    name = "s3"
    ports_needed = 10  # http + grpc of master, volume, filer, s3 and the admin server
    probe_interval = 0.05
    access_key_id = "nexus-local"
    region = "us-east-1"
    _GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")

    def __init__(
        self,
        directory: Path | None = None,
        *,
        external: S3Info | None = None,
        binaries: BinarySource = "auto",
        extra_keys: Sequence[tuple[str, str]] = (),
        domain_name: str = "",
        iam_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(directory, external=external, binaries=binaries)
        self.secret_access_key = secrets.token_urlsafe(24)
        self.extra_keys = tuple(extra_keys)
        """More (access key, secret) pairs the gateway accepts, for the same identity."""
        self.domain_name = domain_name
        self.iam_config = iam_config

    def _choose_ports(self) -> list[int]:
        """HTTP and gRPC port of each component, gRPC = HTTP + 10000 as SeaweedFS assumes."""
        return [port + grpc for port in free_ports(5, partner_offset=10000) for grpc in (0, 10000)]

    def _prepare(self) -> None:
        assert self.directory is not None
        for sub in ("data", "logs", "admin"):
            (self.directory / sub).mkdir(exist_ok=True)
        identity = {
            "name": "nexus",
            "credentials": [
                {"accessKey": key, "secretKey": secret}
                for key, secret in ((self.access_key_id, self.secret_access_key), *self.extra_keys)
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self.directory / "s3.json"
        path.write_text(json.dumps({"identities": [identity]}))
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        if self.iam_config is not None:
            iam = self.directory / "iam.json"
            iam.write_text(json.dumps(self.iam_config))
            iam.chmod(stat.S_IRUSR | stat.S_IWUSR)

    def _command(self) -> list[str]:
        assert self.directory is not None
        d = self.directory
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = {name: (self.ports[2 * i], self.ports[2 * i + 1]) for i, name in enumerate(names)}
        argv = [str(find_weed(self.binaries).path), f"-logdir={d / 'logs'}", "mini"]
        for name, (http_port, grpc_port) in ports.items():
            argv += [f"-{name}.port={http_port}", f"-{name}.port.grpc={grpc_port}"]
        return [
            *argv,
            f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-s3.config={d / 's3.json'}", "-s3.iam=false",
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", f"-admin.dataDir={d / 'admin'}",
            f"-filer.localSocket={d / 'filer.sock'}", f"-s3.localSocket={d / 's3.sock'}",
            "-volume.preStopSeconds=0",
            *([f"-s3.domainName={self.domain_name}"] if self.domain_name else []),
            *([f"-s3.iam.config={d / 'iam.json'}"] if self.iam_config is not None else []),
        ]  # fmt: skip

    def _probe(self) -> bool:
        if self._info().call("GET").status != 200:
            return False
        # The gateway answers before the volume server has told the master which volumes
        # it holds; until then, objects written before a restart answer 500. Its first
        # heartbeat reports them all, so one registered volume means all are.
        assert self.directory is not None
        if not any((self.directory / "data").glob("*.dat")):
            return True
        master = f"http://127.0.0.1:{self.ports[0]}/dir/status"
        with urllib.request.urlopen(master, timeout=2) as answer:
            topology = json.load(answer)["Topology"]
        nodes = [
            node
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return any(node.get("Volumes", 0) > 0 for node in nodes)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(min(timeout, STOP_GRACE))

    def _after_exit(self) -> None:
        # weed also listens on /tmp/seaweedfs-<name>-grpc-<port>.sock, a path it hard-codes;
        # it removes them (and its other sockets) when stopped gracefully, not when killed.
        assert self.directory is not None
        sockets = [self.directory / "filer.sock", self.directory / "s3.sock"]
        for i, name in enumerate(self._GRPC_SOCKETS):
            sockets.append(Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[2 * i + 1]}.sock"))
        for path in sockets:
            path.unlink(missing_ok=True)

    def _info(self) -> S3Info:
        return S3Info(
            f"http://127.0.0.1:{self.ports[6]}",
            self.access_key_id,
            self.secret_access_key,
            self.region,
        )
