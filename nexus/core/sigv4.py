"""AWS Signature Version 4 for presigned URLs, uploads and the few S3 calls made without
an S3 client library.

Presigning is on the hot path (every dispatch, every results read, every upload), and the
local SeaweedFS server (:mod:`nexus_dev.servers.services`) enforces signatures, so checking
that it is ready, and making or emptying a bucket for a test, needs signed requests too.
The S3 client library may only be imported by :mod:`nexus.core.storage`, and these calls
must work before (and without) it, so this module signs with ``hmac`` and ``hashlib``
alone, following the published algorithm:

* :meth:`Signer.headers` signs a request in its ``Authorization`` header, with the payload
  hash in ``x-amz-content-sha256``;
* :meth:`Signer.presign` makes a presigned URL (query-string authentication,
  ``UNSIGNED-PAYLOAD``, only the ``host`` header signed), the kind handed to algorithms;
  :meth:`Signer.presign_object` makes the same URL for an object in a few microseconds;
* :func:`request` sends a signed request with :mod:`http.client` and returns the answer.

Temporary credentials (STS: IRSA, Pod Identity, instance profiles) carry a session token,
sent as ``X-Amz-Security-Token`` and signed as botocore signs it: a signed header, or a
signed query parameter of a presigned URL. Objects are addressed path-style
(``endpoint/bucket/key``) or virtual-host-style (``bucket.endpoint/key``). All of it is
checked byte for byte against botocore's signers in the tests. Not supported on purpose:
chunked (streaming) payload signing. A day's signing key is derived once and kept as a
:class:`~nexus.core.signing.HmacKey`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

from nexus.core.signing import HmacKey

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""The longest validity S3 accepts for a presigned URL (7 days)."""

_DAY_KEYS: dict[tuple[str, str, str, str], HmacKey] = {}


_RESERVED = re.compile(r"[^A-Za-z0-9\-_.~]")
_RESERVED_BUT_SLASH = re.compile(r"[^A-Za-z0-9\-_.~/]")
_PERCENT = {chr(c): f"%{c:02X}" for c in range(128)}


