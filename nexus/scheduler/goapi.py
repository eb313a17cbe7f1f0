"""The Go Nexus API v1 (DESIGN §2, docs/go-v1-api.md), served beside v1.2 on the same store.

``/algorithm/v1/…``: run (with ``?dryRun=true``), results by id and by tag, metadata, payload,
buffer and cancel, with the Go scheduler's bodies, field names, status codes and content
types, so that clients built on its SDK work unchanged. Every route goes through the same
authentication, submitter, canceller and checkpoint store as v1.2, so a run has the same
guarantees whichever API accepted it, and either API reads it.

Guarantees, where Nexus keeps more than the Go scheduler did:

* **Durable before acknowledged.** The 202 of a run is sent once its checkpoint is
  committed (the Go scheduler answered before buffering it).
* **A dry run creates nothing.** It passes every check a real request does, then answers
  the Job that would be created; no checkpoint, input, quota or queue entry is written (the
  Go scheduler buffered dry runs).
* **A finished run stays finished.** Cancelling one is refused with 409 and leaves it as it
  was (the Go scheduler overwrote a ``COMPLETED`` run with ``CANCELLED``).
* **Errors are answered, never dropped.** Bad input is a 400 naming the field, an unknown
  run a 404, an outage a 503 with ``Retry-After``, each as JSON ``{"error", "message"}`` —
  or, for a client that accepts only ``text/plain`` (as the Go scheduler wrote them), as its
  message in plain text.
* **Secrets stay in the Job.** The Job answered by the buffer route and by a dry run
  carries neither the run's token nor its result upload URL.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import NotRequired, TypedDict

import orjson
from aiohttp import web

from nexus.core.checkpoints import MAX_TAG_RESULTS
from nexus.core.errors import TransitionRejected
from nexus.core.httpapi import (
    ApiError,
    Handler,
    bad_request,
    error_of,
    json_errors,
    json_response,
    read_json_object,
)
from nexus.core.httpserver import Answer, Request
from nexus.core.routes import (
    Params,
    RouteHandler,
    Router,
    error_answer,
    header,
    json_answer,
    request_json,
)
from nexus.core.runs import Checkpoint, NewRun, RunResult, Stage
from nexus.core.visibility import Viewer
from nexus.scheduler.api import (
    SCHEDULER,
    JsonBody,
    Scheduler,
    _algorithm,
    _request_id,
    algorithm_name,
    not_found,
)
from nexus.scheduler.authentication import Principal
from nexus.scheduler.cancelling import Cancellation
from nexus.scheduler.goshapes import (
    GoCheckpoint,
    GoRequestResult,
    GoTaggedResult,
    applied_spec,
    error_message,
    go_duration,
    go_time,
    overrides_spec,
    parent_ref,
    run_body,
)
from nexus.scheduler.jobs import RunLinks, build_job, serialise

PREFIX = "/algorithm/v1"
API_VERSION = "v1"
V12_SECRETS = "customConfiguration.secrets["
GO_SECRETS = "customConfiguration.runtimeEnvironment.mappedEnvironmentVariables["
WITHHELD = "(withheld: made when the Job is created)"
"""What the answered Job carries instead of the run's token and result upload URL."""


class GoAccepted(TypedDict):
    """The answer to a run request (202): ``requestId``; for a dry run also ``job``, the
    Job that would be created, as JSON text (Go clients read this answer as a map of
    strings)."""

    requestId: str
    job: NotRequired[str]


def go_errors(handler: Handler) -> Handler:
    """``handler`` with :func:`json_errors`; an error answered to a client that accepts
    ``text/plain`` but not JSON is sent as its message in plain text, as the Go scheduler
    wrote its errors (its generated client reads a JSON error body as a string)."""
    wrapped = json_errors(handler)

    @functools.wraps(wrapped)
    async def handle(request: web.Request) -> web.StreamResponse:
        answer = await wrapped(request)
        if answer.status < 400 or not isinstance(answer, web.Response):
            return answer
        if not _wants_text(request.headers.get("Accept", "")) or answer.body is None:
            return answer
        error = orjson.loads(answer.body)  # type: ignore[arg-type]
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
        headers.pop("Content-Length", None)
        return web.Response(status=answer.status, text=error["message"], headers=headers)

    return handle


