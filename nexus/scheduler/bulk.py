"""Bulk submit (DESIGN §2): ``POST /algorithm/v1.2/runs/{algorithmName}`` with
``{"runs": [<run request>, …]}``, at most :data:`MAX_RUNS`, answered
``200 {"runs": [{"requestId"} | {"error", "message"}, …]}`` in the same order.

Guarantees:

* **Each run judged alone.** Every item passes exactly the checks of a single submit (the
  submitter's own, run as a dry run, so none is forgotten here); one bad item is answered
  with its error and never fails the others. An item's ``idempotencyKey`` (in any letter
  case, as the run's own fields) is its ``Idempotency-Key``: a repeat within 24 hours
  answers the first run's id; a key given to two items of one request is refused for the
  later ones.
* **The request as a whole, before anything is stored.** A body that is not an object with
  a list of objects, or more than :data:`MAX_RUNS` of them (413), is refused whole; so is
  a request this pod cannot take now (429/503 with ``Retry-After``: a full queue, Redis
  down, or more checkpoint writes than the store takes) — nothing is uploaded, written or
  queued.
* **Every guarantee of a single submit, at the cost of one.** Inputs kept in S3 are
  uploaded concurrently; the checkpoints of every accepted item are one group-committed
  batch (durable before the answer, as a single submit's); their queue entries one
  pipelined push. A run whose checkpoint could not be written is answered with an error,
  never with an id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NotRequired, TypedDict

from aiohttp import web

from nexus.core.compatibility import FieldNames
from nexus.core.errors import CheckpointRejected, DependencyError, StoreNotReached
from nexus.core.httpapi import (
    ApiError,
    bad_request,
    json_errors,
    json_response,
    json_type,
    read_json_object,
)
from nexus.core.httpserver import Answer, Request
from nexus.core.queues import QueuedRun
from nexus.core.routes import Params, RouteHandler, Router, header, json_answer, request_json
from nexus.core.runs import NewRun, RunKey, new_run_ids
from nexus.scheduler.api import PREFIX, SCHEDULER, JsonBody, Scheduler, algorithm_name
from nexus.scheduler.authentication import Principal
from nexus.scheduler.quotas import Taken
from nexus.scheduler.submission import (
    ACCEPTED,
    RUN_FIELDS,
    Submitter,
    conflict_message,
)

log = logging.getLogger(__name__)

MAX_RUNS = 1000
"""The most runs one bulk request may carry."""
BARE = frozenset(("algorithmParameters",))
"""The fields of an item that gives nothing but its parameters (as most bulk items do)."""
KEY_FIELD = FieldNames(("idempotencyKey",))
"""An item's idempotency key, found in any letter case as the run's own fields are."""


class ItemAnswer(TypedDict):
    """One item's answer: its run's id, or why it was refused."""

    requestId: NotRequired[str]
    error: NotRequired[str]
    message: NotRequired[str]


class BulkAnswer(TypedDict):
    runs: list[ItemAnswer]


def _refused(exc: ApiError) -> ItemAnswer:
    return {"error": exc.code, "message": exc.message}


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    runs = body.get("runs")
    if not isinstance(runs, list):
        raise bad_request(f"runs: expected a list of run requests, got {json_type(runs)}")
    if len(runs) > MAX_RUNS:
        raise ApiError(
            413,
            "too_many_runs",
            f"runs: {len(runs)} run requests, more than the {MAX_RUNS} one request may carry;"
            " send them in several requests",
        )
    for index, item in enumerate(runs):
        if not isinstance(item, dict):
            raise bad_request(
                f"runs[{index}]: expected a run request (an object), got {json_type(item)}"
            )
    return runs


def _keys(items: list[dict[str, Any]]) -> tuple[list[str | None], dict[int, ApiError]]:
    """Each item's idempotency key, and the refusals of keys given twice in the request."""
    keys: list[str | None] = []
    first: dict[str, int] = {}
    refused: dict[int, ApiError] = {}
    for index, item in enumerate(items):
        if item.keys() <= RUN_FIELDS.names:  # no key in any spelling (checked in C)
            keys.append(None)
            continue
        spelt = [name for name in item if KEY_FIELD.get(name) is not None]
        given = [(name, item.pop(name)) for name in spelt]  # off the run's body, in any case
        given = [(name, value) for name, value in given if value is not None]
        key = given[0][1] if given else None
        if len(given) > 1:
            refused[index] = bad_request(
                f"idempotencyKey: given twice, as {given[0][0]!r} and {given[1][0]!r}"
            )
            key = None
        elif key is not None and not isinstance(key, str):
            refused[index] = bad_request(f"idempotencyKey: expected a string, got {json_type(key)}")
            key = None
        elif key is not None and key in first:
            refused[index] = bad_request(
                f"idempotencyKey: {key[:80]!r} is also the key of runs[{first[key]}] of this"
                " request; each run needs its own"
            )
        elif key is not None:
            first[key] = index
        keys.append(key)
    return keys, refused


