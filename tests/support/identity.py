"""An identity provider for tests: signing keys and an OpenID Connect provider on loopback
that serves discovery and a key set, rotated, broken or taken down by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


@dataclass
class Key:
    """A private key and the JWK of its public half."""

    kid: str | None
    private: Any
    jwk: dict[str, Any]

    def sign(self, claims: dict[str, Any], algorithm: str, **header: Any) -> str:
        headers = {"kid": self.kid, **header} if self.kid else header
        return jwt.encode(claims, self.private, algorithm, headers=headers)


def rsa_key(kid: str | None, **jwk: Any) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return Key(kid, private, {**public, **({"kid": kid} if kid else {}), **jwk})


def ec_key(kid: str) -> Key:
    private = ec.generate_private_key(ec.SECP256R1())
    return Key(kid, private, {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid})


def ed_key(kid: str) -> Key:
    private = ed25519.Ed25519PrivateKey.generate()
    return Key(
        kid, private, {**OKPAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid}
    )


@dataclass
class Provider:
    """An identity provider on loopback: discovery, a key set, and a switch."""

    url: str = ""
    served: list[dict[str, Any]] = field(default_factory=list)
    mode: Literal["up", "error", "unreachable"] = "up"
    issuer: str = ""
    fetches: int = 0
    discoveries: int = 0

    async def discovery(self, request: web.Request) -> web.StreamResponse:
        self.discoveries += 1
        if self.mode != "up":
            return await self.key_set(request)
        return web.json_response({"issuer": self.issuer, "jwks_uri": f"{self.url}/keys"})

    async def key_set(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/keys":
            self.fetches += 1
        if self.mode == "unreachable":
            assert request.transport is not None
            request.transport.close()  # the connection drops without an answer
        if self.mode != "up":
            return web.Response(status=503, text="maintenance")
        return web.json_response({"keys": self.served})


@asynccontextmanager
async def identity_provider() -> AsyncIterator[Provider]:
    """A :class:`Provider` served on a free loopback port, its issuer its own URL."""
    served = Provider()
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", served.discovery)
    app.router.add_get("/keys", served.key_set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    served.issuer = served.url
    try:
        yield served
    finally:
        await runner.cleanup()