def _percent(match: re.Match[str]) -> str:
    char = match.group()
    return _PERCENT.get(char) or "".join(f"%{byte:02X}" for byte in char.encode())


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """Percent-encode everything but the RFC 3986 unreserved characters (and ``/``), as
    UTF-8. Object keys are mostly unreserved characters, so only the others are looked
    at: a regex substitution in C, 0.7 µs a key against quote()'s 3.4."""
    return (_RESERVED_BUT_SLASH if keep_slash else _RESERVED).sub(_percent, text)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Signer:
    """Signs requests for one set of credentials in one region. ``session_token`` comes
    with temporary credentials (STS) and is empty for long-term keys."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    service: str = "s3"
    session_token: str = field(default="", repr=False)
    _token_query: str = field(init=False, repr=False, compare=False)
    """``&X-Amz-Security-Token=<token>``, encoded once (tokens are ~1 kB), or empty."""

    def __post_init__(self) -> None:
        token = self.session_token
        query = f"&X-Amz-Security-Token={uri_encode(token)}" if token else ""
        object.__setattr__(self, "_token_query", query)

    def headers(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """All headers to send with the request, ``Authorization`` included.

        ``url`` must already be percent-encoded the way it will be sent (see
        :func:`object_url`); ``headers`` are extra headers to sign and send.
        """
        stamp = _timestamp(now)
        parts = urlsplit(url)
        signed = {k.lower(): " ".join(v.split()) for k, v in (headers or {}).items()}
        signed["host"] = _signed_host(parts.scheme, parts.netloc)
        signed["x-amz-date"] = stamp
        signed["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        if self.session_token:
            signed["x-amz-security-token"] = self.session_token
        canonical, names = self._canonical(
            method, parts.path, _query_pairs(parts.query), signed, signed["x-amz-content-sha256"]
        )
        scope = self._scope(stamp)
        signature = self._signature(stamp, scope, canonical)
        signed["authorization"] = (
            f"{ALGORITHM} Credential={self.access_key_id}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return signed

    def presign(
        self, method: str, url: str, *, expires_in: int, now: datetime | None = None
    ) -> str:
        """``url`` with query-string authentication valid for ``expires_in`` seconds."""
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_in must be 1..{MAX_PRESIGN_SECONDS} s, not {expires_in}")
        stamp = _timestamp(now)
        parts = urlsplit(url)
        scope = self._scope(stamp)
        query = [
            *_query_pairs(parts.query),
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self.access_key_id}/{scope}"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(expires_in)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self.session_token:  # signed, in the URL after SignedHeaders (as botocore puts it)
            query.append(("X-Amz-Security-Token", self.session_token))
        canonical, _ = self._canonical(
            method,
            parts.path,
            query,
            {"host": _signed_host(parts.scheme, parts.netloc)},
            UNSIGNED_PAYLOAD,
        )
        query.append(("X-Amz-Signature", self._signature(stamp, scope, canonical)))
        encoded = "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query)
        return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}?{encoded}"

    def presign_object(
        self,
        method: str,
        endpoint_url: str,
        bucket: str,
        key: str,
        *,
        expires_in: int,
        now: datetime | None = None,
        virtual_host: bool = False,
    ) -> str:
        """The same URL as ``presign(method, object_url(endpoint_url, bucket, key,
        virtual_host=...), ...)``, made without parsing or sorting anything: objects are
        presigned on every dispatch and every results read, so this path is kept to a few
        microseconds."""
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_in must be 1..{MAX_PRESIGN_SECONDS} s, not {expires_in}")
        stamp = _timestamp(now)
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        origin, host, prefix = _endpoint(endpoint_url, bucket, virtual_host)
        folder, slash, name = key.rpartition("/")  # a run's key: a shared folder, its id
        if not (name.isascii() and name.replace("-", "").isalnum()):  # a run id needs none
            name = uri_encode(name)
        path = f"{prefix}/{_encoded_folder(folder + slash)}{name}"
        credential = _encoded_credential(self.access_key_id, scope)
        # In canonical (sorted) order: Algorithm, Credential, Date, Expires, Security-Token,
        # SignedHeaders. The URL puts the token after SignedHeaders, as botocore does.
        common = (
            f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={credential}&X-Amz-Date={stamp}"
            f"&X-Amz-Expires={expires_in}"
        )
        token = self._token_query
        canonical = (
            f"{method.upper()}\n{path}\n{common}{token}&X-Amz-SignedHeaders=host\n"
            f"host:{host}\n\nhost\n{UNSIGNED_PAYLOAD}"
        )
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = self._day_key(stamp[:8]).digest(to_sign.encode()).hex()
        return (
            f"{origin}{path}?{common}&X-Amz-SignedHeaders=host{token}&X-Amz-Signature={signature}"
        )

    def _day_key(self, day: str) -> HmacKey:
        """The signing key of ``day``, derived once per day (four HMACs saved per URL)."""
        name = (self.secret_access_key, day, self.region, self.service)
        cached = _DAY_KEYS.get(name)
        if cached is None:
            key = ("AWS4" + self.secret_access_key).encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            if len(_DAY_KEYS) > 64:  # rotated credentials: forget the old days and keys
                _DAY_KEYS.clear()
            cached = _DAY_KEYS[name] = HmacKey(key)
        return cached

    def _canonical(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        payload_hash: str,
    ) -> tuple[str, str]:
        names = sorted(headers)
        canonical_query = "&".join(
            f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in query)
        )
        lines = [
            method.upper(),
            path or "/",
            canonical_query,
            *(f"{name}:{headers[name]}" for name in names),
            "",
            ";".join(names),
            payload_hash,
        ]
        return "\n".join(lines), ";".join(names)

    def _scope(self, stamp: str) -> str:
        return f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"

    def _signature(self, stamp: str, scope: str, canonical: str) -> str:
        to_sign = "\n".join(
            [ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        return self._day_key(stamp[:8]).digest(to_sign.encode()).hex()


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_BUCKET_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


def _signed_host(scheme: str, netloc: str) -> str:
    """The Host header a client sends for ``netloc``: without the scheme's default port
    (as botocore signs it; clients leave it out even when the URL names it)."""
    return netloc.removesuffix(_DEFAULT_PORTS.get(scheme.lower(), "\0"))


def virtual_host_problem(endpoint_url: str, bucket: str) -> str | None:
    """Why ``bucket`` cannot be addressed as ``bucket.<endpoint host>``, or ``None``: its
    name must be one DNS label (lower-case letters, digits, ``-``; no dots, which a TLS
    wildcard certificate does not cover) and the endpoint a host name, not an address."""
    if not _BUCKET_LABEL.match(bucket):
        return (
            f"bucket {bucket!r} is not a DNS label (3-63 lower-case letters, digits and '-',"
            " no dots)"
        )
    host = urlsplit(endpoint_url).hostname or ""
    if _IPV4.match(host) or ":" in host:
        return f"endpoint {endpoint_url!r} is an IP address; a bucket cannot be put in front"
    return None


@functools.lru_cache(maxsize=32)
def _endpoint(endpoint_url: str, bucket: str, virtual_host: bool) -> tuple[str, str, str]:
    """Where objects of ``bucket`` live at ``endpoint_url``: (scheme://host[:port], the
    signed host, the path before the key, percent-encoded). An endpoint may serve S3
    under a path, e.g. a gateway's ``/s3``: it is kept in both styles (as botocore does)."""
    parts = urlsplit(endpoint_url.rstrip("/"))
    prefix = uri_encode(parts.path, keep_slash=True)
    netloc = parts.netloc
    if virtual_host:
        netloc = f"{bucket}.{netloc}"
    elif bucket:
        prefix = f"{prefix}/{uri_encode(bucket, keep_slash=True)}"
    return f"{parts.scheme}://{netloc}", _signed_host(parts.scheme, netloc), prefix


