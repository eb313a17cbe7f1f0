"""The public HTTP API v1.2 (DESIGN §2): run, results, tags, metadata, payload, cancel.

Handlers are thin: they authenticate, validate what the path carries, call the submitter,
the canceller, the checkpoint store or the queue, and shape the answer. What a caller may
see is decided in one place, :mod:`nexus.core.visibility`: each route reads the store with
the caller's :class:`~nexus.core.visibility.Viewer`, so a run of another caller is not
found, and answers the same 404 as a run that does not exist. Path parameters are
checked before anything else: an algorithm name must be a DNS-1123 label and a request id
a UUID, so that no path trick reaches a key, a URL or a query.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from aiohttp import web

from nexus.core.announcements import FinishedRuns
from nexus.core.checkpoints import CheckpointStore
from nexus.core.compatibility import v12_error_message, v12_status
from nexus.core.errors import DependencyError
from nexus.core.httpapi import (
    ApiError,
    RunStatus,
    bad_request,
    json_errors,
    json_response,
    read_json_object,
)
from nexus.core.httpserver import Answer, Request
from nexus.core.logs import request_id as current_request
from nexus.core.queues import QueueBackend
from nexus.core.retrying import AttemptRecord
from nexus.core.routes import (
    Params,
    RouteHandler,
    Router,
    header,
    json_answer,
    request_json,
)
from nexus.core.runs import Checkpoint, ParentRef, RunKey, RunResult, Stage
from nexus.core.signing import Signer
from nexus.core.templates import DNS_LABEL, AppliedConfiguration, ConfigurationOverrides
from nexus.core.visibility import Viewer
from nexus.scheduler.authentication import Authenticator
from nexus.scheduler.cancelling import Cancellation, Canceller
from nexus.scheduler.fairshare import FairShare
from nexus.scheduler.limits import ConcurrencyLimits, ConcurrencyWait
from nexus.scheduler.links import CONTENT_ROUTE, RESULT_CONTENT_ROUTE, Links
from nexus.scheduler.quotas import Quotas
from nexus.scheduler.submission import Submitter
from nexus.scheduler.waiters import Waiters, wait_for, wait_seconds

log = logging.getLogger(__name__)

PREFIX = "/algorithm/v1.2"


class AcceptedAnswer(TypedDict):
    """The answer to a run request (202)."""

    requestId: str


class RunAnswer(TypedDict):
    """How a run stands, as the results routes answer (one, or a list for a tag)."""

    requestId: str
    status: str
    resultUri: str | None
    """A fresh URL of the result, only when ``COMPLETED``."""
    runErrorMessage: str | None
    """Cause and details, only when the run failed."""


class RunMetadata(TypedDict):
    """The whole checkpoint of a run, as the metadata route answers it."""

    algorithm: str
    requestId: str
    lifecycleStage: str
    payloadUri: str | None
    payloadInline: bool
    resultUri: str | None
    algorithmFailureCause: str | None
    algorithmFailureDetails: str | None
    receivedByHost: str
    receivedAt: str
    sentAt: str | None
    lastModified: str
    appliedConfiguration: AppliedConfiguration
    configurationOverrides: ConfigurationOverrides | None
    contentHash: str | None
    tag: str | None
    apiVersion: str
    jobUid: str | None
    parent: ParentRef | None
    payloadValidFor: str
    shard: str | None
    attempts: int
    attempt: int
    """The run's current attempt: 1, or more once it was retried (its Job's name says it)."""
    retries: list[AttemptRecord]
    """The attempts that failed and were retried, oldest first, each with its failure
    class, cause and details (:mod:`nexus.core.retrying`)."""
    retryAt: str | None
    """When the current attempt may start, while a retry waits for its delay."""
    caller: str
    queuePosition: int | None
    """The run's place in its pod's queue while it waits (``BUFFERED``), else null."""
    queuedOn: NotRequired[str]
    """The scheduler pod whose queue holds it, when it is queued."""
    waitingFor: NotRequired[ConcurrencyWait]
    """The concurrency limit it waits for, while it does."""


@dataclass
class Scheduler:
    """What the handlers work with."""

    store: CheckpointStore
    queues: QueueBackend
    submitter: Submitter
    links: Links
    signer: Signer
    authenticator: Authenticator
    canceller: Canceller
    limits: ConcurrencyLimits | None = None
    quotas: Quotas | None = None
    fair_share: FairShare | None = None
    waiters: Waiters | None = None
    """This pod's ``?wait`` requests, woken by announcements of finished runs."""
    announcements: FinishedRuns | None = None
    """What hears those announcements (``listening`` while it does)."""


