"""HTTPS for the local clusters: a throwaway certificate authority and what trusts it.

``kubectl`` (client-go) sends a bearer token over TLS only; to an ``http://`` server it
sends none, and every command is refused with 401. So a shard serves HTTPS by default,
as a real API server does, with a certificate from a :class:`LocalAuthority`:

* **Throwaway.** The authority is made when a :class:`~.emulators.DevCluster` first
  starts in a kubeconfig directory (an ECDSA P-256 key pair, a few milliseconds) and
  written into the shards' kubeconfigs, as ``certificate-authority-data``, and with its
  key into ``authority.pem`` beside them (mode 0600, as the kubeconfigs, which hold the
  tokens anyway). A cluster started again in that directory — ``nexus dev`` restarts a
  crashed one with the ports and tokens of the first start — uses the same authority,
  so the clients that read the kubeconfigs before keep trusting it; a new directory
  gets a new one. Whoever can read a kubeconfig trusts that cluster and nothing else.
* **Stock clients verify it.** The server certificate names every address a shard is
  reached at (``127.0.0.1``, ``::1``, ``localhost`` and the listen host), so kubectl,
  kubernetes-asyncio and the lean client of :mod:`nexus.core.httpcalls` check the name
  and the chain with their default, strict settings: no ``insecure-skip-tls-verify``.
* **Not for production.** The key sits in the emulator's memory unprotected, and the
  development package that holds it is never in the production image.

trustme makes the certificates (a well-kept library for exactly this: test CAs, on top of
``cryptography``).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from pathlib import Path

import trustme

_ALWAYS = ("127.0.0.1", "::1", "localhost")
"""Names every server certificate carries: how a shard is reached from this machine."""


_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.DOTALL)


class LocalAuthority:
    """A certificate authority for the local clusters of one kubeconfig directory."""

    def __init__(self, ca: trustme.CA | None = None) -> None:
        self._ca = ca or trustme.CA(organization_name="Nexus local cluster")

    @classmethod
    def kept_in(cls, path: Path) -> LocalAuthority:
        """The authority saved in ``path`` (certificate and key, PEM), or a new one saved
        there (atomically, mode 0600)."""
        if path.exists():
            blocks = {match[1]: match[0] for match in _PEM.finditer(path.read_bytes())}
            key = next((pem for kind, pem in blocks.items() if b"PRIVATE KEY" in kind), None)
            if b"CERTIFICATE" in blocks and key is not None:
                return cls(trustme.CA.from_pem(blocks[b"CERTIFICATE"], key))
        authority = cls()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(authority.pem + authority._ca.private_key_pem.bytes())
        temporary.replace(path)
        return authority

    @property
    def pem(self) -> bytes:
        """The authority's certificate, PEM."""
        return self._ca.cert_pem.bytes()

    @property
    def kubeconfig_data(self) -> str:
        """The value of a kubeconfig cluster's ``certificate-authority-data`` (base64 PEM)."""
        return base64.b64encode(self.pem).decode("ascii")

    def server_context(self, hosts: Iterable[str] = ()) -> ssl.SSLContext:
        """A server-side context whose certificate names ``hosts`` besides the loopback
        names; a wildcard listen address (``0.0.0.0``, ``::``) names nothing more."""
        names = list(_ALWAYS)
        for host in hosts:
            if host and host not in names and not _unspecified(host):
                names.append(host)
        certificate = self._ca.issue_cert(*names, common_name=names[0])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        certificate.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts this authority (and only it)."""
        context = ssl.create_default_context(cadata=self.pem.decode("ascii"))
        return context


def trusting(kubeconfig_data: str) -> ssl.SSLContext:
    """A client context trusting the authority of a kubeconfig's
    ``certificate-authority-data`` (for tools that read the kubeconfig themselves)."""
    return ssl.create_default_context(cadata=base64.b64decode(kubeconfig_data).decode("ascii"))


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
