"""Who is calling, and may they run this algorithm.

Two kinds of bearer credentials are accepted on every client route (probes and metrics
need none):

* **service tokens** from configuration, stored only as SHA-256 digests; each names its
  caller, the algorithms it may run and the grants that widen what it sees;
* **JWTs** whose issuer and audience are checked, whose caller is the ``sub`` claim and
  whose algorithms claim lists what the bearer may run, with the same meaning as a token's
  list (its grants claim likewise). They are signed with a static key — HS256 (shared
  secret) or RS256 (public key) — or with a key of the identity provider's key set
  (:mod:`nexus.scheduler.jwks`: a JWKS URL or OIDC discovery; RS*, PS*, ES*, EdDSA).

Which key checks a JWT: the key set's key its ``kid`` names, if the set has it; else the
static key of its ``alg``; else the key set fetched again (an unknown kid). The ``alg`` is
checked against the key, never trusted to pick one: ``none`` is refused, an HS256 JWT is
only ever checked with the HS256 secret and an asymmetric one only with a public key, so a
public key cannot be abused as an HMAC secret.

A running algorithm authenticates with its **run credential** (``NEXUS__RUN_CREDENTIAL``,
:mod:`nexus.core.signing`) to start child runs: it acts as its run's caller, with that
caller's rights, and may start children of its own run only, while that run is unfinished;
it sees (reads, lists, cancels) those children and no other run of its caller. A caller's
rights are those of its service tokens; a caller known only by its JWTs has those of its
most recently issued JWT, which the scheduler stores (:mod:`nexus.core.callerrights`)
before it serves a request of that JWT, since the run's container never sees it.

Verified JWTs are remembered until they expire (bounded), so a busy client does not pay for
a signature check on every request; the memory is cleared when the provider's key set
changes, so a withdrawn key's JWTs are checked again. 401 means no valid credential; 403
a valid one that may not run the algorithm; 503 that the identity provider's keys are
needed and cannot be fetched now.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm, RSAAlgorithm

from nexus.core.callerrights import NONE, CallerRights, Rights
from nexus.core.errors import ConfigError
from nexus.core.httpapi import ApiError
from nexus.core.signing import RUN_CREDENTIAL_PREFIX, Signer
from nexus.core.visibility import Viewer
from nexus.scheduler.jwks import ALGORITHMS, JwksKeys, unauthorized
from nexus.scheduler.settings import AuthSettings

_CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    caller: str
    algorithms: frozenset[str]
    weight: float | None = None
    """Fair-share weight the credential carries (a token's ``weight``, a JWT's claim)."""
    grants: frozenset[str] = frozenset()
    """Algorithms whose runs of every caller it sees (``*``: all); else only its own."""
    run: tuple[str, str] | None = None
    """(algorithm, request id) of the run whose credential this is: it may start child
    runs of that run only (:meth:`Authenticator.authenticate`)."""
    issued: float | None = None
    """When a JWT was issued (Unix seconds, :func:`_issued`): the most recently issued of a
    caller's JWTs gives its rights (:mod:`nexus.core.callerrights`)."""

    def may_run(self, algorithm: str) -> bool:
        return "*" in self.algorithms or algorithm in self.algorithms

    @property
    def viewer(self) -> Viewer:
        """What this caller may see of the runs (the store filters its reads by it)."""
        return Viewer(self.caller, self.grants, self.run)


def _prepared(algorithm: HMACAlgorithm | RSAAlgorithm, key: str, setting: str) -> Any:
    """The key as PyJWT verifies with it, prepared once, so that a key it cannot use stops
    the start with a message instead of failing requests."""
    try:
        return algorithm.prepare_key(key)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{setting}: not a usable key ({exc})") from exc


