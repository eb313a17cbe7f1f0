"""AWS Signature Version 4 for the few S3 calls made without an S3 client library.

The local SeaweedFS server (:mod:`nexus_dev.servers.services`) enforces signatures, so
checking that it is ready, and making or emptying a bucket for a test, needs signed
requests. The S3 client library may only be imported by :mod:`nexus.core.storage`, and
these calls must work before (and without) it, so this module signs with ``hmac`` and
``hashlib`` alone, following the published algorithm:

* :meth:`Signer.headers` signs a request in its ``Authorization`` header, with the payload
  hash in ``x-amz-content-sha256``;
* :meth:`Signer.presign` makes a presigned URL (query-string authentication,
  ``UNSIGNED-PAYLOAD``, only the ``host`` header signed), the kind handed to algorithms;
* :func:`request` sends a signed request with :mod:`http.client` and returns the answer.

Both are checked byte for byte against botocore's signers in the tests. Not supported on
purpose: session tokens, chunked (streaming) payload signing, virtual-host addressing.
A day's signing key is derived once and kept as a :class:`~nexus.core.signing.HmacKey`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import re
import time
from dataclasses import dataclass
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
    """Signs requests for one set of credentials in one region."""

    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    service: str = "s3"

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
    ) -> str:
        """The same URL as ``presign(method, object_url(endpoint_url, bucket, key), ...)``,
        made without parsing or sorting anything: objects are presigned on every dispatch
        and every results read, so this path is kept to a few microseconds."""
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires_in must be 1..{MAX_PRESIGN_SECONDS} s, not {expires_in}")
        stamp = _timestamp(now)
        day = stamp[:8]
        origin, host, prefix = _endpoint(endpoint_url)
        path = f"{prefix}/{uri_encode(bucket)}/{uri_encode(key, keep_slash=True)}"
        credential = uri_encode(f"{self.access_key_id}/{self._scope(stamp)}")
        # Already in canonical (sorted) order: Algorithm, Credential, Date, Expires, SignedHeaders.
        query = (
            f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={credential}&X-Amz-Date={stamp}"
            f"&X-Amz-Expires={expires_in}&X-Amz-SignedHeaders=host"
        )
        canonical = f"{method.upper()}\n{path}\n{query}\nhost:{host}\n\nhost\n{UNSIGNED_PAYLOAD}"
        to_sign = (
            f"{ALGORITHM}\n{stamp}\n{self._scope(stamp)}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = self._day_key(day).digest(to_sign.encode()).hex()
        return f"{origin}{path}?{query}&X-Amz-Signature={signature}"

    def _day_key(self, day: str) -> HmacKey:
        """The signing key of ``day``, derived once per day (four HMACs saved per URL)."""
        name = (self.secret_access_key, day, self.region, self.service)
        cached = _DAY_KEYS.get(name)
        if cached is None:
            key = ("AWS4" + self.secret_access_key).encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            if len(_DAY_KEYS) > 64:
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


def _signed_host(scheme: str, netloc: str) -> str:
    """The Host header a client sends for ``netloc``: without the scheme's default port
    (as botocore signs it; clients leave it out even when the URL names it)."""
    return netloc.removesuffix(_DEFAULT_PORTS.get(scheme.lower(), "\0"))


@functools.lru_cache(maxsize=16)
def _endpoint(endpoint_url: str) -> tuple[str, str, str]:
    """``endpoint_url`` as (scheme://host[:port], signed host, path prefix, percent-encoded),
    e.g. a gateway serving S3 under ``/s3``."""
    parts = urlsplit(endpoint_url.rstrip("/"))
    prefix = uri_encode(parts.path, keep_slash=True)
    return f"{parts.scheme}://{parts.netloc}", _signed_host(parts.scheme, parts.netloc), prefix


def object_url(endpoint_url: str, bucket: str = "", key: str = "") -> str:
    """Path-style URL of a bucket or an object, percent-encoded for signing and sending."""
    path = "/".join(uri_encode(part, keep_slash=True) for part in (bucket, key) if part)
    return f"{endpoint_url.rstrip('/')}/{path}"


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


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """Decoded ``(name, value)`` pairs of a query string (``?acl`` gives ``("acl", "")``)."""
    return parse_qsl(query, keep_blank_values=True)


def _timestamp(now: datetime | None) -> str:
    if now is None:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
