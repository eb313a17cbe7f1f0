"""Completions: an algorithm container reports how its run ended (DESIGN §3).

``POST /algorithm/v1.2/complete/{algorithmName}/requests/{requestId}`` with
``{"cause", "message", "sasUri"}`` (or the older ``{"errorCause", "errorDetails",
"resultUri"}``; containers of v1.1 also repeat the ``requestId``, which must then be the
path's). ``null`` is absent, and field names are read in any letter case
(:mod:`nexus.core.compatibility`); the answer's ``status`` is in the v1.2 vocabulary.
No cause means ``COMPLETED``, with the result at ``sasUri`` or, when that is
absent, at the run's default result location (stored as a key, presigned on every read);
a cause means ``FAILED`` with that cause and message — or, when the run's template retries
algorithm failures (``retryPolicy.algorithmFailure``, never by default) and the completion
names the ``attempt`` that failed (its ``NEXUS__ATTEMPT``), a new attempt of the run (see
:mod:`nexus.core.retrying`), which the maintainer's sweep queues; a report of an attempt
that is over changes nothing. A completion without a cause may
instead carry the result document itself, ``"result"`` (any JSON value, at most
``max_inline_result`` bytes as compact JSON): it is written by the same UPDATE that makes
the run ``COMPLETED``, and the scheduler serves it from a signed link. A larger one is
refused with 413 and nothing is recorded, so the run can still complete by the PUT.
An empty or blank field is absent.
``sasUri`` is an http(s) or s3 URL; in Nexus' own bucket it may name only the run's own
result location (Nexus presigns what its bucket holds for the run's client). A run not
yet sent (``NEW``) cannot complete: 409.

Guarantees:

* **Only the run completes itself.** The request must carry the run's token
  (``Authorization: Bearer <NEXUS__RUN_TOKEN>``), an HMAC of the run checked without a
  database read; token-less completions are refused unless a setting admits them.
* **Idempotent.** A run that has finished is not changed; the answer says what it is.
* **Group-committed.** Concurrent completions become one UPDATE per batch.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from nexus.core.checkpoints import CheckpointStore
from nexus.core.compatibility import FieldNames, GivenTwice, canonical, v12_status
from nexus.core.httpapi import ApiError, RunStatus, bad_request, json_type
from nexus.core.httpserver import Answer, Request
from nexus.core.logs import request_id as current_request
from nexus.core.meters import LoopCounter
from nexus.core.retrying import Retry, decide, record
from nexus.core.routes import Params, Router, json_answer, request_json
from nexus.core.runs import Stage, Transition, may_move
from nexus.core.signing import Signer
from nexus.core.storage import ObjectNames
from nexus.core.templates import DNS_LABEL
from nexus.core.visibility import SYSTEM
from receiver.settings import ReceiverSection

log = logging.getLogger(__name__)

COMPLETIONS = LoopCounter(
    "nexus_completions_total",
    "Completions received, by outcome (completed, failed, duplicate, refused).",
    ["outcome"],
)
MAX_URI = 4096
COMPLETION_FIELDS = FieldNames(
    (
        "cause",
        "message",
        "sasUri",
        "errorCause",
        "errorDetails",
        "resultUri",
        "requestId",
        "result",
        "attempt",
    )
)
"""The fields of a completion, as :func:`canonical` finds them in any letter case
(``requestId``: older containers repeat the path's id in the body; ``attempt``: the
attempt that reports, ``NEXUS__ATTEMPT``)."""
# bound once: looking a labelled child up costs as much as counting
_COMPLETED, _FAILED, _DUPLICATE, _REFUSED = (
    COMPLETIONS.labels(outcome) for outcome in ("completed", "failed", "duplicate", "refused")
)


@dataclass
class Receiver:
    store: CheckpointStore
    signer: Signer
    names: ObjectNames
    settings: ReceiverSection
    max_body: int
    """The largest body a completion may have, decoded (``http.max_body_size``)."""


RECEIVER = web.AppKey("nexus.receiver", Receiver)


def _optional_text(body: dict[str, Any], *names: str, limit: int, cut: bool) -> str | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise bad_request(f"{name}: expected a string or null, got {json_type(value)}")
        if len(value) > limit:
            if not cut:
                raise bad_request(f"{name}: longer than {limit} characters")
            value = value[:limit] + "…"
        if "\x00" in value and not cut:  # no URL; a message's NUL the store replaces
            raise bad_request(f"{name}: must not contain NUL characters")
        return value
    return None


def _result_location(location: str, own: str, names: ObjectNames) -> str:
    """``location`` if a run may report it: an http(s) or s3 URL that names, in Nexus'
    own bucket, nothing but this run's result (clients get a presigned GET of it)."""
    parts = urlsplit(location.strip())
    if parts.scheme not in ("https", "http", "s3") or not parts.netloc:
        raise bad_request("sasUri: expected an http(s):// or s3:// URL")
    location = parts.geturl()
    if names.key_of(location) is not None and location != own:
        raise bad_request(f"sasUri: the only location of Nexus' bucket a run may name is {own}")
    return location