def _wants_text(accept: str) -> bool:
    """Whether a client with this ``Accept`` takes ``text/plain`` and not JSON: its errors
    are then sent as their message in plain text."""
    return "text/plain" in accept and "json" not in accept


async def _principal(request: web.Request, algorithm: str) -> Principal:
    authorization = request.headers.get("Authorization")
    return await request.app[SCHEDULER].authenticator.authorize(authorization, algorithm)


# -- reads: the one place each kind of read of a client's runs is made ----------------------


async def _read_checkpoint(
    scheduler: Scheduler, algorithm: str, run_id: uuid.UUID, viewer: Viewer
) -> Checkpoint:
    run = await scheduler.store.get(algorithm, run_id, viewer)
    if run is None:
        raise not_found(algorithm, run_id)
    return run


async def _read_result(
    scheduler: Scheduler, algorithm: str, run_id: uuid.UUID, viewer: Viewer
) -> RunResult:
    found = await scheduler.store.result(algorithm, run_id, viewer)
    if found is None:
        raise not_found(algorithm, run_id)
    return found


async def _read_tagged(scheduler: Scheduler, principal: Principal, tag: str) -> list[RunResult]:
    names = {n for n in scheduler.submitter.catalog.templates if principal.may_run(n)}
    names |= principal.algorithms - {"*"}  # named ones whose template may be gone
    found = await scheduler.store.results_by_tag_across(
        sorted(names), tag, principal.viewer, MAX_TAG_RESULTS + 1
    )
    if len(found) > MAX_TAG_RESULTS:
        raise bad_request(
            f"requestTag: {tag!r} has more than {MAX_TAG_RESULTS} runs; read them per algorithm,"
            " page by page, at /algorithm/v1.2/results/{algorithmName}/tags/{tag}"
        )
    return found


# -- answers --------------------------------------------------------------------------------


def _result(scheduler: Scheduler, run: Checkpoint | RunResult) -> GoRequestResult:
    url = scheduler.links.result_url(run) if run.stage == Stage.COMPLETED else None
    return {
        "requestId": str(run.id),
        "status": run.stage.value,
        "resultUri": url or "",
        "runErrorMessage": error_message(run),
    }


def _job_text(scheduler: Scheduler, run: Checkpoint, *, planned: bool) -> str:
    """The Job of ``run`` as the dispatcher makes it, secrets withheld, as JSON text."""
    config = run.applied_configuration
    links = scheduler.links
    catalog = scheduler.submitter.catalog
    job = build_job(
        run,
        RunLinks(
            input_url=WITHHELD if planned else links.input_url(run, for_client=True),
            result_upload_url=WITHHELD,
            receiver_url=links.receiver_url(config.get("shard", "")),
            run_token=WITHHELD,
        ),
        workgroup=catalog.workgroup(config.get("workgroup", "")),
        ttl_after_finished=scheduler.submitter.settings.job_ttl_after_finished,
    )
    return serialise(job).decode()


def _as_checkpoint(run: NewRun) -> Checkpoint:
    now = datetime.now(UTC)
    return Checkpoint(
        algorithm=run.algorithm,
        id=run.id,
        stage=run.stage,
        caller=run.caller,
        received_by_host=run.received_by_host,
        received_at=now,
        last_modified=now,
        applied_configuration=run.applied_configuration,
        payload_valid_for=run.payload_valid_for,
        payload_uri=run.payload_uri,
        has_inline_payload=run.payload_inline is not None,
        result_uri=None,
        failure_cause=None,
        failure_details=None,
        sent_at=None,
        configuration_overrides=run.configuration_overrides,
        content_hash=run.content_hash,
        tag=run.tag,
        api_version=run.api_version,
        job_uid=None,
        parent=run.parent,
        shard=None,
        attempts=0,
        idempotency_key=None,
    )


