"""The Authenticator on its own: configuration, credentials, claims and the JWT cache."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from support.keys import rsa_key_pair

from nexus.core.errors import ConfigError
from nexus.core.httpapi import ApiError
from nexus.scheduler import authentication
from nexus.scheduler.authentication import Authenticator
from nexus.scheduler.settings import AuthSettings, ServiceToken

TOKEN = "unit-test-token-0123456789"
SECRET = "unit-test-hs256-secret-0123456789abcdef"
ISSUER = "https://issuer.example"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticator(**settings: Any) -> Authenticator:
    defaults: dict[str, Any] = {
        "service_tokens": (
            ServiceToken("ops", digest(TOKEN).upper()),
            ServiceToken("team", digest("team-token-0123456789"), ("echo", "sum")),
        ),
        "jwt_hs256_secret": SECRET,
        "jwt_issuer": ISSUER,
        "jwt_leeway": 0,
    }
    return Authenticator(AuthSettings(**{**defaults, **settings}))


def token(**changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "nexus", "sub": "someone", "exp": now + 60, **changes}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, "HS256")


async def refused(auth: Authenticator, header: str | None, algorithm: str = "echo") -> ApiError:
    with pytest.raises(ApiError) as caught:
        await auth.authorize(header, algorithm)
    return caught.value


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"service_tokens": (), "jwt_hs256_secret": ""}, "NEXUS__AUTH__SERVICE_TOKENS"),
        ({"jwt_issuer": ""}, "NEXUS__AUTH__JWT_ISSUER"),
        ({"service_tokens": (ServiceToken("ops", TOKEN),)}, "'ops'"),
        ({"jwt_rs256_public_key": "not a PEM key"}, "NEXUS__AUTH__JWT_RS256_PUBLIC_KEY"),
        (
            {"jwt_hs256_secret": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 me@host"},
            "NEXUS__AUTH__JWT_HS256_SECRET",
        ),
    ],
)
def test_configuration_errors_name_the_setting(settings: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        authenticator(**settings)


async def test_service_tokens_name_their_caller_and_algorithms() -> None:
    auth = authenticator()
    # the digest is configured in upper case
    assert (await auth.authorize(f"Bearer {TOKEN}", "anything")).caller == "ops"
    assert (await auth.authorize("bearer   team-token-0123456789  ", "sum")).caller == "team"
    error = await refused(auth, "Bearer team-token-0123456789", "other")
    assert (error.status, error.code) == (403, "forbidden")
    assert "'team'" in error.message and "'other'" in error.message


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic abc", f"Token {TOKEN}", "Bearer nope", "Bearer a.b.c", "Bearer é"],
)
async def test_bad_headers_get_401_with_a_challenge(header: str | None) -> None:
    error = await refused(authenticator(), header)
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.headers["WWW-Authenticate"].startswith("Bearer")


async def test_surrogates_from_undecodable_header_bytes_get_401() -> None:
    error = await refused(authenticator(), "Bearer \udcff\udcfe")
    assert error.status == 401


@pytest.mark.parametrize(
    ("claim", "may_run_echo"),
    [(["echo"], True), ("echo", True), (["*"], True), (["sum"], False), (None, False)],
)
async def test_the_algorithms_claim(claim: Any, may_run_echo: bool) -> None:
    auth = authenticator()
    header = f"Bearer {token(**{'nexus/algorithms': claim})}"
    if may_run_echo:
        assert (await auth.authorize(header, "echo")).caller == "someone"
    else:
        assert (await refused(auth, header)).status == 403


@pytest.mark.parametrize("claim", [5, {"echo": True}, [["echo"]], True])
async def test_a_malformed_algorithms_claim_is_refused(claim: Any) -> None:
    error = await refused(authenticator(), f"Bearer {token(**{'nexus/algorithms': claim})}")
    assert error.status == 401, error.message
    assert "nexus/algorithms" in error.message


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, str, bytes]:
    """A private key, its public key, and a private key of another pair."""
    private, public = rsa_key_pair()
    other, _ = rsa_key_pair()
    return private, public, other


def unsigned(claims: dict[str, Any]) -> str:
    """A JWT with ``alg: none`` and no signature, as an attacker would send it."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_valid_hs256_and_rs256_jwts_are_accepted(rsa_keys: tuple[bytes, str, bytes]) -> None:
    private, public, _ = rsa_keys
    auth = authenticator(jwt_rs256_public_key=public, jwt_leeway=30)
    claims = {"iss": ISSUER, "aud": "nexus", "sub": "rs", "exp": int(time.time()) + 60}
    assert (await auth.authenticate(f"Bearer {token()}")).caller == "someone"
    assert (
        await auth.authenticate(f"Bearer {jwt.encode(claims, private, 'RS256')}")
    ).caller == "rs"
    within_leeway = token(exp=int(time.time()) - 10)
    assert (await auth.authenticate(f"Bearer {within_leeway}")).caller == "someone"


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("wrong audience", "audience"),
        ("no audience", "aud"),
        ("wrong issuer", "issuer"),
        ("wrong HS256 secret", "signature"),
        ("alg none", "none"),
        ("RS256 signed by another key", "signature"),
        ("expired beyond the leeway", "expired"),
        ("a blank subject", "sub claim must name the caller"),
        ("a subject not a string", "subject must be a string"),
    ],
)
async def test_a_forged_or_stale_jwt_gets_401_naming_the_problem(
    rsa_keys: tuple[bytes, str, bytes], case: str, names: str
) -> None:
    _, public, other = rsa_keys
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "nexus", "sub": "someone", "exp": now + 60}
    credential = {
        "wrong audience": token(aud="someone-else"),
        "no audience": token(aud=None),
        "wrong issuer": token(iss="https://elsewhere.example"),
        "wrong HS256 secret": jwt.encode(claims, SECRET[::-1], "HS256"),
        "alg none": unsigned(claims),
        "RS256 signed by another key": jwt.encode(claims, other, "RS256"),
        "expired beyond the leeway": token(exp=now - 31),
        "a blank subject": token(sub=" "),
        "a subject not a string": jwt.encode({**claims, "sub": ["a"]}, SECRET, "HS256"),
    }[case]
    auth = authenticator(jwt_rs256_public_key=public, jwt_leeway=30)
    error = await refused(auth, f"Bearer {credential}")
    assert (error.status, error.code) == (401, "unauthorized"), error.message
    assert names in error.message.lower(), error.message
    assert error.headers["WWW-Authenticate"].startswith("Bearer")


