"""JWT signing keys from an identity provider: a JWKS URL, or found by OIDC discovery.

An identity provider (Keycloak, Auth0, Okta, Entra ID, Google, Dex, a cluster's service
account issuer...) publishes the public keys it signs JWTs with as a JSON Web Key Set, at
the ``jwks_uri`` of its OpenID Connect discovery document
(``<issuer>/.well-known/openid-configuration``), and rotates them: a new key is published
before it signs anything, an old one withdrawn after its tokens have expired.
:class:`JwksKeys` keeps that set, fetched with aiohttp and parsed by PyJWT:

* **cached**: a JWT naming a known key (``kid``) is checked with no fetch;
* **refreshed on an unknown kid**, at once, so a rotation is followed from the first JWT
  signed with the new key; concurrent requests share one fetch, and such fetches are at
  least ``jwt_jwks_min_interval`` apart, so a flood of made-up kids costs the provider one
  fetch per interval per pod, whatever its rate;
* **refreshed periodically** (``jwt_jwks_refresh_interval``) by :meth:`JwksKeys.run`, so a
  withdrawn key stops being trusted; after a failure, sooner (capped back-off);
* **asymmetric keys only**: RSA (RS256/384/512, PS256/384/512), EC (ES256, ES384, ES512,
  ES256K by curve) and Ed25519 (EdDSA). A key with ``alg`` signs with that algorithm only;
  ``oct`` (shared-secret) keys and keys whose ``use`` is not ``sig`` are ignored.

**The provider unreachable.** A failed fetch keeps the keys already known, so JWTs signed
with them keep working. The service starts even when the provider cannot be reached — a
scheduler that refused to start would also stop serving service tokens and static-key
JWTs and, worse, stop dispatching the runs already accepted, for an outage of another
system (DESIGN invariant 5); restarting it would not bring the provider back. Meanwhile a
JWT that needs a key the set does not hold is answered ``503`` with ``Retry-After``
(unavailable: Nexus cannot tell whether the JWT is good), not ``401`` (the JWT is
wrong); once the set is fetched, an unknown kid is a ``401``. Every failure is logged and
counted in ``nexus_jwks_fetches_total{outcome="failed"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
from prometheus_client import Counter, Gauge

from nexus.core.errors import ConfigError
from nexus.core.httpapi import ApiError
from nexus.core.waiting import Backoff, sleep_or_stop
from nexus.scheduler.settings import AuthSettings

log = logging.getLogger(__name__)

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
CURVE_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
ALGORITHMS = RSA_ALGORITHMS | frozenset({*CURVE_ALGORITHMS.values(), "EdDSA"})
"""What a key of the set may sign with: every asymmetric algorithm PyJWT verifies."""

MAX_DOCUMENT = 1024**2
"""Largest discovery document or key set read; real ones are a few kilobytes."""
RETRY_BASE = 1.0
RETRY_CAP = 60.0
"""After a failed fetch, the periodic one comes 1, 2, 4... seconds later, at most a minute."""

FETCHES = Counter(
    "nexus_jwks_fetches_total",
    "Fetches of the identity provider's key set, by outcome (ok, failed)",
    ["outcome"],
)
KEYS = Gauge("nexus_jwks_keys", "Signing keys of the identity provider currently trusted")

Wait = Callable[[asyncio.Event, float], Awaitable[object]]


class JwksUnavailable(Exception):
    """The key set (or the discovery document) cannot be fetched or is not usable."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: Any
    """The public key, as PyJWT verifies with it."""
    algorithms: frozenset[str]