def _dry_run(raw: str) -> bool:
    """The ``dryRun`` query parameter, ``true`` or ``false``."""
    if raw not in ("true", "false"):
        raise bad_request(f"dryRun: expected true or false, got {raw[:20]!r}")
    return raw == "true"


# -- handlers -------------------------------------------------------------------------------


async def run(request: web.Request) -> web.Response:
    answer = await accept_run(
        request.app[SCHEDULER],
        request.match_info["algorithm"],
        request.query.get("dryRun", "false"),
        request.headers.get("Authorization"),
        lambda: read_json_object(request),
        request.headers.get("Idempotency-Key"),
    )
    return json_response(answer, status=202)


def lean_run(app: web.Application, max_body: int) -> RouteHandler:
    """:func:`run` on the lean server, its errors answered as :func:`go_errors` answers
    them (in plain text to a client that accepts only that)."""

    async def run(request: Request, params: Params) -> Answer:
        try:
            answer = await accept_run(
                app[SCHEDULER],
                params["algorithm"],
                request.query.get("dryRun", "false"),
                header(request, "authorization"),
                lambda: request_json(request, max_body),
                header(request, "idempotency-key"),
            )
        except Exception as exc:
            status, code, message, headers = error_of(exc, request.path)
            if not _wants_text(request.headers.get("accept", "")):
                return error_answer(status, code, message, headers)
            return Answer(status, message.encode(), "text/plain; charset=utf-8", headers)
        return json_answer(answer, 202)

    return run


async def accept_run(
    scheduler: Scheduler,
    algorithm: str,
    dry_run_given: str,
    authorization: str | None,
    read_body: JsonBody,
    idempotency_key: str | None,
) -> GoAccepted:
    """A Go v1 run request (its path's algorithm, its ``dryRun``, its headers' credential
    and key, its body) checked, authorized and submitted — or, for a dry run, the Job it
    would make — on aiohttp or the lean server alike."""
    algorithm = algorithm_name(algorithm)
    dry_run = _dry_run(dry_run_given)
    principal = await scheduler.authenticator.authorize(authorization, algorithm)
    read = read_body()
    body = run_body(read if isinstance(read, dict) else await read)
    try:
        accepted = await scheduler.submitter.submit(
            principal,
            algorithm,
            body,
            idempotency_key,
            dry_run=dry_run,
            api_version=API_VERSION,
        )
    except ApiError as exc:
        if exc.code == "unknown_algorithm":  # the Go scheduler's answer: a 400
            raise bad_request(exc.message, exc.code) from exc
        if V12_SECRETS in exc.message:  # a Secret the template does not allow: its Go name
            exc.message = exc.message.replace(V12_SECRETS, GO_SECRETS)
        raise
    answer: GoAccepted = {"requestId": str(accepted.request_id)}
    if accepted.planned is not None:
        answer["job"] = _job_text(scheduler, _as_checkpoint(accepted.planned), planned=True)
    return answer


