"""The shared JSON errors and body parsing, on a real aiohttp server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import REGISTRY

from nexus.core.errors import (
    DependencyError,
    QueueUnavailable,
    RunNotFound,
    ShardUnavailable,
    StorageUnavailable,
    StoreUnavailable,
    TransitionRejected,
)
from nexus.core.httpapi import (
    ApiError,
    finish_routes,
    json_errors,
    json_response,
    read_json_object,
)

MAX_BODY = 1024


async def echo(request: web.Request) -> web.Response:
    return json_response({"got": await read_json_object(request)}, 201)


async def refuse(request: web.Request) -> web.Response:
    raise ApiError(409, "conflict", "the run has finished", {"X-Run-Stage": "COMPLETED"})


async def dependency(request: web.Request) -> web.Response:
    kinds: dict[str, type[DependencyError]] = {
        "queue": QueueUnavailable,
        "store": StoreUnavailable,
        "storage": StorageUnavailable,
        "shard": ShardUnavailable,
        "other": DependencyError,
    }
    raise kinds[request.match_info["kind"]]("redis at 10.1.2.3:6379: Connection refused")


async def run_error(request: web.Request) -> web.Response:
    if request.match_info["kind"] == "missing":
        raise RunNotFound("no run 42 of algorithm 'echo'")
    raise TransitionRejected("run 42 is already COMPLETED")


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals: password=hunter2")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")


async def fine(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def any_method(request: web.Request) -> web.Response:
    return json_response({"method": request.method})


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/echo", json_errors(echo))
    app.router.add_get("/refuse", json_errors(refuse))
    app.router.add_get("/dependency/{kind}", json_errors(dependency))
    app.router.add_get("/run/{kind}", json_errors(run_error))
    app.router.add_get("/crash", json_errors(crash))
    app.router.add_get("/redirect", json_errors(redirect))
    app.router.add_get("/fine", json_errors(fine))
    app.router.add_route("*", "/any/{name}", json_errors(any_method))
    finish_routes(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as answer:
        body = await answer.json() if answer.content_type == "application/json" else None
        return answer.status, dict(answer.headers), body


async def test_success_passes_through(http: aiohttp.ClientSession, base_url: str) -> None:
    status, _, body = await call(http, "GET", f"{base_url}/fine")
    assert (status, body) == (200, {"ok": True})
    status, _, body = await call(http, "POST", f"{base_url}/echo", data=b'{"a": [1]}')
    assert (status, body) == (201, {"got": {"a": [1]}})


async def test_api_error_becomes_its_json_answer(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    status, headers, body = await call(http, "GET", f"{base_url}/refuse")
    assert status == 409
    assert body == {"error": "conflict", "message": "the run has finished"}
    assert headers["X-Run-Stage"] == "COMPLETED"
    assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    ("kind", "status", "answer"),
    [
        ("missing", 404, {"error": "not_found", "message": "no run 42 of algorithm 'echo'"}),
        ("finished", 409, {"error": "conflict", "message": "run 42 is already COMPLETED"}),
    ],
)
async def test_a_run_that_is_not_there_or_has_finished_is_answered_as_such(
    http: aiohttp.ClientSession, base_url: str, kind: str, status: int, answer: dict[str, str]
) -> None:
    got_status, _, body = await call(http, "GET", f"{base_url}/run/{kind}")
    assert (got_status, body) == (status, answer)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an array"),
        (b'"text"', "not a string"),
        (b"null", "not null"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_bad_bodies_are_400_naming_the_problem(
    http: aiohttp.ClientSession, base_url: str, body: bytes, fragment: str
) -> None:
    status, _, answer = await call(http, "POST", f"{base_url}/echo", data=body)
    assert status == 400
    assert answer["error"] == "malformed_json"
    assert fragment in answer["message"]


async def test_a_body_that_arrives_in_pieces_is_read_whole(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(0.05)  # the handler starts before the rest has come
            yield part

    body = pieces(b'{"a": [1, ', b'2, 3], "b": ', b'"x"}')
    status, _, answer = await call(http, "POST", f"{base_url}/echo", data=body)
    assert (status, answer) == (201, {"got": {"a": [1, 2, 3], "b": "x"}})


async def test_oversize_body_is_413(http: aiohttp.ClientSession, base_url: str) -> None:
    status, _, answer = await call(
        http, "POST", f"{base_url}/echo", data=b"[" + b"1," * MAX_BODY + b"1]"
    )
    assert status == 413
    assert answer["error"] == "payload_too_large"
    assert "NEXUS__HTTP__MAX_BODY_SIZE" in answer["message"]


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("queue", "the queue"),
        ("store", "the checkpoint store"),
        ("storage", "object storage"),
        ("shard", "API server"),
        ("other", "depends on"),
    ],
)
async def test_unavailable_dependency_is_503_with_retry_after(
    http: aiohttp.ClientSession,
    base_url: str,
    kind: str,
    what: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # each refusal in the debug log; the outage itself is said once by the component's
    # client (nexus.core.outages), not once per refused request
    with caplog.at_level(logging.DEBUG, logger="nexus.core.httpapi"):
        status, headers, answer = await call(http, "GET", f"{base_url}/dependency/{kind}")
    assert status == 503
    assert int(headers["Retry-After"]) > 0
    assert answer["error"] == "unavailable"
    assert what in answer["message"]
    assert "10.1.2.3" not in answer["message"]  # where it runs stays in the log
    assert any("10.1.2.3" in r.getMessage() for r in caplog.records)


async def test_unexpected_error_is_500_without_internals(
    http: aiohttp.ClientSession, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="nexus.core.httpapi"):
        status, _, answer = await call(http, "GET", f"{base_url}/crash")
    assert status == 500
    assert answer == {"error": "internal_error", "message": "an unexpected error occurred"}
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1  # logged once, with the traceback
    assert "hunter2" in str(logged[0].exc_info[1])


async def test_routing_errors_are_json_too(http: aiohttp.ClientSession, base_url: str) -> None:
    status, _, answer = await call(http, "GET", f"{base_url}/no/such/route")
    assert status == 404
    assert answer == {"error": "not_found", "message": "no such route"}
    status, headers, answer = await call(http, "DELETE", f"{base_url}/fine")
    assert status == 405
    assert answer["error"] == "method_not_allowed"
    assert "GET" in headers["Allow"]


def _answered(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("nexus_http_request_duration_seconds_count", labels) or 0.0


async def test_answers_are_counted_by_route_template_method_and_status(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    asked = [
        ("GET", "/fine", "/fine", "200"),
        ("HEAD", "/fine", "/fine", "200"),
        ("POST", "/any/a", "/any/{name}", "200"),
        ("PUT", "/any/b", "/any/{name}", "200"),
        ("GET", "/crash", "/crash", "500"),
        ("GET", "/redirect", "/redirect", "302"),
        ("POST", "/fine", "/fine", "405"),
        ("GET", "/no/such/route", "(no route)", "404"),
    ]
    before = [_answered(route, method, status) for method, _, route, status in asked]
    for _ in range(2):  # the second time from what the first one kept
        for method, path, _, _ in asked:
            await call(http, method, f"{base_url}{path}")
    after = [_answered(route, method, status) for method, _, route, status in asked]
    assert [b + 2 for b in before] == after


async def test_redirects_are_not_errors(http: aiohttp.ClientSession, base_url: str) -> None:
    status, headers, _ = await call(http, "GET", f"{base_url}/redirect")
    assert status == 302
    assert headers["Location"] == "/elsewhere"


def test_every_route_must_answer_its_errors_as_json() -> None:
    async def bare(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/wrapped", json_errors(bare))
    app.router.add_post("/bare", bare)
    with pytest.raises(TypeError, match="POST /bare: not wrapped"):
        finish_routes(app)