def _same_run(named: Any, run_id: uuid.UUID) -> None:
    """An id in the body (older containers send one) must be the path's."""
    if named is None:
        return
    try:
        same = isinstance(named, str) and uuid.UUID(named) == run_id
    except ValueError:
        same = False
    if not same:
        raise bad_request(f"requestId: {str(named)[:80]!r} is not the run of the path, {run_id}")


def _inline_result(body: dict[str, Any], limit: int) -> bytes | None:
    """The result document a completion carries itself, as compact JSON, or ``None``."""
    if body.get("result") is None:
        return None
    try:
        document = orjson.dumps(body["result"])
    except orjson.JSONEncodeError as exc:  # parsed deeper than it can be written again
        raise bad_request(f"result: cannot be stored: {exc}") from exc
    if len(document) > limit:
        raise ApiError(
            413,
            "result_too_large",
            f"result: {len(document)} bytes as JSON, more than the {limit} a completion may"
            " carry; upload it to NEXUS__RESULT_UPLOAD_URL and complete without it",
        )
    return document


def _authorize(receiver: Receiver, header: str | None, algorithm: str, run_id: str) -> None:
    if header is None:
        if receiver.settings.allow_tokenless_completions:
            return
        _REFUSED.inc()
        raise ApiError(401, "unauthorized", "a completion must carry its run token (Bearer)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not receiver.signer.check_run_token(
        algorithm, run_id, token.strip()
    ):
        _REFUSED.inc()
        raise ApiError(401, "unauthorized", "the run token does not match this run")


def _is_canonical(parsed: str) -> bool:
    """Whether ``parsed``, a string ``uuid.UUID`` took, is spelt as ``str()`` spells that
    UUID: 36 characters, lower case, hyphens at 8, 13, 18 and 23."""
    return (
        len(parsed) == 36
        and parsed[8] == parsed[13] == parsed[18] == parsed[23] == "-"
        and (parsed.islower() or parsed.replace("-", "").isdigit())
    )


