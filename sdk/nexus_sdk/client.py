"""The asynchronous client of the Nexus API (DESIGN §2, §8), on httpx.

::

    async with AsyncClient() as nexus:           # NEXUS_URL and NEXUS_TOKEN from the environment
        run_id = await nexus.submit("echo", {"hello": "world"}, tag="batch-1")
        print(await nexus.result("echo", run_id))  # waits for the run, then reads its result
        outcomes = await nexus.submit_many("echo", [{"x": i} for i in range(10_000)], tag="b")
        async for state in nexus.as_completed("echo", [o.request_id for o in outcomes]):
            ...
        summary = await nexus.wait_tag("echo", "b")  # every run of the batch has finished

Guarantees:

* **No duplicate runs.** Every submit carries an ``Idempotency-Key`` (one is made when none
  is given, before the first attempt), so a retry after a lost answer finds the same run.
* **Bounded retries.** 429/503 (honouring ``Retry-After``), other transient statuses and
  connection errors are retried under the client's :class:`RetryPolicy`; then the failure
  is raised as its kind (:mod:`nexus_sdk.errors`): ``Throttled``, ``ConnectionFailed``…
* **No polling storms.** Waits ask the server to hold each read (``?wait``, up to 60 s);
  a server that answers at once instead is polled at a growing interval (up to 5 s).
* **Works with older servers.** Without the bulk route, runs are submitted one by one
  (16 at a time); without the tag summary route, the summary is counted from the listing.
* Result URLs are presigned: they are read without the bearer token.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import httpx

from nexus_sdk import calls
from nexus_sdk.calls import Call, RunSpec
from nexus_sdk.errors import ConnectionFailed, NotFound, Refused, RunFailed, WaitTimeout
from nexus_sdk.models import ParentRequest, Result, RunMetadata, RunState, Submitted, TagSummary
from nexus_sdk.retrying import LongPoll, RetryPolicy, retry_after_seconds, transient

DEFAULT_TIMEOUT = 30.0
"""Seconds for one request (connect, each read), on top of a ``?wait`` it asks for."""
ONE_BY_ONE = 16
"""Submits in flight at once where the server has no bulk route."""
MAX_CONNECTIONS = 16
"""Connections kept to the server by default. More cost more than they bring: the HTTP
pool looks at every connection each time a request ends, so 64 tasks submitting one run a
request cost 6 to 8 ms of client CPU per run on 64 connections and 2.4 to 2.9 ms on 16
(``benchmarks/sdk_client.py``); bulk submit (:meth:`AsyncClient.submit_many`) is the fast
path either way."""


def settings(url: str | None, token: str | None) -> tuple[str, str | None]:
    """The server's URL and the token: as given, else ``NEXUS_URL`` and ``NEXUS_TOKEN``."""
    url = url or os.environ.get("NEXUS_URL")
    if not url:
        raise ValueError("no Nexus URL: pass url= or set NEXUS_URL (`nexus dev` prints it)")
    return url.rstrip("/"), token if token is not None else os.environ.get("NEXUS_TOKEN")