async def submit_runs(request: web.Request) -> web.Response:
    answer = await accept_runs(
        request.app[SCHEDULER],
        request.match_info["algorithm"],
        request.headers.get("Authorization"),
        lambda: read_json_object(request),
    )
    return json_response(answer)


def lean_submit_runs(app: web.Application, max_body: int) -> RouteHandler:
    """:func:`submit_runs` on the lean server."""

    async def submit(request: Request, params: Params) -> Answer:
        answer = await accept_runs(
            app[SCHEDULER],
            params["algorithm"],
            header(request, "authorization"),
            lambda: request_json(request, max_body),
        )
        return json_answer(answer)

    return submit


async def accept_runs(
    scheduler: Scheduler, algorithm: str, authorization: str | None, read_body: JsonBody
) -> BulkAnswer:
    """A bulk request (its path's algorithm, its credential, its body) checked, authorized
    and each of its runs judged and submitted, on aiohttp or the lean server alike."""
    algorithm = algorithm_name(algorithm)
    principal = await scheduler.authenticator.authorize(authorization, algorithm)
    read = read_body()
    items = _items(read if isinstance(read, dict) else await read)
    keys, refused = _keys(items)
    submitter = scheduler.submitter
    answers: list[ItemAnswer | None] = [None] * len(items)
    plans: dict[int, NewRun] = {}
    payloads: dict[int, bytes] = {}  # the inputs to upload to S3, of the runs that have one
    ids = new_run_ids(len(items))
    bare: NewRun | None = None  # the plan of an item whose one field is its parameters
    for index, item in enumerate(items):
        if index in refused:
            answers[index] = _refused(refused[index])
            continue
        alone = keys[index] is None and principal.run is None and item.keys() == BARE
        if alone and bare is not None:  # judged as submit would, the rest known from bare
            alike = submitter.plan_alike(bare, item["algorithmParameters"], ids[index])
            if alike is not None:
                plans[index], payload = alike
                if alike[0].payload_inline is None:
                    payloads[index] = payload
                continue
        bare = None  # whatever this item is, another one awaits submit next
        try:
            plan = await submitter.submit(
                principal, algorithm, item, keys[index], run_id=ids[index], dry_run=True
            )
            assert plan.planned is not None
            plans[index] = plan.planned
            if plan.planned.payload_inline is None:
                payloads[index] = plan.payload or b""
            if alone:
                bare = plan.planned
        except ApiError as exc:
            if exc.status in (429, 503):  # this pod cannot take runs now: none of them
                raise
            answers[index] = _refused(exc)
        except CheckpointRejected as exc:
            answers[index] = {"error": "invalid_request", "message": str(exc)}
    store = submitter.store
    if store.pending_writes + len(plans) > store.max_pending_writes:
        raise ApiError(
            503,
            "overloaded",
            "the checkpoint store is saturated; retry later",
            {"Retry-After": "2"},
        )
    for index, outcome in (await _accept(submitter, principal, plans, payloads)).items():
        answers[index] = outcome
    body: BulkAnswer = {"runs": [a for a in answers if a is not None]}
    assert len(body["runs"]) == len(items)
    return body


async def _accept(
    submitter: Submitter,
    principal: Principal,
    plans: dict[int, NewRun],
    payloads: dict[int, bytes],
) -> dict[int, ItemAnswer]:
    """Take quotas, upload inputs, write the checkpoints as one batch and queue the runs."""
    answers: dict[int, ItemAnswer] = {}
    taken: dict[int, Taken | None] = {}
    keyed: dict[int, tuple[str, str]] = {}
    quotas = submitter.quotas
    if quotas is not None and not quotas.apply_to(principal.caller):
        quotas = None  # none to take for any run
    for index, run in plans.items():
        if run.idempotency_key is not None:
            pair = (principal.caller, run.idempotency_key)
            if pair in submitter.keys_in_flight:
                answers[index] = _refused(ApiError(
                    409, "idempotency_key_in_use",
                    f"idempotencyKey {run.idempotency_key[:80]!r}: a request with this key is"
                    " still being processed; send it again once that one is answered",
                ))  # fmt: skip
                continue
            keyed[index] = pair
        if quotas is not None:
            try:
                taken[index] = await quotas.take(principal.caller, run.key)
            except ApiError as exc:
                answers[index] = _refused(exc)
                keyed.pop(index, None)
                continue
    going = [i for i in plans if i not in answers]
    submitter.keys_in_flight.update(keyed.values())
    try:
        stored = await _store(submitter, principal, plans, payloads, going, taken)
        return {**answers, **stored}
    finally:
        submitter.keys_in_flight.difference_update(keyed.values())