async def record_completion(receiver: Receiver, request: Request, params: Params) -> RunStatus:
    """Record the completion ``request`` carries; the run and the stage it is in now (in
    the v1.2 vocabulary), for either route to answer in its own way."""
    algorithm = params["algorithm"]
    raw_id = params["request_id"]
    if not DNS_LABEL.match(algorithm):
        raise bad_request(f"algorithmName: {algorithm[:80]!r} is not a valid algorithm name")
    try:
        run_id = uuid.UUID(raw_id)
    except ValueError:
        raise bad_request(f"requestId: {raw_id[:80]!r} is not a request id (UUID)") from None
    # canonical, whatever spelling the path used; nearly always the path's own already
    rid = raw_id if _is_canonical(raw_id) else str(run_id)
    current_request.set(rid)
    _authorize(receiver, request.headers.get("authorization"), algorithm, rid)
    body = request_json(request, receiver.max_body)
    try:
        body = canonical(body, COMPLETION_FIELDS)
    except GivenTwice as exc:
        raise bad_request(str(exc)) from None
    _same_run(body.get("requestId"), run_id)
    limit = receiver.settings.max_message_length
    cause = _optional_text(body, "cause", "errorCause", limit=1024, cut=True)
    message = _optional_text(body, "message", "errorDetails", limit=limit, cut=True)
    location = _optional_text(body, "sasUri", "resultUri", limit=MAX_URI, cut=False)
    # containers that always send every field send "" for none
    cause = cause if cause and cause.strip() else None
    location = location if location and location.strip() else None
    inline = _inline_result(body, receiver.settings.max_inline_result)
    if inline is not None and (cause is not None or location is not None):
        raise bad_request(
            "result: a completion carries either the result, or a location (sasUri),"
            " or a failure (cause), not two of them"
        )
    attempt = _attempt(body)
    if cause is not None and attempt is not None:
        retried = await _retry(receiver, algorithm, run_id, attempt, cause, message)
        if retried is not None:
            return retried
    if inline is not None:
        change = Transition(algorithm, run_id, Stage.COMPLETED, result_inline=inline)
    elif cause is None:
        own = receiver.names.uri(receiver.names.result_key(algorithm, rid))
        result = _result_location(location, own, receiver.names) if location else own
        change = Transition(algorithm, run_id, Stage.COMPLETED, result_uri=result)
    else:
        change = Transition(
            algorithm, run_id, Stage.FAILED, cause=cause, details=message, at_attempt=attempt
        )
    for _ in range(3):
        if await receiver.store.transition(change):
            (_COMPLETED if cause is None else _FAILED).inc()
            return {"requestId": rid, "status": v12_status(change.to)}
        current = await receiver.store.result(algorithm, run_id, SYSTEM)
        if current is None:
            _REFUSED.inc()
            raise ApiError(404, "not_found", f"no run {run_id} of algorithm {algorithm!r}")
        if current.stage.terminal:  # already finished: the first report stands
            _DUPLICATE.inc()
            return {"requestId": rid, "status": v12_status(current.stage)}
        if not may_move(current.stage, change.to):  # NEW: not even queued, so no Job
            _REFUSED.inc()
            raise ApiError(
                409,
                "conflict",
                f"run {run_id} is {v12_status(current.stage)}: it has not been sent",
            )
        # An unfinished run must take a completion; never answer 2xx without recording it.
    log.error("a completion could not be recorded on an unfinished run")
    raise ApiError(
        503, "unavailable", "the completion could not be recorded; retry", {"Retry-After": "1"}
    )


def _attempt(body: dict[str, Any]) -> int | None:
    value = body.get("attempt")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"attempt: expected a whole number from 1, got {json_type(value)}")
    return value


async def _retry(
    receiver: Receiver,
    algorithm: str,
    run_id: uuid.UUID,
    attempt: int,
    cause: str,
    message: str | None,
) -> RunStatus | None:
    """The answer when the failure of ``attempt`` is settled here: a report of an attempt
    that is over (nothing changes), or a new attempt its template's policy asks for.
    ``None``: the run ends as reported, by the caller."""
    run = await receiver.store.get(algorithm, run_id, SYSTEM)
    if run is None or run.stage == Stage.NEW:
        return None  # answered by the usual path (404, 409)
    if run.stage.terminal or run.attempt != attempt:
        _DUPLICATE.inc()
        return {"requestId": str(run_id), "status": v12_status(run.stage)}
    decision = decide(run.applied_configuration, run.retries, "algorithmFailure")
    if not isinstance(decision, Retry):
        return None
    now = datetime.now(UTC)
    retry_at = now + timedelta(seconds=decision.delay) if decision.delay > 0 else None
    failed = record(
        run_id, attempt, "algorithmFailure", cause, message or "", now, retry_at=retry_at
    )
    if await receiver.store.retry(run.key, attempt, failed, retry_at=retry_at) is None:
        current = await receiver.store.result(algorithm, run_id, SYSTEM)  # decided meanwhile
        _DUPLICATE.inc()
        status = v12_status(current.stage) if current else "NEW"
        return {"requestId": str(run_id), "status": status}
    _FAILED.inc()
    log.info(
        "run retried: algorithmFailure",
        extra={"action": "retried", "attempt": attempt + 1, "cause": cause},
    )
    return {"requestId": str(run_id), "status": v12_status(Stage.BUFFERED)}


PATH = "/algorithm/v1.2/complete/{algorithm}/requests/{request_id}"


def add_routes(router: Router, app: web.Application) -> None:
    """The v1.2 completion on ``router``, recorded by the receiver ``app`` holds."""

    async def complete(request: Request, params: Params) -> Answer:
        return json_answer(await record_completion(app[RECEIVER], request, params))

    router.add("POST", PATH, complete)
