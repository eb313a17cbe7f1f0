"""A throwaway S3 server: SeaweedFS on loopback, signed requests only.

:class:`LocalS3` runs ``weed mini`` — master, volume server, filer and S3 gateway in one
process, ready in well under a second where ``weed server`` takes three — with the life
cycle of :class:`~nexus.core.localservers.LocalServer` (restart keeps ports and objects).

Guarantees beyond the common ones:

* **Signatures are enforced.** The gateway gets an identity file with one access key
  (:class:`S3Info`), so every request must be signed: unsigned requests, tampered
  presigned URLs (path, expiry, signature) and expired ones are refused with 403, as by
  AWS. Buckets are not created on upload (``-s3.autoCreateBucket=false``), as on AWS.
* **Contained.** Every listener (ten ports: HTTP and gRPC of master, volume, filer, S3 and
  the embedded admin server; the gRPC ports are set explicitly, since SeaweedFS would
  otherwise take ``port + 10000``) binds 127.0.0.1; data, logs (``-logdir``), the admin
  data and the filer's and gateway's unix sockets live in the server's directory.
  Telemetry, WebDAV, the admin UI, IAM, Iceberg and Lance endpoints are off.
* **Ports are checked.** ``weed mini`` silently moves to another port when one is taken;
  its log line saying so fails the start instead (and a first start retries elsewhere).

One thing SeaweedFS does not let us move: it also listens on
``/tmp/seaweedfs-<component>-grpc-<port>.sock``. It removes those on a graceful stop;
after a kill, :meth:`LocalS3.kill` removes them.
"""

from __future__ import annotations

import json
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from nexus.core import sigv4
from nexus.core.localprocesses import BinarySource, find_weed
from nexus.core.localservers import LocalServer


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
    ) -> None:
        super().__init__(directory, external=external, binaries=binaries)
        self.secret_access_key = secrets.token_urlsafe(24)

    def _prepare(self) -> None:
        assert self.directory is not None
        for sub in ("data", "logs", "admin"):
            (self.directory / sub).mkdir(exist_ok=True)
        identity = {
            "name": "nexus",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self.directory / "s3.json"
        path.write_text(json.dumps({"identities": [identity]}))
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)

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
        ]  # fmt: skip

    def _probe(self) -> bool:
        return self._info().call("GET").status == 200

    def _after_exit(self) -> None:
        # weed also listens on /tmp/seaweedfs-<name>-grpc-<port>.sock, a path it hard-codes;
        # it removes them when stopped gracefully, not when killed.
        for i, name in enumerate(self._GRPC_SOCKETS):
            path = Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[2 * i + 1]}.sock")
            path.unlink(missing_ok=True)

    def _info(self) -> S3Info:
        return S3Info(
            f"http://127.0.0.1:{self.ports[6]}",
            self.access_key_id,
            self.secret_access_key,
            self.region,
        )