SCHEDULER = web.AppKey("nexus.scheduler", Scheduler)


def _algorithm(request: web.Request) -> str:
    return algorithm_name(request.match_info["algorithm"])


def algorithm_name(name: str) -> str:
    """``name`` from a path, if it is an algorithm's name, else the 400 saying why not."""
    if not DNS_LABEL.match(name):
        raise bad_request(
            f"algorithmName: {name[:80]!r} is not a valid algorithm name"
            " (lower-case letters, digits and '-', at most 63)"
        )
    return name


def _request_id(request: web.Request) -> uuid.UUID:
    raw = request.match_info["request_id"]
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise bad_request(f"requestId: {raw[:80]!r} is not a request id (UUID)") from None
    current_request.set(str(parsed))
    return parsed


async def _viewer(request: web.Request, algorithm: str) -> Viewer:
    """The caller, if it may use ``algorithm``, as what it may see of its runs."""
    principal = await request.app[SCHEDULER].authenticator.authorize(
        request.headers.get("Authorization"), algorithm
    )
    return principal.viewer


def not_found(algorithm: str, run_id: uuid.UUID) -> ApiError:
    """The one answer for a run that does not exist and one the caller may not see."""
    return ApiError(404, "not_found", f"no run {run_id} of algorithm {algorithm!r}")


async def _checkpoint(
    request: web.Request, algorithm: str, run_id: uuid.UUID, viewer: Viewer
) -> Checkpoint:
    run = await request.app[SCHEDULER].store.get(algorithm, run_id, viewer)
    if run is None:
        raise not_found(algorithm, run_id)
    return run


def _result(scheduler: Scheduler, run: Checkpoint | RunResult) -> RunAnswer:
    """A run as v1.2 clients read it: in their status vocabulary (DESIGN §2)."""
    return {
        "requestId": str(run.id),
        "status": v12_status(run.stage),
        "resultUri": scheduler.links.result_url(run) if run.stage == Stage.COMPLETED else None,
        "runErrorMessage": v12_error_message(run.stage, run.failure_cause, run.failure_details),
    }


# -- handlers ------------------------------------------------------------------------------


JsonBody = Callable[[], "dict[str, Any] | Awaitable[dict[str, Any]]"]
"""Reads a request's body as a JSON object (or raises its 400/413/415): called once the
caller is authorized, so that a stranger learns nothing of how its body is read."""


async def accept_run(
    scheduler: Scheduler,
    algorithm: str,
    authorization: str | None,
    read_body: JsonBody,
    idempotency_key: str | None,
) -> AcceptedAnswer:
    """A v1.2 run request (its path's algorithm, its headers' credential and key, its
    body) checked, authorized and submitted, on aiohttp or the lean server alike."""
    algorithm = algorithm_name(algorithm)
    principal = await scheduler.authenticator.authorize(authorization, algorithm)
    body = read_body()
    if not isinstance(body, dict):
        body = await body
    accepted = await scheduler.submitter.submit(principal, algorithm, body, idempotency_key)
    return {"requestId": str(accepted.request_id)}


