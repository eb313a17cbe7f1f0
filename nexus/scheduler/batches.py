"""A batch's runs by tag (DESIGN §2): the complete listing, its pages, and its summary.

``GET /algorithm/v1.2/results/{algorithmName}/tags/{tag}`` answers **every** run of the
tag the caller may see (tags are per caller, :mod:`nexus.core.visibility`), oldest first.
Without ``limit`` the answer is streamed: the runs are read a page of
:data:`STREAM_PAGE` at a time and written as they are read, so a tag of any size costs
this pod one page of memory. Should the store fail in the middle, the connection is
closed before the closing ``]``: a client can never take a cut listing for a whole one.
With ``?limit=N`` (1 to :data:`MAX_PAGE`) the answer is one page, and while more runs
follow, ``Link: <…?limit=N&after=CURSOR>; rel="next"`` names the next. A cursor is the
last run's position sealed with the signing keys and bound to the algorithm, the tag and
the caller's view: a forged or altered cursor, or one from another listing, is refused
with 400. With ``?include=result`` each run whose result is kept inline (DESIGN §3) carries
it too, as ``"result"`` (the document itself, beside its ``resultUri``): a client reads the
results of a whole batch with its listing, one request for a page of runs instead of one
per run. Such a listing reads at most :data:`RESULTS_PAGE` runs at a time, whatever
``limit`` asks: a page of it may hold fewer runs than ``limit`` while a ``Link`` names
the next.

``GET …/tags/{tag}/summary`` answers ``{"total", "byStatus", "finished"}``: how many runs
are in each v1.2 status (every status named, 0 when none), and whether the batch is
finished — it has runs and every one is terminal. With ``?wait=S`` (0 to 60 seconds) it
answers the moment the batch is finished, or after S seconds as it stands
(:mod:`nexus.scheduler.waiters`).
"""

from __future__ import annotations

import logging
from typing import TypedDict

import orjson
from aiohttp import web

from nexus.core.compatibility import v12_status
from nexus.core.errors import DependencyError
from nexus.core.httpapi import bad_request, json_errors, json_response
from nexus.core.listings import Listings, TagEntry, TagPosition
from nexus.core.runs import TERMINAL, Stage
from nexus.core.visibility import Viewer
from nexus.scheduler.api import (
    PREFIX,
    SCHEDULER,
    RunAnswer,
    Scheduler,
    _algorithm,
    _result,
    _viewer,
)
from nexus.scheduler.waiters import is_finished, wait_for, wait_seconds

log = logging.getLogger(__name__)

STREAM_PAGE = 1000
"""Runs read per round trip while a whole listing is streamed: its memory per request."""
MAX_PAGE = 10_000
"""The largest ``limit`` of a page."""
RESULTS_PAGE = 100
"""Runs read per round trip, and at most per page, when their inline results come too
(``?include=result``): each result may be as large as the receivers take inline (256 KiB
by default), so this bounds a request's memory (about 25 MiB read, and as much again
encoded) where a page of :data:`MAX_PAGE` such runs would hold gigabytes."""
LISTINGS = web.AppKey("nexus.listings", Listings)


class ListedRun(RunAnswer, total=False):
    """A run of a listing: with ``?include=result``, its inline result too."""

    result: orjson.Fragment
    """The result document as the algorithm reported it (compact JSON)."""


class TagSummary(TypedDict):
    """The progress of a batch: its runs by status."""

    total: int
    byStatus: dict[str, int]
    finished: bool
    """Whether the tag has runs and every one of them is terminal."""


def _tag(request: web.Request) -> str:
    tag = request.match_info["tag"]
    if not tag.isprintable():  # no run carries one, and PostgreSQL text cannot hold NUL
        raise bad_request("tag: must not contain control characters")
    return tag


def _cursor_context(algorithm: str, tag: str, viewer: Viewer) -> str:
    """What a cursor is bound to: the listing it came from, as its caller sees it."""
    below = "" if viewer.parent is None else f"\n{viewer.parent}"
    return f"tag-cursor:{algorithm}\n{tag}\n{viewer.owner(algorithm) or '*'}{below}"


def _limit(request: web.Request) -> int | None:
    raw = request.query.get("limit")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:6]) <= MAX_PAGE):
        raise bad_request(f"limit: expected a whole number from 1 to {MAX_PAGE}, got {raw[:40]!r}")
    return int(raw)


def _with_results(request: web.Request) -> bool:
    raw = request.query.get("include")
    if raw is None:
        return False
    if raw != "result":
        raise bad_request(f"include: expected 'result', got {raw[:40]!r}")
    return True


