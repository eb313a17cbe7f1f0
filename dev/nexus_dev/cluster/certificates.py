"""HTTPS for the local clusters: a throwaway certificate authority and what trusts it.

``kubectl`` (client-go) sends a bearer token over TLS only; to an ``http://`` server it
sends none, and every command is refused with 401. So a shard serves HTTPS by default,
as a real API server does, with a certificate from a :class:`LocalAuthority`:

* **Throwaway.** The authority is made in memory when a :class:`~.emulators.DevCluster`
  starts (an ECDSA P-256 key pair, a few milliseconds) and is never written anywhere but
  into the shards' kubeconfigs, as ``certificate-authority-data`` — so whoever can read
  a kubeconfig (its owner: it is written with mode 0600, and holds the token anyway)
  trusts that cluster and nothing else. It dies with the process; the next start makes a
  new one.
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
import ssl
from collections.abc import Iterable

import trustme

_ALWAYS = ("127.0.0.1", "::1", "localhost")
"""Names every server certificate carries: how a shard is reached from this machine."""


class LocalAuthority:
    """A certificate authority for one run of the local clusters."""

    def __init__(self) -> None:
        self._ca = trustme.CA(organization_name="Nexus local cluster")

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
