"""Paths to handlers as the API server shapes them, and the plain 404/405 for the rest."""

from __future__ import annotations

import aiohttp
import pytest

from nexus_dev.cluster.emulators import Shard
from nexus_dev.cluster.routing import NoRoute, match

from .conftest import trusting

CORE = {"group": "", "version": "v1"}
BATCH = {"group": "batch", "version": "v1"}


@pytest.mark.parametrize(
    ("method", "path", "handler", "params"),
    [
        ("GET", "/version", "version", {}),
        ("GET", "/version/", "version", {}),
        ("GET", "/api/", "core_versions", {}),
        ("GET", "/apis", "groups", {}),
        ("GET", "/api/v1", "resources", CORE),
        ("GET", "/apis/batch/v1/", "resources", BATCH),
        ("GET", "/metrics", "metrics", {}),
        ("GET", "/readyz", "probe", {}),
        ("GET", "/api/v1/namespaces/nexus", "namespace", {"namespace": "nexus"}),
        ("GET", "/api/v1/pods", "collection", {**CORE, "plural": "pods"}),
        (
            "POST",
            "/apis/batch/v1/namespaces/ns/jobs",
            "collection",
            {**BATCH, "namespace": "ns", "plural": "jobs"},
        ),
        (
            "DELETE",
            "/apis/batch/v1/namespaces/ns/jobs/j",
            "item",
            {**BATCH, "namespace": "ns", "plural": "jobs", "name": "j"},
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods/p/log",
            "subresource",
            {**CORE, "namespace": "ns", "plural": "pods", "name": "p", "sub": "log"},
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods/a%2Fb",
            "item",
            {**CORE, "namespace": "ns", "plural": "pods", "name": "a/b"},
        ),
    ],
)
def test_paths(method: str, path: str, handler: str, params: dict[str, str]) -> None:
    assert match(method, path) == (handler, params)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nothing",
        "/metrics/",
        "/apis/batch",
        "/apis/batch/v1/namespaces/ns",
        "/api/v2/namespaces/ns",
        "/api/v1/things/ns/pods",
        "/api/v1/namespaces/ns/pods/",
        "/api/v1//pods",
        "/api/v1/namespaces/ns/pods/p/log/more",
    ],
)
def test_unknown_paths_are_not_found(path: str) -> None:
    with pytest.raises(NoRoute) as raised:
        match("GET", path)
    assert raised.value.status == 404


@pytest.mark.parametrize("path", ["/version", "/api/v1", "/api/v1/namespaces/ns", "/metrics"])
def test_get_only_paths(path: str) -> None:
    with pytest.raises(NoRoute) as raised:
        match("POST", path)
    assert raised.value.status == 405


async def test_answers_over_the_wire(shard: Shard) -> None:
    auth = {"Authorization": f"Bearer {shard.token}"}
    async with aiohttp.ClientSession(connector=trusting(shard)) as session:
        async with session.get(f"{shard.url}/nothing/here", headers=auth) as response:
            assert (response.status, await response.text()) == (404, "404: Not Found")
        async with session.get(f"{shard.url}/nothing/here") as response:
            assert response.status == 401  # authentication first, as before
        async with session.post(f"{shard.url}/version", headers=auth) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET"
        async with session.get(f"{shard.url}/healthz") as response:
            assert (response.status, await response.text()) == (200, "ok")
