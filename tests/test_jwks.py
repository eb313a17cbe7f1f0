"""JWTs checked with an identity provider's keys, against a real HTTP provider on loopback.

The provider (:class:`Provider`) serves an OpenID Connect discovery document and a key
set that the test rotates, breaks or takes down, and counts the fetches. The clock that
rate-limits fetches is the test's (:class:`Clock`); nothing waits for real.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from support.identity import Key, Provider, ec_key, ed_key, identity_provider, rsa_key

from nexus.core.errors import ConfigError
from nexus.core.httpapi import ApiError
from nexus.scheduler import jwks
from nexus.scheduler.authentication import Authenticator
from nexus.scheduler.jwks import JwksKeys
from nexus.scheduler.settings import AuthSettings, ServiceToken

HS_SECRET = "hs256-secret-for-tests-0123456789abcdef"
SERVICE_TOKEN = "service-token-0123456789"


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "A": rsa_key("A"),
        "B": rsa_key("B"),
        "E": ec_key("E"),
        "D": ed_key("D"),
        "P": rsa_key("P", alg="PS256"),
    }


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[Provider]:
    async with identity_provider() as served:
        yield served


class Clock:
    """The monotonic clock that spaces fetches, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(jwks, "time", SimpleNamespace(monotonic=lambda: self.now))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def claims(issuer: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "aud": "nexus", "sub": "idp-user", "exp": now + 60, **changes}


def settings(provider: Provider, **changes: Any) -> AuthSettings:
    defaults: dict[str, Any] = {
        "service_tokens": (
            ServiceToken("ops", hashlib.sha256(SERVICE_TOKEN.encode()).hexdigest()),
        ),
        "jwt_hs256_secret": HS_SECRET,
        "jwt_jwks_url": f"{provider.url}/keys",
        "jwt_issuer": provider.issuer,
    }
    return AuthSettings(**{**defaults, **changes})


@pytest_asyncio.fixture
async def started() -> AsyncIterator[list[Authenticator]]:
    """Authenticators a test starts, their key sets closed afterwards."""
    made: list[Authenticator] = []
    yield made
    for authenticator in made:
        assert authenticator.jwks is not None
        await authenticator.jwks.close()


@pytest.fixture
def start(started: list[Authenticator], clock: Clock) -> Any:
    async def start(auth_settings: AuthSettings) -> Authenticator:
        """An authenticator started as the scheduler starts it: the key set fetched once."""
        authenticator = Authenticator(auth_settings)
        started.append(authenticator)
        assert authenticator.jwks is not None
        await authenticator.jwks.refresh()
        return authenticator

    return start


async def refused(auth: Authenticator, token: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await auth.authenticate(f"Bearer {token}")
    return caught.value


async def caller(auth: Authenticator, token: str) -> str:
    return (await auth.authenticate(f"Bearer {token}")).caller


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}."


# -- rotation ---------------------------------------------------------------------------------


async def test_a_rotation_is_followed_with_one_fetch(
    provider: Provider, keys: dict[str, Key], start: Any, clock: Clock
) -> None:
    provider.served = [keys["A"].jwk]
    auth = await start(settings(provider))
    assert provider.fetches == 1
    token_a = keys["A"].sign(claims(provider.issuer, sub="with-a"), "RS256")
    assert await caller(auth, token_a) == "with-a"
    assert provider.fetches == 1  # a known kid: no fetch

    provider.served = [keys["A"].jwk, keys["B"].jwk]  # the provider rotates to B
    token_b = keys["B"].sign(claims(provider.issuer, sub="with-b"), "RS256")
    assert await caller(auth, token_b) == "with-b"
    assert provider.fetches == 2  # one fetch for the unknown kid
    again = keys["B"].sign(claims(provider.issuer, sub="again"), "RS256")
    assert await caller(auth, again) == "again"
    assert provider.fetches == 2

    provider.served = [keys["B"].jwk]  # A withdrawn: found at the next periodic fetch
    clock.now += 3600
    assert await auth.jwks.refresh() is True  # type: ignore[union-attr]
    assert provider.fetches == 3
    error = await refused(auth, token_a)  # once verified, but its key is gone
    assert (error.status, error.message) == (401, "the identity provider has no signing key 'A'")
    assert provider.fetches == 4  # an unknown kid: fetched once more, in case A came back
    assert (await refused(auth, token_a)).status == 401
    assert provider.fetches == 4  # and not again within the interval


async def test_the_key_set_is_found_by_oidc_discovery(
    provider: Provider, keys: dict[str, Key], start: Any
) -> None:
    provider.served = [keys["A"].jwk]
    auth = await start(settings(provider, jwt_jwks_url="", jwt_oidc_discovery=True))
    assert (provider.discoveries, provider.fetches) == (1, 1)
    assert await caller(auth, keys["A"].sign(claims(provider.issuer), "RS256")) == "idp-user"


