"""Watch streams: chunked JSON lines of ``{"type", "object"}``, as a real API server sends.

A watch answers ``200`` at once and then writes one line per event:

* from no ``resourceVersion`` (or ``"0"``): a synthetic ``ADDED`` for every object that
  matches, then every change;
* from a version ``N``: every change after ``N`` still in the resource's history; if some
  are no longer kept, a single ``ERROR`` event whose object is a ``Status`` with code
  ``410`` and reason ``Expired`` — kubernetes-asyncio's ``Watch`` turns it into an
  ``ApiException(status=410)`` (after one silent retry when no ``timeout_seconds`` was
  given), and the caller relists;
* with ``allowWatchBookmarks=true``: a ``BOOKMARK`` carrying the current version every
  ``bookmark_interval`` seconds, so that a quiet watch can resume without a relist.

The stream ends after ``timeoutSeconds`` (default: a random 30-60 minutes, as the API
server's ``--min-request-timeout``), when the shard stops, or when the watcher falls so far
behind that its buffered bytes exceed the budget — the client then resumes from the last
version it saw. Lines are written in batches: whatever accumulated since the last write
goes out in one ``writev`` of the lines as they are (no joined copy), so a busy stream
costs one syscall per wake-up, not per event.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import orjson

from nexus.core.httpserver import Request, Stream
from nexus_dev.cluster.selectors import Predicate
from nexus_dev.cluster.statuses import ApiError
from nexus_dev.cluster.store import Collection, ObjectStore, Watcher

_LIVENESS_CHECK = 5.0  # seconds between checks that the client is still connected
_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class WatchSettings:
    """How watches behave on a shard."""

    bookmark_interval: float = 60.0
    """Seconds between ``BOOKMARK`` events (the API server sends them about once a minute)."""
    buffer_budget: int = 64 * 1024 * 1024
    """Bytes a watcher may have waiting to be written before it is dropped as too slow."""
    coalesce: float = 0.025
    """Seconds a watch waits after a change for more before writing them together. A
    busy shard changes objects thousands of times a second; one write per change (and
    per watcher) cost more than serialising them, in the emulator and in the watching
    client alike (each write is a wake-up and a read there). The API server's watch cache
    delivers in batches too; 25 ms is nothing to a controller; 0 writes at once."""


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _error_line(error: ApiError) -> bytes:
    status = orjson.loads(error.body())
    return orjson.dumps({"type": "ERROR", "object": status}) + b"\n"


def open_watch(
    request: Request,
    store: ObjectStore,
    collection: Collection,
    namespace: str | None,
    predicate: Predicate | None,
    settings: WatchSettings,
) -> Awaitable[None]:
    """Register a watch of ``collection`` (``namespace``, ``predicate``); the streaming.

    Bad parameters raise :class:`ApiError` here, before anything is written.
    """
    query = request.query
    timeout_text = query.get("timeoutSeconds")
    try:
        timeout = float(timeout_text) if timeout_text else random.uniform(1800.0, 3600.0)
    except ValueError as exc:
        raise ApiError.bad_request(f"invalid timeoutSeconds {timeout_text!r}") from exc
    bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
    version = query.get("resourceVersion") or ""
    fresh = version in ("", "0")
    since = 0
    if not fresh:
        try:
            since = int(version)
        except ValueError as exc:
            raise ApiError.bad_request(f"invalid resource version: {version!r}") from exc
    watcher = Watcher(namespace, predicate, settings.buffer_budget)
    # Everything up to registering the watcher runs without an await, so no change can
    # fall between the replay and the live stream.
    if fresh:
        for obj in store.items(collection.resource.plural, namespace, predicate):
            line = {"type": "ADDED", "object": obj}
            watcher.lines.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        collection.watchers.add(watcher)
    else:
        try:
            replay = collection.changes_since(since)
        except ApiError as exc:
            watcher.lines.append(_error_line(exc))
            watcher.closed = True
        else:
            collection.watchers.add(watcher)
            for change in replay:
                watcher.offer(change)
            watcher.buffered = 0  # the replay does not count against the budget
    return _serve(request, store, collection, watcher, timeout, bookmarks, settings)


async def _serve(
    request: Request,
    store: ObjectStore,
    collection: Collection,
    watcher: Watcher,
    timeout: float,
    bookmarks: bool,
    settings: WatchSettings,
) -> None:
    try:
        stream = request.stream(200, _HEADERS)
        await _pump(request, stream, store, collection, watcher, timeout, bookmarks, settings)
        stream.finish()
    finally:
        collection.watchers.discard(watcher)


async def _pump(
    request: Request,
    stream: Stream,
    store: ObjectStore,
    collection: Collection,
    watcher: Watcher,
    timeout: float,
    bookmarks: bool,
    settings: WatchSettings,
) -> None:
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    deadline = now + timeout
    next_bookmark = now + settings.bookmark_interval if bookmarks else float("inf")
    resource = collection.resource
    while True:
        if watcher.lines:
            await stream.write_lines(watcher.take_lines())
        if watcher.closed:
            return
        now = time.monotonic()
        if now >= deadline:
            return
        if request.disconnected:
            return
        if now >= next_bookmark:
            bookmark = {
                "type": "BOOKMARK",
                "object": {
                    "kind": resource.kind,
                    "apiVersion": resource.api_version,
                    "metadata": {"resourceVersion": str(store.rv)},
                },
            }
            await stream.write(orjson.dumps(bookmark) + b"\n")
            next_bookmark = now + settings.bookmark_interval
            continue
        waiter: asyncio.Future[None] = loop.create_future()
        watcher.waiter = waiter
        delay = min(deadline, next_bookmark, now + _LIVENESS_CHECK) - now
        handle = loop.call_later(max(0.0, delay), _wake, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            watcher.waiter = None
        if settings.coalesce > 0 and watcher.lines and not watcher.closed:
            # let the changes of the next few milliseconds join these in one write
            await asyncio.sleep(settings.coalesce)