async def run(request: web.Request) -> web.Response:
    answer = await accept_run(
        request.app[SCHEDULER],
        request.match_info["algorithm"],
        request.headers.get("Authorization"),
        lambda: read_json_object(request),
        request.headers.get("Idempotency-Key"),
    )
    return json_response(answer, status=202)


def lean_run(app: web.Application, max_body: int) -> RouteHandler:
    """:func:`run` on the lean server (:func:`add_lean_routes`)."""

    async def run(request: Request, params: Params) -> Answer:
        answer = await accept_run(
            app[SCHEDULER],
            params["algorithm"],
            header(request, "authorization"),
            lambda: request_json(request, max_body),
            header(request, "idempotency-key"),
        )
        return json_answer(answer, 202)

    return run


async def result(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = await _viewer(request, algorithm)
    scheduler = request.app[SCHEDULER]
    try:
        wait = wait_seconds(request.query.get("wait"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if not wait or scheduler.waiters is None:
        found = await scheduler.store.result(algorithm, run_id, viewer)
        if found is None:
            raise not_found(algorithm, run_id)
        return json_response(_result(scheduler, found))
    key, waiters = RunKey(algorithm, run_id), scheduler.waiters
    finished = waiters.watch_run(key)  # before the read: no announcement slips by
    try:
        found = await waiters.read(key, viewer)
        if found is None:
            raise not_found(algorithm, run_id)
        if not found.stage.terminal:
            found = await wait_for(finished, wait) or await waiters.read(key, viewer) or found
    finally:
        waiters.forget_run(key, finished)
    return json_response(_result(scheduler, found))


async def metadata(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = await _viewer(request, algorithm)
    scheduler = request.app[SCHEDULER]
    run = await _checkpoint(request, algorithm, run_id, viewer)
    body: RunMetadata = {
        "algorithm": run.algorithm,
        "requestId": str(run.id),
        "lifecycleStage": v12_status(run.stage),
        "payloadUri": run.payload_uri,
        "payloadInline": run.has_inline_payload,
        "resultUri": run.result_uri,
        "algorithmFailureCause": run.failure_cause,
        "algorithmFailureDetails": run.failure_details,
        "receivedByHost": run.received_by_host,
        "receivedAt": run.received_at.isoformat(),
        "sentAt": run.sent_at.isoformat() if run.sent_at else None,
        "lastModified": run.last_modified.isoformat(),
        "appliedConfiguration": run.applied_configuration,
        "configurationOverrides": run.configuration_overrides,
        "contentHash": run.content_hash,
        "tag": run.tag,
        "apiVersion": run.api_version,
        "jobUid": run.job_uid,
        "parent": run.parent,
        "payloadValidFor": f"{int(run.payload_valid_for.total_seconds())}s",
        "shard": run.shard or run.applied_configuration.get("shard"),
        "attempts": run.attempts,
        "attempt": run.attempt,
        "retries": run.retries,
        "retryAt": run.retry_at.isoformat() if run.retry_at else None,
        "caller": run.caller,
        "queuePosition": None,
    }
    if run.stage == Stage.BUFFERED:
        try:
            pods = await scheduler.queues.pods()
            where = await scheduler.submitter.queue_position(run, pods.live)
        except DependencyError as exc:
            log.warning("queue position unavailable: %s", exc)
            where = None
        if where is not None:
            body["queuePosition"] = where[1]
            body["queuedOn"] = where[0]
        if scheduler.limits is not None:
            try:
                waiting = await scheduler.limits.waiting(run)
            except DependencyError as exc:
                log.warning("concurrency limits unavailable: %s", exc)
                waiting = None
            if waiting is not None:
                body["waitingFor"] = waiting
    return json_response(body)


async def payload(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = await _viewer(request, algorithm)
    run = await _checkpoint(request, algorithm, run_id, viewer)
    url = request.app[SCHEDULER].links.input_url(run, for_client=True)
    raise web.HTTPFound(url)


async def payload_content(request: web.Request) -> web.Response:
    """An inline input, for the holder of a signed link (no bearer token)."""
    algorithm, run_id = _algorithm(request), _request_id(request)
    scheduler = request.app[SCHEDULER]
    path = CONTENT_ROUTE.format(algorithm=algorithm, request_id=run_id)
    problem = scheduler.signer.check_path(
        path, request.query.get("expires", ""), request.query.get("signature", "")
    )
    if problem is not None:
        raise ApiError(403, "forbidden", problem)
    content = scheduler.submitter.recent_inputs.recall(RunKey(algorithm, run_id))
    if content is None:
        content = await scheduler.store.inline_payload(algorithm, run_id)
    if content is None:
        raise ApiError(404, "not_found", f"run {run_id} has no input kept inline")
    return web.Response(body=content, content_type="application/json")


async def result_content(request: web.Request) -> web.Response:
    """A result kept inline, for the holder of a signed link (no bearer token)."""
    algorithm, run_id = _algorithm(request), _request_id(request)
    scheduler = request.app[SCHEDULER]
    path = RESULT_CONTENT_ROUTE.format(algorithm=algorithm, request_id=run_id)
    problem = scheduler.signer.check_path(
        path, request.query.get("expires", ""), request.query.get("signature", "")
    )
    if problem is not None:
        raise ApiError(403, "forbidden", problem)
    content = await scheduler.store.inline_result(algorithm, run_id)
    if content is None:  # deleted by retention since the link was made
        raise ApiError(404, "not_found", f"run {run_id} has no result kept inline")
    return web.Response(body=content, content_type="application/json")


async def cancel(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    scheduler = request.app[SCHEDULER]
    principal = await scheduler.authenticator.authorize(
        request.headers.get("Authorization"), algorithm
    )
    body = await read_json_object(request) if request.can_read_body else {}
    await scheduler.canceller.cancel(
        algorithm, run_id, Cancellation.from_body(body, principal.caller), principal.viewer
    )
    answer: RunStatus = {"requestId": str(run_id), "status": v12_status(Stage.CANCELLED)}
    return json_response(answer)


async def usage(request: web.Request) -> web.Response:
    """What the caller has used of its quotas and limits."""
    scheduler = request.app[SCHEDULER]
    principal = await scheduler.authenticator.authenticate(request.headers.get("Authorization"))
    if scheduler.quotas is None or scheduler.limits is None:
        raise ApiError(404, "not_found", "usage is not kept by this scheduler")
    limit = scheduler.limits.size(f"caller/{principal.caller}")
    weight = scheduler.fair_share.weight(principal) if scheduler.fair_share else None
    answer = await scheduler.quotas.usage(principal.caller, limit, weight)
    return json_response(answer)


RUN_ROUTE = f"{PREFIX}/run/{{algorithm}}"


def add_lean_routes(app: web.Application, router: Router, max_body: int) -> None:
    """The routes of this module served by the lean server (every run's submit), the
    same as on aiohttp (:func:`add_routes`), which answers their path's other methods."""
    router.add("POST", RUN_ROUTE, lean_run(app, max_body))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(RUN_ROUTE, json_errors(run))
    r.add_get(f"{PREFIX}/results/{{algorithm}}/requests/{{request_id}}", json_errors(result))
    r.add_get(f"{PREFIX}/metadata/{{algorithm}}/requests/{{request_id}}", json_errors(metadata))
    r.add_get(f"{PREFIX}/payload/{{algorithm}}/requests/{{request_id}}", json_errors(payload))
    content = f"{PREFIX}/payload/{{algorithm}}/requests/{{request_id}}/content"
    r.add_get(content, json_errors(payload_content))
    result_path = f"{PREFIX}/results/{{algorithm}}/requests/{{request_id}}/content"
    r.add_get(result_path, json_errors(result_content))
    r.add_post(f"{PREFIX}/cancel/{{algorithm}}/requests/{{request_id}}", json_errors(cancel))
    r.add_get(f"{PREFIX}/usage", json_errors(usage))