async def result(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = (await _principal(request, algorithm)).viewer
    scheduler = request.app[SCHEDULER]
    found = await _read_result(scheduler, algorithm, run_id, viewer)
    return json_response(_result(scheduler, found))


async def results_by_tag(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    principal = await scheduler.authenticator.authenticate(request.headers.get("Authorization"))
    tag = request.match_info["tag"]
    if not tag.isprintable():  # no run carries one, and PostgreSQL text cannot hold NUL
        raise bad_request("requestTag: must not contain control characters")
    answer: list[GoTaggedResult] = [
        {**_result(scheduler, run), "algorithmName": run.algorithm}
        for run in await _read_tagged(scheduler, principal, tag)
    ]
    return json_response(answer)


async def metadata(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = (await _principal(request, algorithm)).viewer
    scheduler = request.app[SCHEDULER]
    run = await _read_checkpoint(scheduler, algorithm, run_id, viewer)
    body: GoCheckpoint = {
        "algorithm": run.algorithm,
        "id": str(run.id),
        "lifecycle_stage": run.stage.value,
        "payload_uri": scheduler.links.input_url(run, for_client=True),
        "result_uri": (scheduler.links.result_url(run) or "")
        if run.stage == Stage.COMPLETED
        else "",
        "algorithm_failure_cause": run.failure_cause or "",
        "algorithm_failure_details": run.failure_details or "",
        "received_by_host": run.received_by_host,
        "received_at": go_time(run.received_at),
        "sent_at": go_time(run.sent_at),
        "applied_configuration": applied_spec(run.applied_configuration),
        "content_hash": run.content_hash or "",
        "last_modified": go_time(run.last_modified),
        "api_version": run.api_version,
        "payload_valid_for": go_duration(run.payload_valid_for),
    }
    if run.configuration_overrides:
        body["configuration_overrides"] = overrides_spec(run.configuration_overrides)
    if run.tag:
        body["tag"] = run.tag
    if run.job_uid:
        body["job_uid"] = run.job_uid
    parent = parent_ref(run.parent)
    if parent is not None:
        body["parent"] = parent
    return json_response(body)


async def payload(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = (await _principal(request, algorithm)).viewer
    scheduler = request.app[SCHEDULER]
    run = await _read_checkpoint(scheduler, algorithm, run_id, viewer)
    raise web.HTTPFound(scheduler.links.input_url(run, for_client=True))


async def buffer(request: web.Request) -> web.Response:
    """The run's Job (as the Go scheduler answered its buffered entry: JSON as text)."""
    algorithm, run_id = _algorithm(request), _request_id(request)
    viewer = (await _principal(request, algorithm)).viewer
    scheduler = request.app[SCHEDULER]
    run = await _read_checkpoint(scheduler, algorithm, run_id, viewer)
    return web.Response(text=_job_text(scheduler, run, planned=False), content_type="text/plain")


async def cancel(request: web.Request) -> web.Response:
    algorithm, run_id = _algorithm(request), _request_id(request)
    principal = await _principal(request, algorithm)
    scheduler = request.app[SCHEDULER]
    body = await read_json_object(request) if request.can_read_body else {}
    cancellation = Cancellation.from_body(body, principal.caller)
    try:
        await scheduler.canceller.cancel(algorithm, run_id, cancellation, principal.viewer)
    except TransitionRejected as exc:  # say how it ended in the Go vocabulary
        run = await _read_checkpoint(scheduler, algorithm, run_id, principal.viewer)
        raise ApiError(409, "conflict", f"run {run_id} is already {run.stage.value}") from exc
    return web.Response(text="", content_type="text/plain")  # Go's answer: 200, no body


RUN_ROUTE = f"{PREFIX}/run/{{algorithm}}"


def add_lean_go_routes(app: web.Application, router: Router, max_body: int) -> None:
    """The Go v1 submit on the lean server, as on aiohttp (:func:`add_go_routes`)."""
    router.add("POST", RUN_ROUTE, lean_run(app, max_body))


def add_go_routes(app: web.Application) -> None:
    r = app.router
    each = "{algorithm}/requests/{request_id}"
    r.add_post(RUN_ROUTE, go_errors(run))
    r.add_get(f"{PREFIX}/results/{each}", go_errors(result))
    r.add_get(f"{PREFIX}/results/tags/{{tag}}", go_errors(results_by_tag))
    r.add_get(f"{PREFIX}/metadata/{each}", go_errors(metadata))
    r.add_get(f"{PREFIX}/payload/{each}", go_errors(payload))
    r.add_get(f"{PREFIX}/buffer/{each}", go_errors(buffer))
    r.add_post(f"{PREFIX}/cancel/{each}", go_errors(cancel))