def _listed(scheduler: Scheduler, entry: TagEntry) -> ListedRun:
    answer: ListedRun = {**_result(scheduler, entry.run)}  # type: ignore[typeddict-item]
    if entry.result is not None:
        answer["result"] = orjson.Fragment(entry.result)
    return answer


def _after(request: web.Request, algorithm: str, tag: str, viewer: Viewer) -> TagPosition | None:
    raw = request.query.get("after")
    if raw is None:
        return None
    value = request.app[SCHEDULER].signer.unseal(_cursor_context(algorithm, tag, viewer), raw)
    position = None if value is None else TagPosition.decode(value)
    if position is None:
        raise bad_request(
            "after: not a cursor of this tag's listing (use the Link of the previous page)",
            "invalid_cursor",
        )
    return position


async def results_by_tag(request: web.Request) -> web.StreamResponse:
    algorithm = _algorithm(request)
    viewer = await _viewer(request, algorithm)
    tag = _tag(request)
    limit = _limit(request)
    after = _after(request, algorithm, tag, viewer)
    results = _with_results(request)
    if limit is None:
        return await _stream(request, algorithm, tag, viewer, after, results)
    scheduler = request.app[SCHEDULER]
    listings = request.app[LISTINGS]
    size = min(limit, RESULTS_PAGE) if results else limit
    entries = await listings.page(algorithm, tag, viewer, after, size + 1, results=results)
    answer = [_listed(scheduler, e) for e in entries[:size]]
    headers = {}
    if len(entries) > size:
        cursor = scheduler.signer.seal(
            _cursor_context(algorithm, tag, viewer), entries[size - 1].position.encode()
        )
        following = request.rel_url.update_query(limit=str(limit), after=cursor)
        headers["Link"] = f'<{scheduler.links.public_url}{following}>; rel="next"'
    return json_response(answer, headers=headers)


async def _stream(
    request: web.Request,
    algorithm: str,
    tag: str,
    viewer: Viewer,
    after: TagPosition | None,
    results: bool,
) -> web.StreamResponse:
    scheduler = request.app[SCHEDULER]
    listings = request.app[LISTINGS]
    size = RESULTS_PAGE if results else STREAM_PAGE
    entries = await listings.page(algorithm, tag, viewer, after, size, results=results)  # 503
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        separator = b"["
        while True:
            if entries:
                body = orjson.dumps([_listed(scheduler, e) for e in entries])
                await response.write(separator + body[1:-1])
                separator = b","
            if len(entries) < size:
                break
            last = entries[-1].position
            entries = await listings.page(algorithm, tag, viewer, last, size, results=results)
        await response.write(b"]" if separator == b"," else b"[]")
    except DependencyError as exc:
        # The status is sent: the only honest answer left is an unfinished body.
        log.warning("a listing broke off: %s", exc, extra={"tag": tag})
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def tag_summary(request: web.Request) -> web.Response:
    algorithm = _algorithm(request)
    viewer = await _viewer(request, algorithm)
    tag = _tag(request)
    try:
        wait = wait_seconds(request.query.get("wait"))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    listings, waiters = request.app[LISTINGS], request.app[SCHEDULER].waiters
    if not wait or waiters is None:
        return json_response(summarise(await listings.counts(algorithm, tag, viewer)))
    finished = waiters.watch_tag(algorithm, tag, viewer)  # before the count: none slips by
    try:
        counts = await waiters.count(algorithm, tag, viewer)
        if not is_finished(counts):
            counts = await wait_for(finished, wait) or await listings.counts(algorithm, tag, viewer)
    finally:
        waiters.forget_tag(algorithm, tag, viewer, finished)
    return json_response(summarise(counts))


def summarise(counts: dict[Stage, int]) -> TagSummary:
    """The summary of a tag whose runs are ``counts`` by stage."""
    by_status = {v12_status(stage): 0 for stage in Stage}
    for stage, runs in counts.items():
        by_status[v12_status(stage)] += runs
    total = sum(counts.values())
    unfinished = sum(runs for stage, runs in counts.items() if stage not in TERMINAL)
    return {"total": total, "byStatus": by_status, "finished": total > 0 and unfinished == 0}


def add_batch_routes(app: web.Application) -> None:
    """The tag routes; the :class:`Listings` is set at start-up (``app[LISTINGS]``)."""
    r = app.router
    r.add_get(f"{PREFIX}/results/{{algorithm}}/tags/{{tag}}", json_errors(results_by_tag))
    r.add_get(f"{PREFIX}/results/{{algorithm}}/tags/{{tag}}/summary", json_errors(tag_summary))