class AsyncClient:
    """A connection pool to one Nexus server, for one caller (its bearer token)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, token = settings(url, token)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._headers = calls.headers(token)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
        )
        self._has_bulk = True
        self._has_summary = True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- sending -----------------------------------------------------------------------------

    async def _send(
        self, call: Call, *, wait: float = 0.0, url: str | None = None
    ) -> httpx.Response:
        attempts = self.retry.start()
        while True:
            try:
                if url is None:
                    response = await self._http.request(
                        call.method, call.path, params=call.params or None, json=call.body,
                        headers={**self._headers, **call.headers}, timeout=self.timeout + wait,
                    )  # fmt: skip
                else:  # a presigned URL: no token
                    response = await self._http.get(url)
            except httpx.TransportError as exc:
                delay = attempts.next_delay()
                if delay is None:
                    target = url or f"{self.url}{call.path}"
                    raise ConnectionFailed(f"{call.method} {target}: {exc!r}") from exc
            else:
                header = response.headers.get("Retry-After")
                if not transient(response.status_code, header):
                    return response
                retry_after = retry_after_seconds(header)
                delay = attempts.next_delay(retry_after)
                if delay is None:
                    raise calls.error_of(response, retry_after)
            await asyncio.sleep(delay)

    async def _json(self, call: Call, *, wait: float = 0.0) -> Any:
        return calls.json_of(await self._send(call, wait=wait))

    # -- submitting --------------------------------------------------------------------------

    async def submit(
        self,
        algorithm: str,
        parameters: Any,
        *,
        tag: str | None = None,
        configuration: dict[str, Any] | None = None,
        parent: ParentRequest | None = None,
        payload_valid_for: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit one run; its request id. The same ``idempotency_key`` (within 24 h) gives
        the same run again instead of a new one."""
        key = idempotency_key or str(uuid.uuid4())
        spec = RunSpec(parameters, tag, configuration, parent, payload_valid_for, key)
        answer = await self._json(calls.submit(algorithm, spec))
        return str(answer["requestId"])

    async def submit_chunks(
        self,
        algorithm: str,
        runs: Iterable[RunSpec | Any],
        *,
        tag: str | None = None,
        chunk_size: int = calls.DEFAULT_CHUNK,
    ) -> AsyncIterator[list[Submitted]]:
        """Submit runs in chunks (bulk requests), yielding each chunk's outcomes once the
        server has them durably. An item is a :class:`RunSpec` or a run's parameters."""
        offset = 0
        for chunk in calls.chunks(calls.keyed(runs, tag), chunk_size):
            yield await self._submit_chunk(algorithm, chunk, offset)
            offset += len(chunk)

    async def submit_many(
        self,
        algorithm: str,
        runs: Iterable[RunSpec | Any],
        *,
        tag: str | None = None,
        chunk_size: int = calls.DEFAULT_CHUNK,
    ) -> list[Submitted]:
        """Submit runs in chunks; every item's outcome, in order (refused ones included)."""
        outcomes: list[Submitted] = []
        async for chunk in self.submit_chunks(algorithm, runs, tag=tag, chunk_size=chunk_size):
            outcomes += chunk
        return outcomes

    async def _submit_chunk(
        self, algorithm: str, chunk: list[RunSpec], offset: int
    ) -> list[Submitted]:
        if self._has_bulk:
            try:
                answer = await self._json(calls.bulk(algorithm, chunk))
            except NotFound as exc:
                if not exc.no_route:
                    raise
                self._has_bulk = False
            else:
                return [
                    Submitted(
                        offset + i, item.get("requestId"), item.get("error"), item.get("message")
                    )
                    for i, item in enumerate(answer["runs"])
                ]
        limit = asyncio.Semaphore(ONE_BY_ONE)

        async def one(i: int, spec: RunSpec) -> Submitted:
            async with limit:
                try:
                    answer = await self._json(calls.submit(algorithm, spec))
                except Refused as exc:
                    return Submitted(offset + i, None, exc.code, exc.message)
                return Submitted(offset + i, str(answer["requestId"]))

        return list(await asyncio.gather(*(one(i, spec) for i, spec in enumerate(chunk))))

    # -- reading -----------------------------------------------------------------------------

    async def status(
        self, algorithm: str, request_id: str, *, wait: float | None = None
    ) -> RunState:
        """How the run stands; with ``wait``, the server may hold the answer up to that many
        seconds (≤ 60) until the run has finished."""
        answer = await self._json(calls.status(algorithm, request_id, wait), wait=wait or 0.0)
        return RunState.from_wire(answer)

    async def wait(
        self, algorithm: str, request_id: str, *, timeout: float | None = None
    ) -> RunState:
        """The run once it has finished (``WaitTimeout`` after ``timeout`` seconds)."""
        poll = LongPoll(timeout)
        while True:
            asked = poll.next_wait()
            if asked is None:
                raise WaitTimeout(f"run {request_id} of {algorithm} not finished in {timeout} s")
            started = time.monotonic()
            state = await self.status(algorithm, request_id, wait=asked)
            if state.finished:
                return state
            await asyncio.sleep(poll.pause_after(asked, time.monotonic() - started))

    async def as_completed(
        self,
        algorithm: str,
        request_ids: Sequence[str],
        *,
        timeout: float | None = None,
        concurrency: int = 50,
    ) -> AsyncIterator[RunState]:
        """The runs as they finish (each held on the server by a long-poll, at most
        ``concurrency`` at once)."""
        limit = asyncio.Semaphore(concurrency)

        async def one(request_id: str) -> RunState:
            async with limit:
                return await self.wait(algorithm, request_id, timeout=timeout)

        tasks = [asyncio.ensure_future(one(r)) for r in request_ids]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def fetch_result(self, state: RunState) -> Result:
        """The result document of a completed run (inline or in object storage)."""
        if not state.completed or not state.result_uri:
            raise RunFailed("", state)
        listed = state.listed_result
        if listed is not None:
            return listed
        response = await self._send(Call("GET", ""), url=state.result_uri)
        if response.status_code >= 400:
            raise calls.error_of(response)
        return Result(response.content, response.headers.get("Content-Type"))

    async def result(self, algorithm: str, request_id: str, *, timeout: float | None = None) -> Any:
        """The run's result, decoded (JSON, else bytes), once it has finished; ``RunFailed``
        if it ended without one."""
        state = await self.wait(algorithm, request_id, timeout=timeout)
        if not state.completed:
            raise RunFailed(algorithm, state)
        return (await self.fetch_result(state)).decoded()

    async def metadata(self, algorithm: str, request_id: str) -> RunMetadata:
        return RunMetadata.from_wire(await self._json(calls.metadata(algorithm, request_id)))

    async def cancel(
        self,
        algorithm: str,
        request_id: str,
        *,
        reason: str = "cancelled by its caller",
        initiator: str = "nexus-sdk",
        policy: str = "Background",
    ) -> None:
        """Cancel the run; ``Conflict`` if it had finished already."""
        await self._json(calls.cancel(algorithm, request_id, reason, initiator, policy))

    async def runs_by_tag(
        self,
        algorithm: str,
        tag: str,
        *,
        page_size: int | None = None,
        with_results: bool = False,
    ) -> AsyncIterator[RunState]:
        """Every run of the tag, page by page (``Link: rel="next"``); ``with_results``:
        each result kept inline comes with its run, and :meth:`fetch_result` then reads it
        without a request."""
        listing = calls.tag_listing(algorithm, tag, page_size, with_results)
        response = await self._send(listing)
        while True:
            for item in calls.json_of(response):
                yield RunState.from_wire(item)
            following = calls.next_page(response)
            if following is None:
                return
            response = await self._send(Call("GET", following))

    async def summary(self, algorithm: str, tag: str, *, wait: float | None = None) -> TagSummary:
        """The batch's progress; with ``wait``, held up to that many seconds (≤ 60) until
        every run of the tag has finished."""
        if self._has_summary:
            try:
                answer = await self._json(calls.tag_summary(algorithm, tag, wait), wait=wait or 0.0)
            except NotFound as exc:
                if not exc.no_route:
                    raise
                self._has_summary = False
            else:
                return TagSummary.from_wire(answer)
        return TagSummary.of_runs([run async for run in self.runs_by_tag(algorithm, tag)])

    async def wait_tag(
        self,
        algorithm: str,
        tag: str,
        *,
        timeout: float | None = None,
        every: float = 60.0,
    ) -> AsyncIterator[TagSummary]:
        """The batch's summary at least every ``every`` seconds until all its runs have
        finished (the last one yielded is finished); ``WaitTimeout`` after ``timeout``."""
        poll = LongPoll(timeout, every)
        while True:
            asked = poll.next_wait()
            if asked is None:
                raise WaitTimeout(f"the runs tagged {tag!r} have not finished in {timeout} s")
            started = time.monotonic()
            summary = await self.summary(algorithm, tag, wait=asked)
            yield summary
            if summary.finished:
                return
            await asyncio.sleep(poll.pause_after(asked, time.monotonic() - started))