class Clock:
    """The time as both the cache and PyJWT see it, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = time.time()
        clock = self

        class Now(datetime.datetime):
            @classmethod
            def now(cls, tz: datetime.tzinfo | None = None) -> Now:
                return cls.fromtimestamp(clock.now, tz)

        monkeypatch.setattr(authentication, "time", SimpleNamespace(time=lambda: self.now))
        monkeypatch.setattr(jwt.api_jwt, "datetime", Now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The JWTs whose signature and claims were checked, in order."""
    calls: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


async def test_a_verified_jwt_is_served_from_the_cache(decoded: list[str]) -> None:
    auth = authenticator()
    first, second = token(sub="first"), token(sub="second")
    principal = await auth.authenticate(f"Bearer {first}")
    assert principal.caller == "first"
    for _ in range(3):
        assert await auth.authenticate(f"Bearer {first}") is principal
    assert decoded == [first]
    assert (await auth.authenticate(f"Bearer {second}")).caller == "second"
    assert decoded == [first, second]

    forged = token(aud="someone-else")
    for _ in range(2):  # a refused JWT is not remembered as accepted
        assert (await refused(auth, f"Bearer {forged}")).status == 401
    assert decoded == [first, second, forged, forged]


async def test_the_cache_forgets_the_least_recently_used_jwt(
    decoded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(authentication, "_CACHE_SIZE", 2)
    auth = authenticator()
    busy, other, third = token(sub="busy"), token(sub="other"), token(sub="third")
    for credential in (busy, other, busy, third):  # busy used after other: other goes
        await auth.authenticate(f"Bearer {credential}")
    assert decoded == [busy, other, third]
    await auth.authenticate(f"Bearer {busy}")
    assert decoded == [busy, other, third]


@pytest.mark.parametrize("leeway", [0, 30])
async def test_a_cached_jwt_stops_working_when_it_expires(
    clock: Clock, decoded: list[str], leeway: int
) -> None:
    auth = authenticator(jwt_leeway=leeway)
    expires = int(clock.now) + 60
    header = f"Bearer {token(exp=expires, **{'nexus/algorithms': ['*']})}"
    assert (await auth.authorize(header, "echo")).caller == "someone"
    clock.now = expires + leeway - 0.5  # still valid: served from the cache
    assert (await auth.authorize(header, "echo")).caller == "someone"
    assert len(decoded) == 1

    clock.now = expires + leeway + 0.5
    for _ in range(2):  # refused, and not accepted again from the cache
        error = await refused(auth, header)
        assert (error.status, error.message) == (401, "the JWT has expired")
    assert len(decoded) == 3


def test_a_short_hs256_secret_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigError, match="NEXUS__AUTH__JWT_HS256_SECRET: expected at least 32 bytes"
    ):
        Authenticator(AuthSettings(jwt_hs256_secret="too-short", jwt_issuer="issuer"))


async def test_a_jwt_is_issued_at_its_iat_else_its_nbf_else_when_first_verified() -> None:
    """The issue time orders a caller's JWTs when their rights are stored."""
    auth, now = authenticator(), int(time.time())
    assert (await auth.authenticate(f"Bearer {token(iat=now - 30, nbf=now - 20)}")).issued == now - 30  # fmt: skip
    assert (await auth.authenticate(f"Bearer {token(nbf=now - 20)}")).issued == now - 20
    before = time.time()
    issued = (await auth.authenticate(f"Bearer {token()}")).issued
    assert issued is not None and before <= issued <= time.time()
    assert (await auth.authenticate(f"Bearer {TOKEN}")).issued is None  # not a JWT