def signing_keys(document: Any) -> tuple[dict[str, SigningKey], list[SigningKey]]:
    """The usable keys of a JWKS document: by kid, and those without one."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailable("the key set is not a JSON object with a 'keys' list")
    named: dict[str, SigningKey] = {}
    unnamed: list[SigningKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        algorithms = _algorithms(entry)
        if not algorithms:
            continue
        try:
            parsed = jwt.PyJWK(entry, next(iter(sorted(algorithms))))
        except (jwt.PyJWTError, ValueError, TypeError):
            continue  # a key PyJWT cannot use: the others may still be fine
        key = SigningKey(parsed.key, algorithms)
        kid = entry.get("kid")
        if isinstance(kid, str):
            named[kid] = key
        else:
            unnamed.append(key)
    if not named and not unnamed:
        raise JwksUnavailable("the key set holds no usable signing key")
    return named, unnamed


def _algorithms(entry: dict[str, Any]) -> frozenset[str]:
    """What a JWK may verify: its ``alg``, else what its type and curve allow."""
    match entry.get("kty"):
        case "RSA":
            family = RSA_ALGORITHMS
        case "EC":
            curve = CURVE_ALGORITHMS.get(str(entry.get("crv")))
            family = frozenset({curve}) if curve else frozenset()
        case "OKP" if entry.get("crv") == "Ed25519":
            family = frozenset({"EdDSA"})
        case _:  # oct (a shared secret) and anything unknown
            return frozenset()
    algorithm = entry.get("alg")
    if algorithm is None:
        return family
    return frozenset({algorithm}) & family


class JwksKeys:
    """The identity provider's signing keys, fetched, cached and refreshed."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        on_change: Callable[[], None] = lambda: None,
        wait: Wait = sleep_or_stop,
    ) -> None:
        self._settings = settings
        self._jwks_url = settings.jwt_jwks_url
        discovery = f"{settings.jwt_issuer.rstrip('/')}/.well-known/openid-configuration"
        self._discovery_url = discovery if settings.jwt_oidc_discovery else ""
        for name, url in (("JWT_JWKS_URL", self._jwks_url), ("JWT_ISSUER", self._discovery_url)):
            if url and not url.startswith(("https://", "http://")):
                raise ConfigError(f"NEXUS__AUTH__{name}: expected an http(s) URL, got {url!r}")
        if self._jwks_url and self._discovery_url:
            raise ConfigError(
                "NEXUS__AUTH__JWT_OIDC_DISCOVERY: set either it or NEXUS__AUTH__JWT_JWKS_URL"
            )
        self._on_change = on_change
        self._wait = wait
        self._named: dict[str, SigningKey] = {}
        self._unnamed: list[SigningKey] = []
        self.loaded = False
        """Whether the key set has been fetched at least once."""
        self.reachable = False
        """Whether the last fetch succeeded."""
        self._last_demand = -float("inf")
        self._fetching: asyncio.Task[bool] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def source(self) -> str:
        return self._jwks_url or self._discovery_url

    async def close(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching
        if self._session is not None:
            await self._session.close()

    # -- finding a key ---------------------------------------------------------------------

    async def key(self, kid: str | None, algorithm: str) -> Any:
        """The key that verifies a JWT naming ``kid`` and signed with ``algorithm``;
        fetches the set again if it has no such kid (rate-limited). Raises the 401 or 503
        :class:`ApiError` to answer otherwise."""
        found = self.known(kid)
        if found is None and kid is not None and self._may_fetch():
            await self.refresh(on_demand=True)
            found = self.known(kid)
        if found is None:
            if not self.reachable:
                raise ApiError(
                    503,
                    "unavailable",
                    "the identity provider's signing keys cannot be fetched now, so this "
                    "JWT cannot be checked; retry later",
                    {"Retry-After": "5"},
                )
            if kid is None:
                raise unauthorized("the JWT does not name its signing key (no kid header)")
            raise unauthorized(f"the identity provider has no signing key {kid[:80]!r}")
        if algorithm not in found.algorithms:
            raise unauthorized(f"the key {str(kid)[:80]!r} does not sign with {algorithm}")
        return found.key

    def known(self, kid: str | None) -> SigningKey | None:
        """The cached key named ``kid``; without a kid, the only key of the set, if it has
        exactly one without a name (providers with a single key sometimes omit kids)."""
        if kid is not None:
            return self._named.get(kid)
        if len(self._unnamed) == 1 and not self._named:
            return self._unnamed[0]
        return None

    def _may_fetch(self) -> bool:
        """A fetch in progress may be joined; a new one only ``jwt_jwks_min_interval``
        after the last one a JWT caused (fetches at start and periodic ones do not count:
        no caller decides when they happen)."""
        if self._fetching is not None and not self._fetching.done():
            return True
        return time.monotonic() - self._last_demand >= self._settings.jwt_jwks_min_interval

    # -- fetching --------------------------------------------------------------------------

    async def refresh(self, *, on_demand: bool = False) -> bool:
        """Fetch the key set now (joining a fetch in progress); whether it succeeded.
        ``on_demand``: a JWT naming an unknown key asks (see :meth:`_may_fetch`)."""
        if on_demand:
            self._last_demand = time.monotonic()
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return await asyncio.shield(self._fetching)

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch the set every ``jwt_jwks_refresh_interval`` until ``stopping``; after a
        failure, sooner (1 s doubling up to a minute)."""
        retry = Backoff(first=RETRY_BASE, cap=RETRY_CAP)
        while not stopping.is_set():
            if self.reachable:
                retry.succeeded()
                delay = self._settings.jwt_jwks_refresh_interval
            else:
                delay = retry.failed()
            await self._wait(stopping, delay)
            if not stopping.is_set():
                await self.refresh()

    async def _fetch(self) -> bool:
        try:
            url = self._jwks_url or await self._discover()
            named, unnamed = signing_keys(await self._get(url))
        except JwksUnavailable as exc:
            self.reachable = False
            FETCHES.labels("failed").inc()
            log.warning(
                "cannot fetch the identity provider's signing keys; the keys already "
                "known stay trusted",
                extra={"source": self.source, "error": str(exc), "keys": len(self._named)},
            )
            if self._discovery_url:
                self._jwks_url = ""  # discover again next time: the set may have moved
            return False
        FETCHES.labels("ok").inc()
        self.reachable = True
        changed = self.loaded and (named != self._named or unnamed != self._unnamed)
        self._named, self._unnamed, self.loaded = named, unnamed, True
        KEYS.set(len(named) + len(unnamed))
        if self._discovery_url:
            self._jwks_url = url
        if changed:
            log.info("the identity provider's signing keys changed", extra={"kids": sorted(named)})
            self._on_change()
        return True

    async def _discover(self) -> str:
        document = await self._get(self._discovery_url)
        if not isinstance(document, dict):
            raise JwksUnavailable("the discovery document is not a JSON object")
        if document.get("issuer") != self._settings.jwt_issuer:
            raise JwksUnavailable(
                f"the discovery document names issuer {str(document.get('issuer'))[:200]!r},"
                f" not {self._settings.jwt_issuer!r}"
            )
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise JwksUnavailable("the discovery document has no jwks_uri")
        return uri

    async def _get(self, url: str) -> Any:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self._settings.jwt_jwks_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}) as answer:
                body = await answer.content.read(MAX_DOCUMENT + 1)
                if answer.status != 200:
                    raise JwksUnavailable(f"{url} answered {answer.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksUnavailable(f"{url}: {exc!r}") from exc
        if len(body) > MAX_DOCUMENT:
            raise JwksUnavailable(f"{url} answered more than {MAX_DOCUMENT} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise JwksUnavailable(f"{url} did not answer JSON") from exc


def unauthorized(message: str) -> ApiError:
    """A 401 with the challenge RFC 6750 asks for."""
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="nexus"'})
