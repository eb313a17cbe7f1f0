"""The synchronous client of the Nexus API: :class:`Client`, the twin of
:class:`nexus_sdk.client.AsyncClient` for scripts and threads.

::

    with Client() as nexus:                      # NEXUS_URL and NEXUS_TOKEN from the environment
        run_id = nexus.submit("echo", {"hello": "world"})
        print(nexus.result("echo", run_id))

It builds and reads every request as the async client does (:mod:`nexus_sdk.calls`), with
the same guarantees: an ``Idempotency-Key`` on every submit, bounded retries honouring
``Retry-After``, long-polls instead of polling, and the fallbacks for older servers.
:meth:`Client.as_completed` holds its long-polls in a small pool of threads (the client is
safe to share between threads).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from nexus_sdk import calls
from nexus_sdk.calls import Call, RunSpec
from nexus_sdk.client import DEFAULT_TIMEOUT, ONE_BY_ONE, settings
from nexus_sdk.errors import ConnectionFailed, NotFound, Refused, RunFailed, WaitTimeout
from nexus_sdk.models import ParentRequest, Result, RunMetadata, RunState, Submitted, TagSummary
from nexus_sdk.retrying import LongPoll, RetryPolicy, retry_after_seconds, transient


class Client:
    """A connection pool to one Nexus server, for one caller (its bearer token)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, token = settings(url, token)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self._headers = calls.headers(token)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )
        self._has_bulk = True
        self._has_summary = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- sending -----------------------------------------------------------------------------

    def _send(self, call: Call, *, wait: float = 0.0, url: str | None = None) -> httpx.Response:
        attempts = self.retry.start()
        while True:
            try:
                if url is None:
                    response = self._http.request(
                        call.method, call.path, params=call.params or None, json=call.body,
                        headers={**self._headers, **call.headers}, timeout=self.timeout + wait,
                    )  # fmt: skip
                else:  # a presigned URL: no token
                    response = self._http.get(url)
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
            time.sleep(delay)

    def _json(self, call: Call, *, wait: float = 0.0) -> Any:
        return calls.json_of(self._send(call, wait=wait))

    # -- submitting --------------------------------------------------------------------------

    def submit(
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
        """Submit one run; its request id (see :meth:`AsyncClient.submit`)."""
        key = idempotency_key or str(uuid.uuid4())
        spec = RunSpec(parameters, tag, configuration, parent, payload_valid_for, key)
        return str(self._json(calls.submit(algorithm, spec))["requestId"])

    def submit_chunks(
        self,
        algorithm: str,
        runs: Iterable[RunSpec | Any],
        *,
        tag: str | None = None,
        chunk_size: int = calls.DEFAULT_CHUNK,
    ) -> Iterator[list[Submitted]]:
        """Submit runs in chunks, yielding each chunk's outcomes once stored durably."""
        offset = 0
        for chunk in calls.chunks(calls.keyed(runs, tag), chunk_size):
            yield self._submit_chunk(algorithm, chunk, offset)
            offset += len(chunk)

    def submit_many(
        self,
        algorithm: str,
        runs: Iterable[RunSpec | Any],
        *,
        tag: str | None = None,
        chunk_size: int = calls.DEFAULT_CHUNK,
    ) -> list[Submitted]:
        """Submit runs in chunks; every item's outcome, in order."""
        chunks = self.submit_chunks(algorithm, runs, tag=tag, chunk_size=chunk_size)
        return [outcome for chunk in chunks for outcome in chunk]

    def _submit_chunk(self, algorithm: str, chunk: list[RunSpec], offset: int) -> list[Submitted]:
        if self._has_bulk:
            try:
                answer = self._json(calls.bulk(algorithm, chunk))
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

        def one(i: int, spec: RunSpec) -> Submitted:
            try:
                answer = self._json(calls.submit(algorithm, spec))
            except Refused as exc:
                return Submitted(offset + i, None, exc.code, exc.message)
            return Submitted(offset + i, str(answer["requestId"]))

        with ThreadPoolExecutor(min(ONE_BY_ONE, len(chunk))) as pool:
            return list(pool.map(one, range(len(chunk)), chunk))

    # -- reading -----------------------------------------------------------------------------

    def status(self, algorithm: str, request_id: str, *, wait: float | None = None) -> RunState:
        answer = self._json(calls.status(algorithm, request_id, wait), wait=wait or 0.0)
        return RunState.from_wire(answer)

    def wait(self, algorithm: str, request_id: str, *, timeout: float | None = None) -> RunState:
        """The run once it has finished (``WaitTimeout`` after ``timeout`` seconds)."""
        poll = LongPoll(timeout)
        while True:
            asked = poll.next_wait()
            if asked is None:
                raise WaitTimeout(f"run {request_id} of {algorithm} not finished in {timeout} s")
            started = time.monotonic()
            state = self.status(algorithm, request_id, wait=asked)
            if state.finished:
                return state
            time.sleep(poll.pause_after(asked, time.monotonic() - started))

    def as_completed(
        self,
        algorithm: str,
        request_ids: Sequence[str],
        *,
        timeout: float | None = None,
        concurrency: int = 32,
    ) -> Iterator[RunState]:
        """The runs as they finish, each held on the server by a long-poll."""
        if not request_ids:
            return
        with ThreadPoolExecutor(min(concurrency, len(request_ids))) as pool:
            futures = [pool.submit(self.wait, algorithm, r, timeout=timeout) for r in request_ids]
            try:
                for finished in as_completed(futures):
                    yield finished.result()
            finally:
                for future in futures:
                    future.cancel()

    def fetch_result(self, state: RunState) -> Result:
        """The result document of a completed run (inline or in object storage)."""
        if not state.completed or not state.result_uri:
            raise RunFailed("", state)
        listed = state.listed_result
        if listed is not None:
            return listed
        response = self._send(Call("GET", ""), url=state.result_uri)
        if response.status_code >= 400:
            raise calls.error_of(response)
        return Result(response.content, response.headers.get("Content-Type"))

    def result(self, algorithm: str, request_id: str, *, timeout: float | None = None) -> Any:
        """The run's result, decoded, once it has finished; ``RunFailed`` if there is none."""
        state = self.wait(algorithm, request_id, timeout=timeout)
        if not state.completed:
            raise RunFailed(algorithm, state)
        return self.fetch_result(state).decoded()

    def metadata(self, algorithm: str, request_id: str) -> RunMetadata:
        return RunMetadata.from_wire(self._json(calls.metadata(algorithm, request_id)))

    def cancel(
        self,
        algorithm: str,
        request_id: str,
        *,
        reason: str = "cancelled by its caller",
        initiator: str = "nexus-sdk",
        policy: str = "Background",
    ) -> None:
        """Cancel the run; ``Conflict`` if it had finished already."""
        self._json(calls.cancel(algorithm, request_id, reason, initiator, policy))

    def runs_by_tag(
        self,
        algorithm: str,
        tag: str,
        *,
        page_size: int | None = None,
        with_results: bool = False,
    ) -> Iterator[RunState]:
        """Every run of the tag, page by page (``Link: rel="next"``); ``with_results``:
        each result kept inline comes with its run, and :meth:`fetch_result` then reads it
        without a request."""
        listing = calls.tag_listing(algorithm, tag, page_size, with_results)
        response = self._send(listing)
        while True:
            for item in calls.json_of(response):
                yield RunState.from_wire(item)
            following = calls.next_page(response)
            if following is None:
                return
            response = self._send(Call("GET", following))

    def summary(self, algorithm: str, tag: str, *, wait: float | None = None) -> TagSummary:
        """The batch's progress; with ``wait``, held until it has finished (≤ 60 s)."""
        if self._has_summary:
            try:
                answer = self._json(calls.tag_summary(algorithm, tag, wait), wait=wait or 0.0)
            except NotFound as exc:
                if not exc.no_route:
                    raise
                self._has_summary = False
            else:
                return TagSummary.from_wire(answer)
        return TagSummary.of_runs(list(self.runs_by_tag(algorithm, tag)))

    def wait_tag(
        self, algorithm: str, tag: str, *, timeout: float | None = None, every: float = 60.0
    ) -> Iterator[TagSummary]:
        """The batch's summary at least every ``every`` seconds until all its runs have
        finished (the last one yielded is finished); ``WaitTimeout`` after ``timeout``."""
        poll = LongPoll(timeout, every)
        while True:
            asked = poll.next_wait()
            if asked is None:
                raise WaitTimeout(f"the runs tagged {tag!r} have not finished in {timeout} s")
            started = time.monotonic()
            summary = self.summary(algorithm, tag, wait=asked)
            yield summary
            if summary.finished:
                return
            time.sleep(poll.pause_after(asked, time.monotonic() - started))
