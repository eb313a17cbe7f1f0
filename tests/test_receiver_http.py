"""The receiver on the lean HTTP server answers as it did on aiohttp.

Every route it has — the two completions, the probes, ``/metrics`` — and every way a
request goes wrong (no route, another method, no or a wrong token, bad names, bodies
malformed, too large, compressed or in an encoding not read) is answered with the status,
JSON error and headers that aiohttp and :func:`nexus.core.httpapi.json_errors` gave, and
counted by route template. A completion in flight when the receiver stops is committed
and answered before its store closes; one whose client went away is committed all the
same; a slow commit holds no other connection.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from support.system import SIGNING_KEY, free_port

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import HttpSettings, LogSettings, PostgresSettings, SigningSettings
from nexus.core.lifecycle import LIFECYCLE, Listener, listen
from nexus.core.runs import NewRun, Stage, Transition
from nexus.core.signing import Signer
from nexus.core.visibility import SYSTEM
from receiver.app import create_app
from receiver.completions import RECEIVER
from receiver.settings import ReceiverSettings

V12 = "/algorithm/v1.2/complete/{algorithm}/requests/{request_id}"
GO = "/algorithm/v1/complete/{algorithm}/requests/{request_id}"
MAX_BODY = 4096


@dataclass
class Served:
    base: str
    app: web.Application
    runner: web.AppRunner
    listener: Listener
    store: CheckpointStore

    async def run(self, stage: Stage = Stage.RUNNING) -> str:
        run = NewRun(
            algorithm="echo", id=uuid.uuid4(), stage=Stage.BUFFERED, caller="tester",
            received_by_host="test", applied_configuration={},
            payload_valid_for=timedelta(hours=1), payload_inline=b"{}",
        )  # fmt: skip
        await self.store.insert(run)
        if stage != Stage.BUFFERED:
            assert await self.store.transition(Transition("echo", run.id, stage))
        return str(run.id)


@pytest_asyncio.fixture
async def served(postgres_dsn: str) -> AsyncIterator[Served]:
    port = free_port()
    settings = ReceiverSettings(
        http=HttpSettings(
            host="127.0.0.1", port=port, drain_delay=0, shutdown_timeout=5, max_body_size=MAX_BODY
        ),
        log=LogSettings(format="text"),
        postgres=PostgresSettings(dsn=postgres_dsn, pool_min_size=1, pool_max_size=4),
        signing=SigningSettings(keys=(SIGNING_KEY,)),
    )
    app = await create_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    listener = await listen(runner, settings.http)
    app[LIFECYCLE].ready = True
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    try:
        yield Served(f"http://127.0.0.1:{listener.port}", app, runner, listener, store)
    finally:
        await store.close()
        await listener.close()
        await runner.cleanup()


def _token(run: str, algorithm: str = "echo") -> dict[str, str]:
    return {"Authorization": f"Bearer {Signer([SIGNING_KEY]).run_token(algorithm, run)}"}


async def _call(
    served: Served,
    method: str,
    path: str,
    *,
    data: bytes | None = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(
            method, served.base + path, data=data, json=json, headers=headers
        ) as response,
    ):
        raw = await response.read()
        body = orjson.loads(raw) if raw and "json" in response.content_type else raw
        return response.status, body, dict(response.headers)


def _count(route: str, method: str, status: int) -> float:
    value = REGISTRY.get_sample_value(
        "nexus_http_request_duration_seconds_count",
        {"route": route, "method": method, "status": str(status)},
    )
    return value or 0.0


async def test_probes_metrics_and_requests_no_route_takes(served: Served) -> None:
    assert (await _call(served, "GET", "/health/live"))[:2] == (200, {"status": "live"})
    status, body, _ = await _call(served, "HEAD", "/health/live")
    assert (status, body) == (200, b"")
    assert (await _call(served, "GET", "/health/ready"))[:2] == (200, {"status": "ready"})
    served.app[LIFECYCLE].ready = False
    assert (await _call(served, "GET", "/health/ready"))[:2] == (
        503,
        {"error": "not_ready", "message": "the service is starting or stopping"},
    )
    served.app[LIFECYCLE].ready = True
    status, text, headers = await _call(served, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert b'nexus_http_request_duration_seconds_count{method="GET",route="/health/live"' in text

    before = _count("(no route)", "GET", 404)
    assert (await _call(served, "GET", "/no/such/thing"))[:2] == (
        404,
        {"error": "not_found", "message": "no such route"},
    )
    assert _count("(no route)", "GET", 404) == before + 1
    run = str(uuid.uuid4())
    before = _count(V12, "GET", 405)
    status, body, headers = await _call(
        served, "GET", f"/algorithm/v1.2/complete/echo/requests/{run}"
    )
    assert (status, body["error"], headers["Allow"]) == (405, "method_not_allowed", "POST")
    assert body["message"] == "GET is not allowed here; use POST"
    assert _count(V12, "GET", 405) == before + 1
    status, body, headers = await _call(served, "POST", "/health/live", json={})
    assert (status, headers["Allow"]) == (405, "GET,HEAD")
    # a trailing slash or a missing segment is another path, as on aiohttp
    assert (await _call(served, "POST", f"/algorithm/v1.2/complete/echo/requests/{run}/"))[0] == 404
    assert (await _call(served, "POST", "/algorithm/v1.2/complete//requests/x"))[0] == 404


async def test_completions_on_both_paths(served: Served) -> None:
    run = await served.run()
    before = _count(V12, "POST", 200)
    status, body, headers = await _call(
        served, "POST", f"/algorithm/v1.2/complete/echo/requests/{run}",
        json={"cause": None, "message": None, "sasUri": None}, headers=_token(run),
    )  # fmt: skip
    assert (status, body) == (200, {"requestId": run, "status": "COMPLETED"})
    assert headers["Content-Type"] == "application/json"
    assert _count(V12, "POST", 200) == before + 1
    done = await served.store.result("echo", uuid.UUID(run), SYSTEM)
    assert done is not None and done.stage == Stage.COMPLETED
    # again: idempotent, the first report stands
    status, body, _ = await _call(
        served, "POST", f"/algorithm/v1.2/complete/echo/requests/{run}",
        json={"cause": "late", "message": "x"}, headers=_token(run),
    )  # fmt: skip
    assert (status, body) == (200, {"requestId": run, "status": "COMPLETED"})

    failing = await served.run()
    before = _count(GO, "POST", 202)
    status, body, _ = await _call(
        served, "POST", f"/algorithm/v1/complete/echo/requests/{failing.upper()}",
        json={"errorCause": "oom", "errorDetails": "killed"}, headers=_token(failing),
    )  # fmt: skip
    assert (status, body) == (202, {"requestId": failing, "status": "FAILED"})
    assert _count(GO, "POST", 202) == before + 1
    # a percent-encoded segment is decoded, as aiohttp decodes it
    escaped = await served.run()
    path = f"/algorithm/v1.2/complete/%65cho/requests/{escaped}"
    status, body, _ = await _call(served, "POST", path, json={}, headers=_token(escaped))
    assert (status, body["status"]) == (200, "COMPLETED")


async def test_refusals_are_json_errors(served: Served) -> None:
    run = str(uuid.uuid4())
    path = f"/algorithm/v1.2/complete/echo/requests/{run}"
    token = _token(run)

    async def error(**kwargs: Any) -> tuple[int, str, str]:
        status, body, _ = await _call(served, "POST", kwargs.pop("path", path), **kwargs)
        return status, body["error"], body["message"]

    assert await error(json={}) == (
        401, "unauthorized", "a completion must carry its run token (Bearer)",
    )  # fmt: skip
    assert (await error(json={}, headers=_token(str(uuid.uuid4()))))[:2] == (401, "unauthorized")
    assert (await error(json={}, headers=token)) == (
        404, "not_found", f"no run {run} of algorithm 'echo'",
    )  # fmt: skip
    bad_name = await error(path=f"/algorithm/v1.2/complete/Bad_Name/requests/{run}", json={})
    assert bad_name[:2] == (400, "invalid_request") and "algorithmName" in bad_name[2]
    bad_id = await error(path="/algorithm/v1.2/complete/echo/requests/nope", json={})
    assert bad_id[:2] == (400, "invalid_request") and "requestId" in bad_id[2]
    assert await error(data=b"", headers=token) == (
        400, "malformed_json", "the body is empty; expected a JSON object",
    )  # fmt: skip
    assert (await error(data=b"{nope", headers=token))[:2] == (400, "malformed_json")
    assert (await error(data=b"[1]", headers=token))[2] == (
        "the body must be a JSON object, not an array"
    )
    assert (await error(json={"cause": 3}, headers=token))[:2] == (400, "invalid_request")


async def test_bodies_encoded_too_large_or_in_an_encoding_not_read(served: Served) -> None:
    run = str(uuid.uuid4())
    path = f"/algorithm/v1.2/complete/echo/requests/{run}"
    token = _token(run)
    body = orjson.dumps({"cause": None, "message": "m"})
    # read through each encoding: the store is reached (no such run), so the body was read
    for encoding, data in [
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", zlib.compress(body)[2:-4]),  # raw deflate, as aiohttp takes it
        ("identity", body),
    ]:
        status, answer, _ = await _call(
            served, "POST", path, data=data, headers={**token, "Content-Encoding": encoding}
        )
        assert (status, answer["error"]) == (404, "not_found"), encoding
    for encoding in ["gzip", "deflate", "br", "zstd"]:
        status, answer, _ = await _call(
            served, "POST", path, data=b"not compressed",
            headers={**token, "Content-Encoding": encoding},
        )  # fmt: skip
        assert (status, answer["error"]) == (400, "malformed_body"), encoding
        assert answer["message"].startswith("the body cannot be read"), encoding
    status, answer, headers = await _call(
        served, "POST", path, data=b"{}", headers={**token, "Content-Encoding": "snappy"}
    )
    assert (status, answer["error"]) == (415, "unsupported_encoding")
    assert "'snappy' is not supported" in answer["message"]
    assert headers["Accept-Encoding"] == "gzip, deflate, br, zstd"
    # over the limit as sent, or only once decoded
    before = _count(V12, "POST", 413)
    for data, extra in [
        (b"{" + b" " * MAX_BODY + b"}", {}),
        (gzip.compress(b"{" + b" " * 4 * MAX_BODY + b"}"), {"Content-Encoding": "gzip"}),
    ]:
        status, answer, _ = await _call(served, "POST", path, data=data, headers={**token, **extra})
        assert (status, answer["error"]) == (413, "payload_too_large")
        assert "NEXUS__HTTP__MAX_BODY_SIZE" in answer["message"]
    assert _count(V12, "POST", 413) == before + 2


class _HeldCommits:
    """The receiver's store, each transition held (:attr:`held` set) until :attr:`release`;
    what the store answered, in :attr:`committed`."""

    def __init__(self, served: Served) -> None:
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.committed: list[bool] = []
        store = served.app[RECEIVER].store
        transition = store.transition

        async def slow(change: Transition) -> bool:
            self.held.set()
            await self.release.wait()
            self.committed.append(await transition(change))
            return self.committed[-1]

        store.transition = slow  # type: ignore[method-assign]


def _completing(served: Served, run: str) -> asyncio.Task[tuple[int, Any, dict[str, str]]]:
    path = f"/algorithm/v1.2/complete/echo/requests/{run}"
    return asyncio.create_task(_call(served, "POST", path, json={}, headers=_token(run)))


async def test_a_slow_commit_holds_only_its_own_connection(served: Served) -> None:
    commits = _HeldCommits(served)
    run = await served.run()
    completing = _completing(served, run)
    await asyncio.wait_for(commits.held.wait(), 5)
    assert (await _call(served, "GET", "/health/live"))[0] == 200  # meanwhile, elsewhere
    assert not completing.done()
    commits.release.set()
    status, body, _ = await completing
    assert (status, body["status"]) == (200, "COMPLETED")


async def test_a_completion_whose_client_left_is_committed(served: Served) -> None:
    commits = _HeldCommits(served)
    run = await served.run()
    body = b"{}"
    _, writer = await asyncio.open_connection("127.0.0.1", served.listener.port)
    token = _token(run)["Authorization"]
    writer.write(
        f"POST /algorithm/v1.2/complete/echo/requests/{run} HTTP/1.1\r\nHost: r\r\n"
        f"Authorization: {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await asyncio.wait_for(commits.held.wait(), 5)
    writer.transport.abort()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    commits.release.set()
    for _ in range(100):
        if commits.committed:
            break
        await asyncio.sleep(0.02)
    assert commits.committed == [True]  # once, not lost and not twice
    done = await served.store.result("echo", uuid.UUID(run), SYSTEM)
    assert done is not None and done.stage == Stage.COMPLETED


async def test_a_completion_in_flight_at_shutdown_is_answered_after_its_commit(
    served: Served,
) -> None:
    commits = _HeldCommits(served)
    run = await served.run()
    completing = _completing(served, run)
    await asyncio.wait_for(commits.held.wait(), 5)
    asyncio.get_running_loop().call_later(0.3, commits.release.set)
    await served.listener.close()  # as run_app does: in-flight requests first, then the store
    status, body, _ = await completing
    assert (status, body["status"]) == (200, "COMPLETED")
    with pytest.raises(aiohttp.ClientConnectionError):  # and no new connection is taken
        await _call(served, "GET", "/health/live")
