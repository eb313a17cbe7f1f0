"""The Authenticator on its own: configuration, credentials, claims and the JWT cache."""

from __future__ import annotations

import datetime
import hashlib
import time
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

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


def refused(auth: Authenticator, header: str | None, algorithm: str = "echo") -> ApiError:
    with pytest.raises(ApiError) as caught:
        auth.authorize(header, algorithm)
    return caught.value


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"service_tokens": (), "jwt_hs256_secret": ""}, "NEXUS__AUTH__SERVICE_TOKENS"),
        ({"jwt_issuer": ""}, "NEXUS__AUTH__JWT_ISSUER"),
        ({"service_tokens": (ServiceToken("ops", TOKEN),)}, "'ops'"),
    ],
)
def test_configuration_errors_name_the_setting(settings: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        authenticator(**settings)


def test_service_tokens_name_their_caller_and_algorithms() -> None:
    auth = authenticator()
    assert auth.authorize(f"Bearer {TOKEN}", "anything").caller == "ops"  # digest in upper case
    assert auth.authorize("bearer   team-token-0123456789  ", "sum").caller == "team"
    error = refused(auth, "Bearer team-token-0123456789", "other")
    assert (error.status, error.code) == (403, "forbidden")
    assert "'team'" in error.message and "'other'" in error.message


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic abc", f"Token {TOKEN}", "Bearer nope", "Bearer a.b.c", "Bearer é"],
)
def test_bad_headers_get_401_with_a_challenge(header: str | None) -> None:
    error = refused(authenticator(), header)
    assert (error.status, error.code) == (401, "unauthorized")
    assert error.headers["WWW-Authenticate"].startswith("Bearer")


def test_surrogates_from_undecodable_header_bytes_get_401() -> None:
    error = refused(authenticator(), "Bearer \udcff\udcfe")
    assert error.status == 401


@pytest.mark.parametrize(
    ("claim", "may_run_echo"),
    [(["echo"], True), ("echo", True), (["*"], True), (["sum"], False), (None, False)],
)
def test_the_algorithms_claim(claim: Any, may_run_echo: bool) -> None:
    auth = authenticator()
    header = f"Bearer {token(**{'nexus/algorithms': claim})}"
    if may_run_echo:
        assert auth.authorize(header, "echo").caller == "someone"
    else:
        assert refused(auth, header).status == 403


@pytest.mark.parametrize("claim", [5, {"echo": True}, [["echo"]], True])
def test_a_malformed_algorithms_claim_is_refused(claim: Any) -> None:
    error = refused(authenticator(), f"Bearer {token(**{'nexus/algorithms': claim})}")
    assert error.status == 401, error.message
    assert "nexus/algorithms" in error.message


def test_a_cached_jwt_stops_working_when_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = authenticator()
    expires = int(time.time()) + 60
    header = f"Bearer {token(exp=expires, **{'nexus/algorithms': ['*']})}"
    assert auth.authorize(header, "echo").caller == "someone"
    assert auth.authorize(header, "echo").caller == "someone"  # from the cache

    later = expires + 1.0

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Later:
            return cls.fromtimestamp(later, tz)

    monkeypatch.setattr(authentication, "time", SimpleNamespace(time=lambda: later))
    monkeypatch.setattr(jwt.api_jwt, "datetime", Later)
    error = refused(auth, header)
    assert (error.status, error.message) == (401, "the JWT has expired")


def test_a_short_hs256_secret_is_a_configuration_error() -> None:
    with pytest.raises(
        ConfigError, match="NEXUS__AUTH__JWT_HS256_SECRET: expected at least 32 bytes"
    ):
        Authenticator(AuthSettings(jwt_hs256_secret="too-short", jwt_issuer="issuer"))