async def _store(
    submitter: Submitter,
    principal: Principal,
    plans: dict[int, NewRun],
    payloads: dict[int, bytes],
    going: list[int],
    taken: dict[int, Taken | None],
) -> dict[int, ItemAnswer]:
    runs = [plans[i] for i in going]
    uploads = {
        i: submitter.payloads.input_key(run.algorithm, str(run.id))
        for i, run in zip(going, runs, strict=True)
        if run.payload_inline is None
    }
    try:
        async with asyncio.TaskGroup() as uploading:  # one failing stops the others
            for i, k in uploads.items():
                uploading.create_task(submitter.payloads.put(k, payloads[i]))
    except BaseExceptionGroup as group:
        await _give_back(submitter, [taken.get(i) for i in going])
        await _forget(submitter, list(uploads.values()))
        raise group.exceptions[0] from None
    except BaseException:
        await _give_back(submitter, [taken.get(i) for i in going])
        await _forget(submitter, list(uploads.values()))
        raise
    try:
        admissions = await submitter.store.insert_many(runs)
    except DependencyError:  # refused whole (too many writes waiting): nothing was stored
        await _give_back(submitter, [taken.get(i) for i in going])
        await _forget(submitter, list(uploads.values()))
        raise
    answers: dict[int, ItemAnswer] = {}
    queued: list[QueuedRun] = []
    share = submitter.fair_share.share(principal)
    for index, run, admission in zip(going, runs, admissions, strict=True):
        if isinstance(admission, Exception):
            answers[index] = _failed(admission)
            if isinstance(admission, CheckpointRejected | StoreNotReached):  # not stored
                await _give_back(submitter, [taken.get(index)])
                await _forget(submitter, [uploads[index]] if index in uploads else [])
            continue  # else the write may have landed: the run may exist, its input stays
        if not admission.created:
            await _give_back(submitter, [taken.get(index)])
            if index in uploads and admission.id != run.id:
                await _forget(submitter, [uploads[index]])
            if admission.conflicts:
                answers[index] = {
                    "error": "idempotency_conflict",
                    "message": conflict_message(principal, "idempotencyKey", run, admission),
                }
            else:
                answers[index] = {"requestId": str(admission.id)}
            continue
        text = str(run.id)  # formatted once, for its answer and its queue member
        answers[index] = {"requestId": text}
        key = RunKey(run.algorithm, run.id)
        member = f"{run.algorithm}/{text}"
        queued.append(QueuedRun(run.applied_configuration["shard"], key, 0.0, share, member))
        if run.payload_inline is not None:
            submitter.recent_inputs.remember(key, run.payload_inline)
    if principal.run is not None:  # a run's credential: children of its run
        stored = {q.key for q in queued}
        if await submitter.cancel_orphans(principal, [r for r in runs if r.key in stored]):
            return answers  # their parent finished meanwhile: cancelled, not queued
    submitter.push_many(queued)
    if queued:
        ACCEPTED.labels(queued[0].key.algorithm).inc(len(queued))
    return answers


def _failed(exc: Exception) -> ItemAnswer:
    if isinstance(exc, CheckpointRejected):
        return {"error": "invalid_request", "message": str(exc)}
    log.warning("a run of a bulk submit was not stored: %s", exc)
    return {"error": "unavailable", "message": "the checkpoint store is unavailable; retry"}


async def _give_back(submitter: Submitter, taken: list[Taken | None]) -> None:
    for quota in taken:
        if submitter.quotas is not None and quota is not None:
            await asyncio.shield(submitter.quotas.give_back(quota))


async def _forget(submitter: Submitter, keys: list[str]) -> None:
    if keys:
        try:
            await asyncio.shield(submitter.payloads.delete(keys))
        except DependencyError as exc:
            log.warning("could not delete unused inputs: %s", exc)


BULK_ROUTE = f"{PREFIX}/runs/{{algorithm}}"


def add_lean_bulk_routes(app: web.Application, router: Router, max_body: int) -> None:
    """The bulk submit on the lean server, as on aiohttp (:func:`add_bulk_routes`)."""
    router.add("POST", BULK_ROUTE, lean_submit_runs(app, max_body))


def add_bulk_routes(app: web.Application) -> None:
    app.router.add_post(BULK_ROUTE, json_errors(submit_runs))