async def test_a_discovery_document_of_another_issuer_is_not_trusted(
    provider: Provider, keys: dict[str, Key], start: Any
) -> None:
    provider.served = [keys["A"].jwk]
    provider.issuer = "https://impostor.example"
    auth = await start(settings(provider, jwt_jwks_url="", jwt_oidc_discovery=True))
    assert provider.fetches == 0
    error = await refused(auth, keys["A"].sign(claims(provider.url), "RS256"))
    assert error.status == 503


async def test_a_flood_of_unknown_kids_costs_one_fetch_per_interval(
    provider: Provider, keys: dict[str, Key], start: Any, clock: Clock
) -> None:
    provider.served = [keys["A"].jwk]
    auth = await start(settings(provider))
    clock.now += 60

    def bogus() -> str:
        return keys["A"].sign(claims(provider.issuer), "RS256", kid=str(uuid.uuid4()))

    for expected_fetches in (2, 2, 3):  # a flood, another within the interval, one after it
        answers = await asyncio.gather(*(refused(auth, bogus()) for _ in range(200)))
        assert {(a.status, a.code) for a in answers} == {(401, "unauthorized")}
        assert provider.fetches == expected_fetches
        clock.now += 15  # the interval is 30 s
    token = keys["A"].sign(claims(provider.issuer, sub="still-fine"), "RS256")
    assert await caller(auth, token) == "still-fine"


# -- the provider down ------------------------------------------------------------------------


@pytest.mark.parametrize("outage", ["error", "unreachable"])
async def test_the_provider_down_at_start(
    provider: Provider, keys: dict[str, Key], start: Any, clock: Clock, outage: str
) -> None:
    """The service starts; static keys and service tokens work; JWTs that need the
    provider's keys get 503 with Retry-After until it is back."""
    provider.served = [keys["A"].jwk]
    provider.mode = outage  # type: ignore[assignment]
    auth = await start(settings(provider))
    assert auth.jwks is not None and not auth.jwks.reachable
    assert await caller(auth, SERVICE_TOKEN) == "ops"
    static = jwt.encode(claims(provider.issuer, sub="static"), HS_SECRET, "HS256")
    assert await caller(auth, static) == "static"
    token = keys["A"].sign(claims(provider.issuer), "RS256")
    error = await refused(auth, token)
    assert (error.status, error.code, error.headers) == (503, "unavailable", {"Retry-After": "5"})
    assert "identity provider" in error.message

    provider.mode = "up"
    error = await refused(auth, token)  # within the interval of the last attempt: no fetch
    assert error.status == 503
    clock.now += 30
    assert await caller(auth, token) == "idp-user"


async def test_the_provider_down_later_keeps_the_keys_it_gave(
    provider: Provider, keys: dict[str, Key], start: Any, clock: Clock
) -> None:
    provider.served = [keys["A"].jwk]
    auth = await start(settings(provider))
    provider.mode = "unreachable"
    clock.now += 3600
    assert await auth.jwks.refresh() is False  # type: ignore[union-attr]
    assert await caller(auth, keys["A"].sign(claims(provider.issuer), "RS256")) == "idp-user"
    clock.now += 60
    error = await refused(auth, keys["B"].sign(claims(provider.issuer), "RS256"))
    assert error.status == 503  # B may be a new key: Nexus cannot tell


# -- algorithms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "algorithm"),
    [
        ("A", "RS256"),
        ("A", "RS512"),
        ("A", "PS256"),
        ("E", "ES256"),
        ("D", "EdDSA"),
        ("P", "PS256"),
    ],
)
async def test_every_asymmetric_algorithm_of_the_key(
    provider: Provider, keys: dict[str, Key], start: Any, kid: str, algorithm: str
) -> None:
    provider.served = [key.jwk for key in keys.values()]
    auth = await start(settings(provider))
    token = keys[kid].sign(claims(provider.issuer, sub=algorithm), algorithm)
    assert await caller(auth, token) == algorithm


