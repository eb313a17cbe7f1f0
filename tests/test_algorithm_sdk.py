"""The algorithm SDK's reports survive passing failures, and go inline only where allowed.

A stand-in plays the receiver, the input link and the result PUT on loopback and answers
what a test tells it (503 with ``Retry-After``, 413, a dropped connection…), so that the
SDK's side of each failure is seen exactly; ``tests/e2e/test_algorithm_runs.py`` runs the
same code in real algorithm processes against the real receiver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from nexus_sdk.algorithm import AsyncRun, Run, RunContext
from nexus_sdk.errors import ContractError
from nexus_sdk.retrying import RetryPolicy, retry_after_seconds

QUICK = RetryPolicy(total=5, attempts=None, first_delay=0.01, max_delay=0.05)
RUN_ID = "0b409392-0000-4000-8000-000000000001"


@dataclass
class StandIn:
    url: str = ""
    calls: list[tuple[str, str, bytes]] = field(default_factory=list)
    plan: dict[str, list[Callable[[], web.StreamResponse | None]]] = field(default_factory=dict)
    """Per route (``input``, ``result``, ``complete``), answers to give before the normal one."""

    def context(self, **changes: Any) -> RunContext:
        base = {
            "algorithm": "echo",
            "request_id": RUN_ID,
            "input_url": f"{self.url}/input?signature=x",
            "receiver_url": self.url,
            "run_token": "token",
            "result_upload_url": f"{self.url}/result?X-Amz-Signature=y",
        }
        return RunContext(**{**base, **changes})

    def of(self, route: str) -> list[bytes]:
        return [body for name, _, body in self.calls if name == route]


def unavailable(retry_after: str | None = None) -> Callable[[], web.StreamResponse]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda: web.Response(status=503, headers=headers, text='{"error": "unavailable"}')


def dropped() -> None:
    raise ConnectionResetError  # the handler dies: aiohttp closes the connection


@asynccontextmanager
async def stand_in() -> AsyncIterator[StandIn]:
    state = StandIn()

    def route(name: str, normal: Callable[[bytes], web.StreamResponse]) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            state.calls.append((name, request.headers.get("Authorization", ""), body))
            planned = state.plan.get(name) or []
            if planned:
                given = planned.pop(0)()
                if given is not None:
                    return given
            return normal(body)

        return handle

    app = web.Application()
    app.router.add_get("/input", route("input", lambda _: web.json_response({"n": 7})))
    app.router.add_put("/result", route("result", lambda _: web.Response(status=200)))
    complete = f"/algorithm/v1.2/complete/echo/requests/{RUN_ID}"
    app.router.add_post(complete, route("complete", lambda _: web.json_response({})))
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_input_result_and_completion_are_retried_through_an_outage() -> None:
    async with stand_in() as fake:
        fake.plan = {
            "input": [unavailable("0"), dropped],
            "result": [unavailable(), unavailable()],
            "complete": [unavailable("1"), dropped, unavailable("0")],
        }
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with AsyncRun(fake.context(), retry=QUICK) as run:
            assert await run.input() == {"n": 7}
            await run.succeed({"answer": 42})
        assert loop.time() - started >= 1.0  # the receiver's Retry-After: 1 was waited for
        assert len(fake.of("input")) == 3 and len(fake.of("result")) == 3
        assert fake.of("result")[-1] == b'{"answer": 42}'
        completions = fake.of("complete")
        assert len(completions) == 4 and len(set(completions)) == 1  # the same report
        assert json.loads(completions[0]) == {"cause": None, "message": None, "sasUri": None}
        assert {auth for name, auth, _ in fake.calls if name == "complete"} == {"Bearer token"}


async def test_the_sync_run_retries_as_the_async_one() -> None:
    async with stand_in() as fake:
        fake.plan = {"input": [dropped], "complete": [unavailable("0"), unavailable("0")]}

        def algorithm() -> None:
            with Run(fake.context(), retry=QUICK) as run:
                run.fail("BadInput", f"n={run.input()['n']} is odd")

        await asyncio.to_thread(algorithm)
        assert [json.loads(body) for body in fake.of("complete")] == 3 * [
            {"cause": "BadInput", "message": "n=7 is odd", "sasUri": None}
        ]


async def test_an_input_the_job_carries_is_read_without_a_request() -> None:
    async with stand_in() as fake:
        env = {
            "NEXUS__ALGORITHM_NAME": "echo",
            "NEXUS__RECEIVER_URL": fake.url,
            "NEXUS__RUN_TOKEN": "token",
            "NEXUS__RESULT_UPLOAD_URL": f"{fake.url}/result",
            "NEXUS__INPUT": '{"n": 8, "text": "héllo"}',
        }
        argv = [f"--sas-uri={fake.url}/input?signature=x", f"--request-id={RUN_ID}"]
        context = RunContext.from_environment(argv, env)
        async with AsyncRun(context, retry=QUICK) as run:
            assert await run.input() == {"n": 8, "text": "héllo"}

        def algorithm() -> Any:
            with Run(context, retry=QUICK) as run:
                return run.input()

        assert await asyncio.to_thread(algorithm) == {"n": 8, "text": "héllo"}
        assert fake.of("input") == []  # never fetched
        env.pop("NEXUS__INPUT")
        async with AsyncRun(RunContext.from_environment(argv, env), retry=QUICK) as run:
            assert await run.input() == {"n": 7}  # from the link, as before
        assert len(fake.of("input")) == 1


async def test_an_input_not_in_storage_fails_the_run_saying_so() -> None:
    missing = lambda: web.Response(status=404, text="<Code>NoSuchKey</Code>")  # noqa: E731
    async with stand_in() as fake:
        fake.plan = {"input": [missing]}
        async with AsyncRun(fake.context(), retry=QUICK) as run:
            with pytest.raises(ContractError, match="answered 404") as raised:
                await run.input()
        assert raised.value.status == 404
        fake.plan = {"input": [missing]}

        def algorithm() -> None:
            with Run(fake.context(), retry=QUICK) as run:
                run.input()

        with pytest.raises(ContractError, match="answered 404"):
            await asyncio.to_thread(algorithm)
        assert len(fake.of("input")) == 2  # a 404 is not tried again
        reports = [json.loads(body) for body in fake.of("complete")]
        assert [r["cause"] for r in reports] == ["InputNotFound", "InputNotFound"]
        assert "not in object storage" in reports[0]["message"]
        assert "signature" not in reports[0]["message"]  # the link stays out of the run


async def test_retries_stop_when_the_budget_is_spent() -> None:
    async with stand_in() as fake:
        fake.plan = {"complete": [unavailable("0")] * 1000}
        budget = RetryPolicy(total=0.5, attempts=None, first_delay=0.05, max_delay=0.1)
        async with AsyncRun(fake.context(), retry=budget) as run:
            with pytest.raises(ContractError, match="answered 503") as given_up:
                await run.fail("X", "y")
        assert given_up.value.status == 503
        assert 3 <= len(fake.of("complete")) <= 12


async def test_a_refusal_is_not_retried() -> None:
    async with stand_in() as fake:
        fake.plan = {"complete": [lambda: web.Response(status=401, text="wrong token")]}
        async with AsyncRun(fake.context(), retry=QUICK) as run:
            with pytest.raises(ContractError, match="401: wrong token"):
                await run.fail("X", "y")
        assert len(fake.of("complete")) == 1


async def test_a_small_result_goes_inline_only_where_the_receiver_takes_it() -> None:
    async with stand_in() as fake:
        async with AsyncRun(fake.context(), retry=QUICK) as run:  # no limit announced
            await run.succeed({"small": True})
        assert len(fake.of("result")) == 1
        assert "result" not in json.loads(fake.of("complete")[0])

    async with stand_in() as fake:
        async with AsyncRun(fake.context(inline_limit=64), retry=QUICK) as run:
            await run.succeed({"small": True})
            await run.succeed({"large": "x" * 100})
            await run.succeed(b"\x00binary")
        assert [json.loads(b) for b in fake.of("complete")] == [
            {"cause": None, "message": None, "sasUri": None, "result": {"small": True}},
            {"cause": None, "message": None, "sasUri": None},
            {"cause": None, "message": None, "sasUri": None},
        ]
        assert fake.of("result") == [json.dumps({"large": "x" * 100}).encode(), b"\x00binary"]


async def test_an_inline_result_refused_as_too_large_is_uploaded_instead() -> None:
    async with stand_in() as fake:
        fake.plan = {"complete": [lambda: web.Response(status=413, text="too large")]}

        def algorithm() -> None:
            with Run(fake.context(inline_limit=1000), retry=QUICK) as run:
                run.succeed([1, 2, 3])

        await asyncio.to_thread(algorithm)
        assert fake.of("result") == [b"[1, 2, 3]"]
        assert [json.loads(b).get("result") for b in fake.of("complete")] == [[1, 2, 3], None]


def test_the_environment_of_a_run_is_read_whole() -> None:
    env = {
        "NEXUS__ALGORITHM_NAME": "echo",
        "NEXUS__RECEIVER_URL": "http://receiver/",
        "NEXUS__RUN_TOKEN": "tok",
        "NEXUS__RESULT_UPLOAD_URL": "http://s3/put",
        "NEXUS__SCHEDULER_URL": "http://scheduler",
        "NEXUS__RUN_CREDENTIAL": "nexus-run.echo.x",
        "NEXUS__RESULT_INLINE_LIMIT": "262144",
        "NEXUS__SDK_RETRY_SECONDS": "90",
    }
    argv = ["--sas-uri=http://in", f"--request-id={RUN_ID}"]
    run = Run.from_environment(argv, env)
    try:
        assert run.context.completion_url == (
            f"http://receiver/algorithm/v1.2/complete/echo/requests/{RUN_ID}"
        )
        assert run.context.inline_limit == 262144 and run.retry.total == 90
        assert run.context.children() == ("http://scheduler", "nexus-run.echo.x")
    finally:
        run.close()
    alone = Run.from_environment(argv, {k: v for k, v in env.items() if "SCHEDULER" not in k})
    with alone, pytest.raises(ContractError, match="cannot start child runs"):
        alone.start("echo", {})
    with pytest.raises(ContractError, match="NEXUS__RUN_TOKEN is not set"):
        Run.from_environment(argv, {k: v for k, v in env.items() if k != "NEXUS__RUN_TOKEN"})
    assert RetryPolicy.for_algorithm({}).total == 600  # minutes by default


def test_retry_after_is_read_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_a_failure_names_the_attempt_the_job_says_it_is() -> None:
    async with stand_in() as fake:
        env = {
            "NEXUS__ALGORITHM_NAME": "echo",
            "NEXUS__RECEIVER_URL": "http://receiver/",
            "NEXUS__RUN_TOKEN": "t",
            "NEXUS__RESULT_UPLOAD_URL": "http://s3/r",
        }
        argv = ["--sas-uri=http://s3/i", "--request-id=r"]
        assert RunContext.from_environment(argv, env).attempt is None
        second = RunContext.from_environment(argv, {**env, "NEXUS__ATTEMPT": "2"})
        assert second.attempt == 2
        context = dataclasses.replace(fake.context(), attempt=2)
        async with AsyncRun(context, retry=QUICK) as run:
            await run.fail("BadInput", "odd")
        assert [json.loads(body) for body in fake.of("complete")] == [
            {"cause": "BadInput", "message": "odd", "sasUri": None, "attempt": 2}
        ]