def object_url(
    endpoint_url: str, bucket: str = "", key: str = "", *, virtual_host: bool = False
) -> str:
    """URL of a bucket or an object, percent-encoded for signing and sending: path-style
    (``endpoint/bucket/key``) unless ``virtual_host`` (``bucket.endpoint/key``)."""
    origin, _, prefix = _endpoint(endpoint_url, bucket, virtual_host)
    if not key:
        return f"{origin}{prefix}/" if virtual_host or not bucket else f"{origin}{prefix}"
    return f"{origin}{prefix}/{uri_encode(key, keep_slash=True)}"


def request(
    signer: Signer,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """Send a signed request; connection errors propagate as :class:`OSError`."""
    parts = urlsplit(url)
    signed = signer.headers(method, url, body=body, headers=headers)
    signed["content-length"] = str(len(body))
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.netloc, timeout=timeout)
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        connection.request(method, target, body=body, headers=signed)
        answer = connection.getresponse()
        return Response(answer.status, dict(answer.getheaders()), answer.read())
    finally:
        connection.close()


@functools.lru_cache(maxsize=256)
def _encoded_folder(folder: str) -> str:
    """``folder`` (a key's part up to its last ``/``) percent-encoded: the few folders of
    the inputs and results of each algorithm are encoded once each, not once per URL
    (their ``=`` is a Python call each in :func:`uri_encode`)."""
    return uri_encode(folder, keep_slash=True)


@functools.lru_cache(maxsize=16)
def _encoded_credential(access_key_id: str, scope: str) -> str:
    """``X-Amz-Credential``'s value, percent-encoded once a day (its scope is the day's)."""
    return uri_encode(f"{access_key_id}/{scope}")


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """Decoded ``(name, value)`` pairs of a query string (``?acl`` gives ``("acl", "")``)."""
    return parse_qsl(query, keep_blank_values=True)


_STAMP: list[tuple[int, str]] = [(-1, "")]
"""The last second stamped and its stamp: URLs made in the same second share it."""


def _timestamp(now: datetime | None) -> str:
    if now is None:
        second = int(time.time())
        last, stamp = _STAMP[0]
        if second != last:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            _STAMP[0] = (second, stamp)
        return stamp
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