def _issued(claims: dict[str, Any], now: float) -> float:
    """When a verified JWT was issued: its ``iat``, else its ``nbf`` (it was issued no later
    than it became valid), else ``now``, as it is first seen valid. PyJWT has checked both
    claims are whole numbers no later than ``now`` plus the leeway. ``exp`` says nothing of
    the order: lifetimes differ."""
    for claim in ("iat", "nbf"):
        if claims.get(claim) is not None:
            return float(int(claims[claim]))
    return now


def _names(claims: dict[str, Any], claim: str) -> list[str]:
    """A claim listing algorithm names (a single name counts as a list of one); absent is
    empty; anything else is 401."""
    names = claims.get(claim, [])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
        raise unauthorized(f"the JWT's {claim} claim must be a list of algorithm names")
    return names


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal` or a 401."""

    def __init__(self, settings: AuthSettings, signer: Signer | None = None) -> None:
        self._signer = signer
        self._tokens = {
            t.sha256.lower(): Principal(
                t.caller, frozenset(t.algorithms), t.weight, frozenset(t.grants)
            )
            for t in settings.service_tokens
        }
        for token in settings.service_tokens:
            if len(token.sha256) != 64:
                raise ConfigError(
                    f"NEXUS__AUTH__SERVICE_TOKENS: the token of {token.caller!r} must be given"
                    " as its 64-character hex SHA-256"
                )
        self._keys: dict[str, Any] = {}
        if settings.jwt_hs256_secret:
            if len(settings.jwt_hs256_secret.encode()) < 32:  # RFC 7518 §3.2
                raise ConfigError(
                    "NEXUS__AUTH__JWT_HS256_SECRET: expected at least 32 bytes for HS256"
                )
            self._keys["HS256"] = _prepared(
                HMACAlgorithm(HMACAlgorithm.SHA256),
                settings.jwt_hs256_secret,
                "NEXUS__AUTH__JWT_HS256_SECRET",
            )
        if settings.jwt_rs256_public_key:
            self._keys["RS256"] = _prepared(
                RSAAlgorithm(RSAAlgorithm.SHA256),
                settings.jwt_rs256_public_key,
                "NEXUS__AUTH__JWT_RS256_PUBLIC_KEY",
            )
        self.caller_rights: CallerRights | None = None
        """Where the rights of callers known by their JWTs are kept for their runs'
        credentials (set once the store is open); without it, such runs start no children."""
        self.jwks: JwksKeys | None = None
        """The identity provider's keys, when configured: fetched and refreshed by the
        service (:meth:`JwksKeys.refresh` at start, :meth:`JwksKeys.run` as a loop)."""
        if settings.jwt_jwks_url or settings.jwt_oidc_discovery:
            self.jwks = JwksKeys(settings, on_change=self.forget_verified)
        if (self._keys or self.jwks) and not settings.jwt_issuer:
            raise ConfigError("NEXUS__AUTH__JWT_ISSUER: required when JWTs are enabled")
        if not self._tokens and not self._keys and not self.jwks:
            raise ConfigError(
                "NEXUS__AUTH__SERVICE_TOKENS: configure at least one service token, a JWT key"
                " or an identity provider (NEXUS__AUTH__JWT_JWKS_URL)"
            )
        self._settings = settings
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._rights: dict[str, frozenset[str]] = {}
        """What each caller of a service token may run (the union of its tokens')."""
        for principal in self._tokens.values():
            known = self._rights.get(principal.caller, frozenset())
            self._rights[principal.caller] = known | principal.algorithms
        self._weights = {p.caller: p.weight for p in self._tokens.values()}

    def forget_verified(self) -> None:
        """Check every JWT again from now on (the keys that signed them may be gone)."""
        self._verified.clear()

    async def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise unauthorized("an Authorization: Bearer <token> header is required")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        # Tokens and JWTs are ASCII; bytes that are not UTF-8 arrive here as surrogates.
        if not credential.isascii():
            raise unauthorized("the bearer token is not valid")
        principal = self._tokens.get(hashlib.sha256(credential.encode()).hexdigest())
        if principal is not None:
            return principal
        if credential.count(".") == 2 and (self._keys or self.jwks):
            return await self._jwt(credential)
        if credential.startswith(RUN_CREDENTIAL_PREFIX) and self._signer is not None:
            return await self._run(credential, self._signer)
        raise unauthorized("the bearer token is not valid")

    async def _run(self, credential: str, signer: Signer) -> Principal:
        """A running algorithm, starting children as its run's caller: with the rights of
        that caller's service tokens, or for a caller known only by its JWTs those its
        most recently issued JWT carried (stored, as the run never sees a JWT), seeing only
        the children of its run."""
        checked = signer.check_run_credential(credential)
        if checked is None:
            raise unauthorized("the run credential is not valid, or its run's deadline passed")
        algorithm, run_id, caller = checked
        rights = self._rights.get(caller)
        if rights is not None:
            weight = self._weights.get(caller)
        else:
            known = NONE if self.caller_rights is None else await self.caller_rights.of(caller)
            rights, weight = known.algorithms, known.weight
        return Principal(caller, rights, weight, run=(algorithm, run_id))

    async def _jwt(self, token: str) -> Principal:
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if now < expires + self._settings.jwt_leeway:
                self._verified.move_to_end(token)  # the least recently used goes first
                return principal
            del self._verified[token]
        s = self._settings
        try:
            header = jwt.get_unverified_header(token)
            algorithm = str(header.get("alg"))[:20]
            kid = header.get("kid")
            key = await self._key(algorithm, kid if isinstance(kid, str) else None)
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway,
                options={"require": ["exp", "iss", "aud", s.jwt_caller_claim]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("the JWT has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"the JWT is not valid: {exc}") from exc
        allowed = _names(claims, s.jwt_algorithms_claim)
        grants = _names(claims, s.jwt_grants_claim)
        caller = claims[s.jwt_caller_claim]
        if not isinstance(caller, str) or not caller.strip():
            raise unauthorized(f"the JWT's {s.jwt_caller_claim} claim must name the caller")
        weight = claims.get(s.jwt_weight_claim)
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0
        ):
            raise unauthorized(f"the JWT's {s.jwt_weight_claim} claim must be a number > 0")
        principal = Principal(
            caller,
            frozenset(allowed),
            None if weight is None else float(weight),
            frozenset(grants),
            issued=_issued(claims, now),
        )
        self._verified[token] = (principal, float(claims["exp"]))
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def _key(self, algorithm: str, kid: str | None) -> Any:
        """The key to check a JWT signed with ``algorithm`` naming ``kid`` (see the module
        docstring for the order); 401 or 503 when there is none."""
        jwks = self.jwks
        if algorithm not in self._keys and (jwks is None or algorithm not in ALGORITHMS):
            raise unauthorized(f"JWTs signed with {algorithm} are not accepted")
        if jwks is not None and kid is not None:
            known = jwks.known(kid)
            if known is not None:
                if algorithm not in known.algorithms:
                    raise unauthorized(f"the key {kid[:80]!r} does not sign with {algorithm}")
                return known.key
        key = self._keys.get(algorithm)
        if key is not None:
            return key
        assert jwks is not None  # checked above
        return await jwks.key(kid, algorithm)

    async def authorize(self, header: str | None, algorithm: str) -> Principal:
        """The caller, if it may run ``algorithm``; else 401, 403 or 503. The rights of a
        caller known only by its JWT are stored first, for its runs' credentials."""
        principal = await self.authenticate(header)
        if (
            self.caller_rights is not None
            and principal.run is None
            and principal.caller not in self._rights
        ):
            await self.caller_rights.remember(
                principal.caller,
                Rights(principal.algorithms, principal.weight),
                principal.issued if principal.issued is not None else time.time(),
            )
        if not principal.may_run(algorithm):
            raise ApiError(
                403,
                "forbidden",
                f"caller {principal.caller!r} may not run algorithm {algorithm!r}",
            )
        return principal