async def test_alg_none_and_algorithm_confusion_are_refused(
    provider: Provider, keys: dict[str, Key], start: Any
) -> None:
    provider.served = [key.jwk for key in keys.values()]
    auth = await start(settings(provider))
    payload = claims(provider.issuer)
    public_pem = (
        keys["A"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # HS256 with the provider's public key as the shared secret: the classic confusion
    hmac_with_public_key = _hmac_token(payload, public_pem, {"kid": "A"})
    cases = {
        "alg none": (unsigned({"alg": "none", "kid": "A"}, payload), "none are not accepted"),
        "HS256 under an RSA kid": (hmac_with_public_key, "does not sign with HS256"),
        "HS256 with the public key, no kid": (
            _hmac_token(payload, public_pem, {}),
            "signature verification failed",
        ),
        "RS256 under an EC kid": (
            keys["A"].sign(payload, "RS256", kid="E"),
            "does not sign with RS256",
        ),
        "ES256 under an RSA kid": (
            keys["E"].sign(payload, "ES256", kid="A"),
            "does not sign with ES256",
        ),
        "RS256 under a PS256-only key": (
            keys["P"].sign(payload, "RS256"),
            "does not sign with RS256",
        ),
        "signed by another key": (keys["B"].sign(payload, "RS256", kid="A"), "signature"),
    }
    for case, (token, message) in cases.items():
        error = await refused(auth, token)
        assert error.status == 401, case
        assert message in error.message.lower() or message in error.message, (case, error.message)


def _hmac_token(payload: dict[str, Any], secret: bytes, header: dict[str, Any]) -> str:
    """An HS256 JWT with any bytes as the secret (PyJWT refuses PEM keys as HMAC secrets,
    as it should, so this signs by hand, as an attacker would)."""
    import hmac

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = part(json.dumps(payload).encode())
    signature = hmac.digest(secret, f"{head}.{body}".encode(), "sha256")
    return f"{head}.{body}.{part(signature)}"


async def test_unusable_keys_of_the_set_are_ignored(
    provider: Provider, keys: dict[str, Key], start: Any
) -> None:
    provider.served = [
        {"kty": "oct", "kid": "S", "k": base64.urlsafe_b64encode(HS_SECRET.encode()).decode()},
        {**keys["B"].jwk, "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "??"},
        {"kty": "EC", "kid": "odd-curve", "crv": "P-192", "x": "AA", "y": "AA"},
        "not a key",
        keys["A"].jwk,
    ]
    auth = await start(settings(provider))
    assert await caller(auth, keys["A"].sign(claims(provider.issuer), "RS256")) == "idp-user"
    shared = jwt.encode(claims(provider.issuer), HS_SECRET, "HS256", headers={"kid": "S"})
    assert await caller(auth, shared) == "idp-user"  # the static secret, not the oct key
    for kid, signer in (("B", keys["B"]), ("broken", keys["A"])):
        error = await refused(auth, signer.sign(claims(provider.issuer), "RS256", kid=kid))
        assert error.status == 401, kid


async def test_a_key_set_without_usable_keys_is_a_failed_fetch(
    provider: Provider, start: Any
) -> None:
    provider.served = [{"kty": "oct", "kid": "S", "k": "c2VjcmV0"}]
    auth = await start(settings(provider))
    assert auth.jwks is not None and not auth.jwks.reachable


async def test_a_single_key_without_kid_checks_jwts_without_kid(
    provider: Provider, start: Any
) -> None:
    lone = rsa_key(None)
    provider.served = [lone.jwk]
    auth = await start(settings(provider))
    assert await caller(auth, lone.sign(claims(provider.issuer), "RS256")) == "idp-user"


# -- configuration and the periodic refresh ---------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"jwt_jwks_url": "ftp://idp/keys"}, "NEXUS__AUTH__JWT_JWKS_URL: expected an http"),
        ({"jwt_oidc_discovery": True}, "NEXUS__AUTH__JWT_OIDC_DISCOVERY: set either"),
        ({"jwt_issuer": ""}, "NEXUS__AUTH__JWT_ISSUER: required"),
    ],
)
def test_configuration_errors(provider: Provider, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Authenticator(settings(provider, **changes))


def test_an_identity_provider_alone_is_enough_configuration(provider: Provider) -> None:
    Authenticator(settings(provider, service_tokens=(), jwt_hs256_secret=""))


async def test_the_key_set_is_fetched_again_periodically_and_sooner_after_a_failure(
    provider: Provider, keys: dict[str, Key]
) -> None:
    provider.served = [keys["A"].jwk]
    slept: list[float] = []
    sleeping: asyncio.Queue[asyncio.Event] = asyncio.Queue()

    async def wait(stopping: asyncio.Event, seconds: float) -> None:
        """The loop's wait, ended by the test instead of by time."""
        slept.append(seconds)
        woken = asyncio.Event()
        sleeping.put_nowait(woken)
        await woken.wait()

    stopping = asyncio.Event()
    keyset = JwksKeys(settings(provider, jwt_jwks_refresh_interval=900), wait=wait)
    try:
        await keyset.refresh()
        loop = asyncio.create_task(keyset.run(stopping))
        woken = await asyncio.wait_for(sleeping.get(), 10)
        for mode in ("up", "error", "error", "up"):
            provider.mode = mode  # type: ignore[assignment]
            woken.set()  # the wait ends: the loop fetches, then waits again
            woken = await asyncio.wait_for(sleeping.get(), 10)
        stopping.set()
        woken.set()
        await asyncio.wait_for(loop, 10)
    finally:
        await keyset.close()
    assert slept == [900, 900, 1.0, 2.0, 900]
    assert provider.fetches == 5 and keyset.reachable
