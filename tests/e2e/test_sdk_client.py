"""The client SDK against the whole local system: every call, every kind of failure,
retries that create nothing twice, and waits that do not storm the server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from harness import Servers
from support.standin import refused_address
from support.system import OTHER_TOKEN, TOKEN, System, local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from nexus_sdk.calls import RunSpec
from nexus_sdk.client import AsyncClient
from nexus_sdk.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    Refused,
    RunFailed,
    Throttled,
    Unauthorized,
)
from nexus_sdk.models import Status
from nexus_sdk.retrying import RetryPolicy
from nexus_sdk.syncclient import Client

MAYBE_FAIL = ("python", "-m", "nexus_sdk.examples", "maybe-fail")
QUICK = RetryPolicy(total=10, attempts=4, first_delay=0.05, max_delay=0.2)


async def test_the_async_client_submits_waits_reads_lists_and_cancels(servers: Servers) -> None:
    async with (
        local_system(servers, templates=[template("echo")]) as system,
        AsyncClient(system.balancer_url, TOKEN) as nexus,
    ):
        run_id = await nexus.submit("echo", {"x": 1, "text": "héllo"}, tag="one")
        assert await nexus.result("echo", run_id, timeout=30) == {"x": 1, "text": "héllo"}
        state = await nexus.status("echo", run_id)
        assert state.status is Status.COMPLETED and state.finished and state.result_uri
        metadata = await nexus.metadata("echo", run_id)
        assert (metadata.request_id, metadata.tag, metadata.caller) == (run_id, "one", "tester")
        assert metadata.status is Status.COMPLETED

        # the same idempotency key is the same run
        first = await nexus.submit("echo", {"y": 2}, idempotency_key="same-key")
        assert await nexus.submit("echo", {"y": 2}, idempotency_key="same-key") == first

        outcomes = await nexus.submit_many(
            "echo", [{"i": i} for i in range(23)], tag="batch", chunk_size=5
        )
        assert [o.index for o in outcomes] == list(range(23))
        assert all(o.accepted for o in outcomes)
        ids = [str(o.request_id) for o in outcomes]
        finished = [s async for s in nexus.as_completed("echo", ids, timeout=60)]
        assert sorted(s.request_id for s in finished) == sorted(ids)
        assert {s.status for s in finished} == {Status.COMPLETED}
        listed = [s async for s in nexus.runs_by_tag("echo", "batch", page_size=10)]
        assert sorted(s.request_id for s in listed) == sorted(ids)
        assert all(s.listed_result is None for s in listed)
        listed = [s async for s in nexus.runs_by_tag("echo", "batch", with_results=True)]
        assert sorted(s.request_id for s in listed) == sorted(ids)
        results = [(await nexus.fetch_result(s)).decoded() for s in listed]  # no request
        assert sorted(r["i"] for r in results) == list(range(23))
        assert all(s.listed_result is not None for s in listed)
        summaries = [s async for s in nexus.wait_tag("echo", "batch", timeout=30, every=2)]
        last = summaries[-1]
        counted = {status: n for status, n in last.by_status.items() if n}
        assert last.finished and last.total == 23 and counted == {Status.COMPLETED: 23}
        assert last.unsuccessful == 0 and last.done == 23

        mixed = await nexus.submit_many(
            "echo", [{"ok": 1}, [1, 2], RunSpec({"ok": 2}, payload_valid_for="forever")]
        )
        assert [(o.index, o.accepted) for o in mixed] == [(0, True), (1, False), (2, False)]
        assert mixed[1].error == "invalid_request" and "algorithmParameters" in str(
            mixed[1].message
        )
        assert "payloadValidFor" in str(mixed[2].message)

        with pytest.raises(Conflict) as finished_already:
            await nexus.cancel("echo", run_id)
        assert finished_already.value.status == 409


async def test_a_failed_and_a_cancelled_run_have_no_result(servers: Servers) -> None:
    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="process")],
            templates=[template("maybe-fail", command=MAYBE_FAIL)],
        ) as system,
        AsyncClient(system.balancer_url, TOKEN) as nexus,
    ):
        failing = await nexus.submit("maybe-fail", {"fail": "x must be positive"})
        with pytest.raises(RunFailed) as failed:
            await nexus.result("maybe-fail", failing, timeout=60)
        assert failed.value.run.status is Status.FAILED
        assert failed.value.run.error_message == "RequestedFailure: x must be positive"

        sleeping = await nexus.submit("maybe-fail", {"sleepSeconds": 30})
        await nexus.cancel("maybe-fail", sleeping, reason="not needed")
        state = await nexus.wait("maybe-fail", sleeping, timeout=30)
        assert state.status is Status.CANCELLED and not state.completed


async def test_each_kind_of_failure_is_its_own_exception(servers: Servers) -> None:
    async with local_system(servers, templates=[template("echo"), template("other")]) as system:
        url = system.balancer_url
        async with AsyncClient(url, "not-a-token") as stranger:
            with pytest.raises(Unauthorized):
                await stranger.submit("echo", {})
        async with AsyncClient(url, OTHER_TOKEN) as limited:
            with pytest.raises(Forbidden):
                await limited.submit("other", {})
        async with AsyncClient(url, TOKEN) as nexus:
            with pytest.raises(NotFound) as unknown:
                await nexus.status("echo", str(uuid.uuid4()))
            assert not unknown.value.no_route and unknown.value.code == "not_found"
            with pytest.raises(Refused) as refused:
                await nexus.submit("echo", [1, 2, 3])
            assert "algorithmParameters" in refused.value.message
            assert refused.value.status == 400 and not isinstance(refused.value, Conflict)
            with pytest.raises(Refused, match="payloadValidFor"):
                await nexus.submit("echo", {}, payload_valid_for="forever")
            assert await _rows(system) == 0  # nothing refused was stored
        async with AsyncClient(f"http://{refused_address()}", TOKEN, retry=QUICK) as nowhere:
            with pytest.raises(ConnectionFailed) as unreachable:
                await nowhere.status("echo", str(uuid.uuid4()))
            assert unreachable.value.__cause__ is not None


async def _rows(system: System) -> int:
    rows, _ = await system.stored()
    return rows


@asynccontextmanager
async def front(system: System, answer: Any) -> AsyncIterator[str]:
    """A server in front of the schedulers: ``answer(request, n, body)`` gives a response,
    or ``None`` to pass the request on (and its answer back), ``"lose"`` to pass it on and
    answer 503, ``"ignore-wait"`` to pass it on without its ``?wait``."""
    seen = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        body = await request.read()
        given = await answer(request, seen, body)
        if isinstance(given, web.StreamResponse):
            return given
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        target = request.rel_url
        if given == "ignore-wait":
            target = target.without_query_params("wait")
        async with system.session.request(
            request.method, system.url + str(target), data=body, headers=headers
        ) as passed:
            content = await passed.read()
        if given == "lose":  # stored, but the answer is lost on its way back
            return web.Response(status=503, headers={"Retry-After": "0"}, text="{}")
        return web.Response(body=content, status=passed.status, content_type=passed.content_type)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_retried_submit_whose_answer_was_lost_creates_one_run(servers: Servers) -> None:
    async def answer(request: web.Request, n: int, body: bytes) -> Any:
        if n == 1:  # another request with the key is being accepted: come back in 1 s
            in_use = b'{"error": "idempotency_key_in_use", "message": "being accepted"}'
            headers = {"Retry-After": "1"}
            return web.Response(status=409, headers=headers, body=in_use)
        if n == 2:
            return web.Response(status=503, headers={"Retry-After": "0"}, text="busy")
        return "lose" if n == 3 else None  # the third attempt is stored, its answer lost

    async with (
        local_system(servers, templates=[template("echo")]) as system,
        front(system, answer) as url,
        AsyncClient(url, TOKEN, retry=QUICK) as nexus,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        run_id = await nexus.submit("echo", {"z": 1}, tag="retried")
        assert loop.time() - started >= 1.0  # the Retry-After was honoured
        listed = [s.request_id async for s in nexus.runs_by_tag("echo", "retried")]
        assert listed == [run_id]
        assert await _rows(system) == 1


async def test_throttling_that_lasts_is_raised_after_the_retries(servers: Servers) -> None:
    async def answer(request: web.Request, n: int, body: bytes) -> Any:
        error = b'{"error": "overloaded", "message": "the queue is full"}'
        headers = {"Retry-After": "0"}
        return web.Response(
            status=429, headers=headers, body=error, content_type="application/json"
        )

    async with (
        local_system(servers, templates=[template("echo")]) as system,
        front(system, answer) as url,
        AsyncClient(url, TOKEN, retry=QUICK) as nexus,
    ):
        with pytest.raises(Throttled) as throttled:
            await nexus.submit("echo", {})
        assert throttled.value.status == 429 and throttled.value.retry_after == 0
        assert throttled.value.message == "the queue is full"
        assert isinstance(throttled.value, ApiError)


@pytest.mark.slow
async def test_waiting_polls_slowly_where_the_server_does_not_hold_reads(
    servers: Servers,
) -> None:
    reads: list[float] = []

    async def answer(request: web.Request, n: int, body: bytes) -> Any:
        if "/results/" in request.path:
            reads.append(asyncio.get_running_loop().time())
            return "ignore-wait"  # an older server, which answers at once
        return None

    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="process")],
            templates=[template("maybe-fail", command=MAYBE_FAIL)],
        ) as system,
        front(system, answer) as url,
        AsyncClient(url, TOKEN) as nexus,
    ):
        run_id = await nexus.submit("maybe-fail", {"sleepSeconds": 4})
        state = await nexus.wait("maybe-fail", run_id, timeout=60)
        assert state.status is Status.COMPLETED
        span = reads[-1] - reads[0]
        # 0.25, 0.5, 1, 2, 4… s apart: a handful of reads, never one per event-loop turn
        assert 2 <= len(reads) <= 4 + span, (len(reads), span)


async def test_waits_are_held_by_the_server_not_polled(servers: Servers) -> None:
    reads: list[str] = []

    async def answer(request: web.Request, n: int, body: bytes) -> Any:
        if "/results/" in request.path:
            reads.append(request.path_qs)
        return None

    async with (
        local_system(
            servers,
            shards=[ShardSpec(name="shard-0", mode="process")],
            templates=[template("maybe-fail", command=MAYBE_FAIL)],
        ) as system,
        front(system, answer) as url,
        AsyncClient(url, TOKEN) as nexus,
    ):
        ids = [await nexus.submit("maybe-fail", {"sleepSeconds": 3}, tag="held") for _ in range(3)]
        finished = [s async for s in nexus.as_completed("maybe-fail", ids, timeout=60)]
        assert {s.status for s in finished} == {Status.COMPLETED}
        summaries = [s async for s in nexus.wait_tag("maybe-fail", "held", timeout=60)]
        assert summaries[-1].finished and summaries[-1].total == 3
        waits = [r for r in reads if "wait=" in r]
        # one held read per run and one for the tag (each answered when it finished), give
        # or take one more for a run whose read began as it finished
        assert len(waits) == len(reads) and len(reads) <= 3 * 2 + 2, reads
        assert all(int(r.rsplit("wait=", 1)[1]) >= 50 for r in waits), reads  # held, not short


async def test_the_sync_client_does_what_the_async_one_does(servers: Servers) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:

        def use() -> None:
            with Client(system.balancer_url, TOKEN) as nexus:
                run_id = nexus.submit("echo", {"sync": True}, tag="sync")
                assert nexus.result("echo", run_id, timeout=30) == {"sync": True}
                outcomes = nexus.submit_many("echo", [{"i": i} for i in range(12)], chunk_size=5)
                ids = [str(o.request_id) for o in outcomes]
                done = list(nexus.as_completed("echo", ids, timeout=60))
                assert sorted(s.request_id for s in done) == sorted(ids)
                assert {s.status for s in done} == {Status.COMPLETED}
                assert [s.request_id for s in nexus.runs_by_tag("echo", "sync")] == [run_id]
                (listed,) = nexus.runs_by_tag("echo", "sync", with_results=True)
                assert nexus.fetch_result(listed).decoded() == {"sync": True}
                summary = list(nexus.wait_tag("echo", "sync", timeout=30))[-1]
                assert summary.finished and summary.total == 1
                assert nexus.metadata("echo", run_id).caller == "tester"
                with pytest.raises(NotFound):
                    nexus.status("echo", str(uuid.uuid4()))
                with pytest.raises(Conflict):
                    nexus.cancel("echo", run_id)

        await asyncio.to_thread(use)


def test_statuses_a_newer_server_may_answer_are_kept() -> None:
    paused = Status("PAUSED")
    assert isinstance(paused, Status) and paused == "PAUSED"
    assert not paused.known and not paused.terminal
    assert Status("COMPLETED") is Status.COMPLETED and Status.COMPLETED.terminal
    assert Status.SCHEDULING_TIMEOUT.terminal and not Status.THROTTLED.terminal
