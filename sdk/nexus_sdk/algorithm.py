"""The algorithm side of the Nexus contract (DESIGN §3), for Python algorithm containers.

A container started by Nexus gets ``--sas-uri=<input url> --request-id=<id>`` and the
``NEXUS__*`` environment. :class:`Run` (synchronous) and :class:`AsyncRun` read both, fetch
the input (or take it from ``NEXUS__INPUT``, where Nexus puts a small one), start child
runs, and report the outcome the way the receiver expects::

    with Run.from_environment() as run:
        params = run.input()
        parts = run.map("solve-part", [{"part": p} for p in params["parts"]])  # child runs
        run.succeed(combine(parts))           # inline when small, else uploaded; COMPLETED
        # or: run.fail("BadInput", "x must be positive")   # FAILED with cause and message

Guarantees:

* **Work done is not lost to a passing outage.** The input GET, the result PUT and the
  completion POST are retried on connection errors and transient answers (429, 5xx),
  honouring ``Retry-After``, with capped backoff, for a bounded time: 10 minutes by
  default (:meth:`RetryPolicy.for_algorithm`, ``NEXUS__SDK_RETRY_SECONDS``), long enough for
  a rolling update of the receiver or a store's restart. The completion is idempotent on
  the receiver's side, so a repeat after a lost answer changes nothing.
* **Results inline only where the receiver stores them.** A JSON result goes in the
  completion itself when the Job's environment announces the receiver's limit
  (``NEXUS__RESULT_INLINE_LIMIT``, bytes) and it fits; otherwise — and always for bytes —
  it is PUT to the presigned URL (``NEXUS__RESULT_UPLOAD_URL``) before the completion says
  so. A receiver that refuses an inline result as too large (413) gets it by PUT instead.
* **Children belong to the parent's caller and are started once.** Child runs go to the
  scheduler (``NEXUS__SCHEDULER_URL``) with this run's credential, naming this run as
  their parent; their idempotency keys derive from this run's id and the child's place,
  so a container that Kubernetes starts again finds the children it started before.
* **A run whose input is gone fails saying so.** An input link answered ``404`` (the input
  expired, or the store lost it) is reported as a failure with cause ``InputNotFound``
  before :class:`ContractError` is raised, rather than leaving the run to fail as an
  unexplained non-zero exit.
* A report that still cannot be delivered raises :class:`ContractError`, so the container
  exits non-zero and Kubernetes (and then the maintainer) see the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from nexus_sdk.client import AsyncClient
from nexus_sdk.errors import ContractError, RunFailed
from nexus_sdk.retrying import RetryPolicy
from nexus_sdk.runcontext import (
    JSON,
    TIMEOUT,
    Outcome,
    RunContext,
    accepted,
    child_specs,
    problem,
)
from nexus_sdk.syncclient import Client

__all__ = ["AsyncRun", "ContractError", "Run", "RunContext"]


class Run:
    """One algorithm run, as its container sees it (synchronous)."""

    def __init__(self, context: RunContext, *, retry: RetryPolicy | None = None) -> None:
        self.context = context
        self.retry = retry or RetryPolicy.for_algorithm()
        self._http = httpx.Client(timeout=TIMEOUT)
        self._children: Client | None = None
        self._started = 0

    @classmethod
    def from_environment(
        cls,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> Run:
        policy = retry or RetryPolicy.for_algorithm(env)
        return cls(RunContext.from_environment(argv, env), retry=policy)

    @property
    def algorithm(self) -> str:
        return self.context.algorithm

    @property
    def request_id(self) -> str:
        return self.context.request_id

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._children is not None:
            self._children.close()
        self._http.close()

    def _call(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        attempts = self.retry.start()
        while True:
            outcome = Outcome()
            try:
                outcome.response = self._http.request(method, url, content=body, headers=headers)
            except httpx.TransportError as exc:
                outcome.error = exc
            response = outcome.response
            if response is not None and response.status_code < 300:
                return response.content
            delay = outcome.delay(attempts)
            if delay is None:
                status = None if response is None else response.status_code
                raise ContractError(problem(method, url, response, outcome.error), status)
            time.sleep(delay)

    # -- the run's own input and outcome -----------------------------------------------------

    def input_bytes(self) -> bytes:
        if self.context.input_content is not None:
            return self.context.input_content
        try:
            return self._call("GET", self.context.input_url, None, {})
        except ContractError as exc:
            if exc.status == 404:
                with contextlib.suppress(ContractError):  # the container fails with the GET's
                    self._report(self.context.input_not_found())
            raise

    def input(self) -> Any:
        """The run's ``algorithmParameters``."""
        return json.loads(self.input_bytes())

    def succeed(self, result: Any, content_type: str = JSON) -> None:
        """Report success with ``result`` (JSON-serialisable, or bytes)."""
        body, inline = self.context.encoded(result)
        if inline and content_type == JSON:
            try:
                self._report({"cause": None, "message": None, "sasUri": None, "result": result})
                return
            except ContractError as exc:
                if exc.status != 413:
                    raise
        self._call("PUT", self.context.result_upload_url, body, {"Content-Type": content_type})
        self._report({"cause": None, "message": None, "sasUri": None})

    def fail(self, cause: str, message: str) -> None:
        """Report that the run failed, with a short cause and a longer message (and this
        attempt, when the Job says which it is)."""
        self._report(self.context.failure(cause, message))

    def _report(self, body: dict[str, Any]) -> None:
        content = json.dumps(body).encode()
        self._call("POST", self.context.completion_url, content, self.context.report_headers())

    # -- child runs --------------------------------------------------------------------------

    def client(self) -> Client:
        """A client of the scheduler acting as this run's caller."""
        if self._children is None:
            url, credential = self.context.children()
            self._children = Client(url, credential, retry=self.retry)
        return self._children

    def start(self, algorithm: str, parameters: Any, *, tag: str | None = None) -> str:
        """Start a child run; its request id."""
        self._started += 1
        return self.client().submit(
            algorithm, parameters, tag=tag, parent=self.context.as_parent,
            idempotency_key=self.context.child_key(algorithm, -self._started),
        )  # fmt: skip

    def map(
        self,
        algorithm: str,
        inputs: Iterable[Any],
        *,
        tag: str | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """Run ``algorithm`` on each input as a child run, all at once; their results in the
        order of the inputs. ``RunFailed`` names the first child that ended without one."""
        client = self.client()
        specs = child_specs(self.context, algorithm, inputs, tag)
        outcomes = client.submit_many(algorithm, specs)
        ids = accepted(algorithm, outcomes)
        states = {s.request_id: s for s in client.as_completed(algorithm, ids, timeout=timeout)}
        results = []
        for request_id in ids:
            if not states[request_id].completed:
                raise RunFailed(algorithm, states[request_id])
            results.append(client.fetch_result(states[request_id]).decoded())
        return results


class AsyncRun:
    """One algorithm run, as its container sees it (asynchronous twin of :class:`Run`)."""

    def __init__(self, context: RunContext, *, retry: RetryPolicy | None = None) -> None:
        self.context = context
        self.retry = retry or RetryPolicy.for_algorithm()
        self._http = httpx.AsyncClient(timeout=TIMEOUT)
        self._children: AsyncClient | None = None
        self._started = 0

    @classmethod
    def from_environment(
        cls,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> AsyncRun:
        policy = retry or RetryPolicy.for_algorithm(env)
        return cls(RunContext.from_environment(argv, env), retry=policy)

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._children is not None:
            await self._children.aclose()
        await self._http.aclose()

    async def _call(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> bytes:
        attempts = self.retry.start()
        while True:
            outcome = Outcome()
            try:
                outcome.response = await self._http.request(
                    method, url, content=body, headers=headers
                )
            except httpx.TransportError as exc:
                outcome.error = exc
            response = outcome.response
            if response is not None and response.status_code < 300:
                return response.content
            delay = outcome.delay(attempts)
            if delay is None:
                status = None if response is None else response.status_code
                raise ContractError(problem(method, url, response, outcome.error), status)
            await asyncio.sleep(delay)

    async def input_bytes(self) -> bytes:
        if self.context.input_content is not None:
            return self.context.input_content
        try:
            return await self._call("GET", self.context.input_url, None, {})
        except ContractError as exc:
            if exc.status == 404:
                with contextlib.suppress(ContractError):  # the container fails with the GET's
                    await self._report(self.context.input_not_found())
            raise

    async def input(self) -> Any:
        return json.loads(await self.input_bytes())

    async def succeed(self, result: Any, content_type: str = JSON) -> None:
        body, inline = self.context.encoded(result)
        if inline and content_type == JSON:
            try:
                await self._report(
                    {"cause": None, "message": None, "sasUri": None, "result": result}
                )
                return
            except ContractError as exc:
                if exc.status != 413:
                    raise
        await self._call(
            "PUT", self.context.result_upload_url, body, {"Content-Type": content_type}
        )
        await self._report({"cause": None, "message": None, "sasUri": None})

    async def fail(self, cause: str, message: str) -> None:
        await self._report(self.context.failure(cause, message))

    async def _report(self, body: dict[str, Any]) -> None:
        content = json.dumps(body).encode()
        await self._call(
            "POST", self.context.completion_url, content, self.context.report_headers()
        )

    def client(self) -> AsyncClient:
        if self._children is None:
            url, credential = self.context.children()
            self._children = AsyncClient(url, credential, retry=self.retry)
        return self._children

    async def start(self, algorithm: str, parameters: Any, *, tag: str | None = None) -> str:
        self._started += 1
        return await self.client().submit(
            algorithm, parameters, tag=tag, parent=self.context.as_parent,
            idempotency_key=self.context.child_key(algorithm, -self._started),
        )  # fmt: skip

    async def map(
        self,
        algorithm: str,
        inputs: Iterable[Any],
        *,
        tag: str | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        client = self.client()
        specs = child_specs(self.context, algorithm, inputs, tag)
        ids = accepted(algorithm, await client.submit_many(algorithm, specs))
        states = {
            s.request_id: s async for s in client.as_completed(algorithm, ids, timeout=timeout)
        }
        results = []
        for request_id in ids:
            if not states[request_id].completed:
                raise RunFailed(algorithm, states[request_id])
            results.append((await client.fetch_result(states[request_id])).decoded())
        return results
