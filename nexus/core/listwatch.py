"""Keep up with a kind of Kubernetes object: list, then watch from there, for ever.

:func:`follow` is the informer loop every watcher in Nexus uses (templates in the
scheduler; Jobs, Pods and Events in the maintainer):

* it lists everything once and hands the snapshot to ``on_sync`` — also after every relist,
  so the caller can notice what vanished while it was not looking;
* it then watches from the list's ``resourceVersion`` and hands each change to
  ``on_event``, remembering the newest version handled (bookmarks included), so that an
  event whose handler failed with a :class:`NexusError` comes again after the retry;
* when the server ends the watch it resumes from that version; when the version has
  expired (410 Gone) it relists (backing off when the watch expires again before any
  event came); when the shard is unreachable it retries with capped exponential backoff,
  or after the ``Retry-After`` of a 429, and says so in logs and metrics — it never gives
  up, and it never raises for a failing dependency;
* a server that ends watches at once, without events, is met with the same backoff
  instead of a busy loop;
* it returns promptly when ``stopping`` is set, even in the middle of a list, and leaves no
  task behind when it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from nexus.core.errors import NexusError, ShardThrottled
from nexus.core.shards import WATCH_SECONDS, Resource, ResourceExpired, ShardClient, WatchEvent
from nexus.core.waiting import Backoff, first_of, sleep_or_stop
from nexus.core.watchevents import Sift

log = logging.getLogger(__name__)

WATCH_RESTARTS = Counter(
    "nexus_watch_restarts_total",
    "Watches restarted, by shard, resource and why (resumed, expired, failed).",
    ["shard", "resource", "reason"],
)


MAX_BACKOFF = 30.0
"""Longest wait between attempts to reach an unreachable shard, by default."""

_QUICK_END = 1.0
"""A watch the server ends sooner than this (seconds) without any event counts as idle."""


async def follow(
    client: ShardClient,
    resource: Resource,
    *,
    on_sync: Callable[[list[dict[str, Any]]], Awaitable[None]],
    on_event: Callable[[WatchEvent], Awaitable[None]],
    stopping: asyncio.Event,
    namespace: str | None = None,
    label_selector: str | None = None,
    field_selector: str | None = None,
    watch_timeout: int = WATCH_SECONDS,
    max_backoff: float = MAX_BACKOFF,
    on_connected: Callable[[bool], None] | None = None,
    sift: Sift | None = None,
) -> None:
    """List and watch ``resource`` on ``client`` until ``stopping`` is set.

    ``sift`` declines watch events from their object's status, the rest of them unread, and
    the events handed over lack their objects' spec (:meth:`ShardClient.watch`); the lists
    handed to ``on_sync`` are whole.
    """
    labels = {"shard": client.name, "resource": resource.plural}
    loop = asyncio.get_running_loop()
    version: str | None = None
    failures = Backoff(first=0.5, cap=max_backoff)  # attempts failed in a row
    idle = Backoff(first=0.5, cap=max_backoff)  # watches ended at once without an event
    expired = Backoff(first=0.5, cap=max_backoff)  # 410s with no event watched in between

    async def consume(start: str) -> bool:
        """Watch from ``start`` until the server ends the watch; whether anything came."""
        nonlocal version
        seen = False
        stream = client.watch(
            resource,
            start,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=watch_timeout,
            sift=sift,
        )
        async with contextlib.aclosing(stream):  # closes the response if on_event raises
            async for event in stream:
                if not seen:
                    failures.succeeded()
                    expired.succeeded()
                    seen = True
                if event.type != "BOOKMARK":
                    await on_event(event)
                # only once handled: if on_event fails, the resumed watch brings it again
                rv = (event.object.get("metadata") or {}).get("resourceVersion")
                if rv:
                    version = str(rv)
        return seen

    async def attempt() -> None:
        """List if needed, then watch until the server ends the watch."""
        nonlocal version
        if version is None:
            listing = await client.list_all(
                resource,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
            )
            await on_sync(listing.items)
            version = listing.resource_version
        if on_connected is not None:
            on_connected(True)
        began = loop.time()
        seen = await consume(version)
        # a server that ends watches at once must not make this a busy loop
        quick = min(_QUICK_END, watch_timeout / 2)
        if seen or loop.time() - began >= quick:
            idle.succeeded()
        else:
            idle.failed()

    while not stopping.is_set():
        try:
            # raced against `stopping`, so that a slow list or watch never delays a stop;
            # first_of leaves no task behind, also when follow() itself is cancelled
            if await first_of(attempt(), stopping) == 1:
                return
            WATCH_RESTARTS.labels(**labels, reason="resumed").inc()
            if idle.failures:
                await sleep_or_stop(stopping, idle.delay(idle.failures))
        except ResourceExpired:
            WATCH_RESTARTS.labels(**labels, reason="expired").inc()
            log.info("watch expired; relisting", extra=labels)
            version = None
            pause = expired.failed()
            if expired.failures > 1:  # the list outlasts the server's history: not in a loop
                await sleep_or_stop(stopping, pause)
        except NexusError as exc:
            delay = failures.failed()
            WATCH_RESTARTS.labels(**labels, reason="failed").inc()
            if on_connected is not None:
                on_connected(False)
            if isinstance(exc, ShardThrottled):  # the server says how long
                delay = max(delay, exc.retry_after)
            log.warning(
                "watch failed; retrying in %.1fs: %s",
                delay,
                exc,
                extra={**labels, "failures": failures.failures},
            )
            await sleep_or_stop(stopping, delay)
