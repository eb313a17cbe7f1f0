"""The scheduler service: ``create_app(settings)`` wires clients, loops and routes.

Start-up order: migrations (or a wait for a migration Job), then clients (Postgres, Redis,
S3, the identity provider's keys when configured, every shard and the controller cluster),
then the catalog of templates (listed before the pod reports ready), then the heartbeat,
then the runs a previous process of this pod left in flight go back on its queue, and
finally the loops: catalog watches, identity provider keys, dispatch per shard, queue depth.

Requests: the submits (v1.2, bulk, Go v1) are answered by the lean HTTP server, which
hands a connection over to aiohttp at its first other request, for the rest of its life
(see :mod:`nexus.core.lifecycle`); every other route is aiohttp's.

Shutdown (see :mod:`nexus.core.lifecycle`): the listener closes (the submits in flight on
it are answered), the dispatcher finishes the creations it started, the requests in flight
on aiohttp's connections finish, the submitter's pending queue pushes land, then this pod's
queue — ready and in-flight runs alike — is handed over to a live pod in one atomic step
(or, when none is alive, left for the maintainer to adopt), and the clients are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from nexus.core.announcements import FinishedRuns
from nexus.core.callerrights import CallerRights
from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.httpapi import finish_routes
from nexus.core.lifecycle import LIFECYCLE, ROUTER, create_base_app
from nexus.core.listings import Listings
from nexus.core.migrations import prepare_schema
from nexus.core.queues import QueueBackend, RunQueue
from nexus.core.routes import Router
from nexus.core.shards import open_controller, open_shards
from nexus.core.signing import Signer
from nexus.core.slots import Slots
from nexus.core.storage import PayloadStore
from nexus.core.waiting import sleep_or_stop
from nexus.scheduler.api import SCHEDULER, Scheduler, add_lean_routes, add_routes
from nexus.scheduler.authentication import Authenticator
from nexus.scheduler.backpressure import BackPressure, measure_depth
from nexus.scheduler.batches import LISTINGS, add_batch_routes
from nexus.scheduler.bulk import add_bulk_routes, add_lean_bulk_routes
from nexus.scheduler.cancelling import Canceller
from nexus.scheduler.catalog import Catalog, CatalogWatcher
from nexus.scheduler.dispatching import Dispatcher
from nexus.scheduler.fairshare import FairShare
from nexus.scheduler.goapi import add_go_routes, add_lean_go_routes
from nexus.scheduler.inputs import RecentInputs
from nexus.scheduler.limits import ConcurrencyLimits
from nexus.scheduler.links import Links
from nexus.scheduler.openapi import add_openapi_route
from nexus.scheduler.quotas import Quotas
from nexus.scheduler.schedules import TICKER, Ticker, add_schedule_routes
from nexus.scheduler.settings import SchedulerSettings
from nexus.scheduler.submission import Submitter
from nexus.scheduler.throttling import ShardThrottle
from nexus.scheduler.waiters import Waiters

log = logging.getLogger(__name__)


async def create_app(settings: SchedulerSettings) -> web.Application:
    # Credentials are checked before anything connects: a bad key is a configuration error.
    signer = Signer(settings.signing.keys)
    authenticator = Authenticator(settings.auth, signer)
    app = create_base_app("scheduler", settings.http)
    router = app[ROUTER] = Router(partial=True)  # the submits; every other route: aiohttp
    add_lean_routes(app, router, settings.http.max_body_size)
    add_lean_bulk_routes(app, router, settings.http.max_body_size)
    add_lean_go_routes(app, router, settings.http.max_body_size)
    add_routes(app)
    add_batch_routes(app)
    add_bulk_routes(app)
    add_go_routes(app)
    add_openapi_route(app, settings.scheduler.max_tag_length)
    add_schedule_routes(app)
    finish_routes(app)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _open(app, settings, signer, authenticator, stack)
            yield

    app.cleanup_ctx.append(clients)
    return app


async def _open(
    app: web.Application,
    settings: SchedulerSettings,
    signer: Signer,
    authenticator: Authenticator,
    stack: contextlib.AsyncExitStack,
) -> None:
    s, lifecycle = settings, app[LIFECYCLE]
    await prepare_schema(s.postgres)
    store = await CheckpointStore.open(s.postgres)
    stack.push_async_callback(store.close)
    authenticator.caller_rights = CallerRights(store)
    queues = QueueBackend.connect(s.redis)
    stack.push_async_callback(queues.close)
    await queues.ping()
    payloads = await PayloadStore.open(s.storage)
    stack.push_async_callback(payloads.close)
    jwks = authenticator.jwks
    if jwks is not None:
        # Started even when the identity provider is down: see nexus.scheduler.jwks.
        stack.push_async_callback(jwks.close)
        if jwks.source.startswith("http://"):
            log.warning(
                "the identity provider's keys are fetched over plain HTTP: anyone on the "
                "path could replace them",
                extra={"source": jwks.source},
            )
        await jwks.refresh()
    shards = await open_shards(
        s.shards.kubeconfig_dir, s.shards.runtime_namespace, s.shards.request_timeout
    )
    for client in shards.values():
        stack.push_async_callback(client.close)
    if not shards:
        log.warning("no shard kubeconfigs found", extra={"directory": str(s.shards.kubeconfig_dir)})
    controller = await open_controller(
        s.shards.controller_kubeconfig, s.shards.controller_namespace, s.shards.request_timeout
    )
    stack.push_async_callback(controller.close)
    catalog = Catalog()
    watcher = CatalogWatcher(controller, s.shards.controller_namespace, catalog)
    await watcher.load()

    section = s.scheduler
    queue = queues.queue(section.pod_name)
    await queue.heartbeat(section.heartbeat_ttl)
    # A container restarted under the same pod name finds the runs its previous process had
    # popped but not settled; its heartbeat kept them from adoption, so they are queued
    # again here, ahead of newer runs, before any dispatch loop pops.
    recovered = await queue.recover()
    if recovered:
        log.info(
            "runs left in flight by this pod's previous process are queued again",
            extra={"runs": recovered},
        )
    links = Links(payloads, signer, section)
    throttles = {
        name: ShardThrottle(
            queues,
            name,
            s.shards.create_rate.get(name, s.shards.default_create_rate),
            burst_seconds=section.throttle_burst,
            recovery=section.throttle_recovery,
        )
        for name in shards
    }
    limits = ConcurrencyLimits(Slots(queues), catalog, s.teams, store, section.pod_name)
    recent_inputs = RecentInputs(section.recent_inputs)
    dispatcher = Dispatcher(
        queue=queue,
        store=store,
        shards=shards,
        throttles=throttles,
        links=links,
        catalog=catalog,
        settings=section,
        limits=limits,
        recent_inputs=recent_inputs,
    )
    pressure = BackPressure(store, section.max_queue_depth)
    quotas = Quotas(queues, store, s.teams)
    submitter = Submitter(
        store=store,
        payloads=payloads,
        queue=queue,
        catalog=catalog,
        shards=frozenset(shards),
        settings=section,
        pressure=pressure,
        pushed=dispatcher.notify,
        fair_share=FairShare(s.teams),
        quotas=quotas,
        recent_inputs=recent_inputs,
    )
    # closed in reverse: pending pushes land first, then the queue is handed over
    stack.push_async_callback(_hand_over, queues, queue)
    stack.push_async_callback(submitter.close)
    app[SCHEDULER] = Scheduler(
        store=store,
        queues=queues,
        submitter=submitter,
        links=links,
        signer=signer,
        authenticator=authenticator,
        canceller=Canceller(store, shards),
        limits=limits,
        quotas=quotas,
        fair_share=FairShare(s.teams),
    )
    app[LISTINGS] = Listings(store)
    waiters = app[SCHEDULER].waiters = Waiters(store, app[LISTINGS])
    stack.push_async_callback(waiters.close)
    announcements = FinishedRuns(s.postgres.dsn, waiters.finished, waiters.gap)
    app[SCHEDULER].announcements = announcements
    lifecycle.start_loop("announcements", announcements.run(lifecycle.stopping))
    ticker = Ticker(
        catalog=catalog,
        store=store,
        queues=queues,
        submitter=submitter,
        canceller=app[SCHEDULER].canceller,
        authenticator=authenticator,
        pod=section.pod_name,
    )
    app[TICKER] = ticker
    lifecycle.start_loop("catalog", watcher.run(lifecycle.stopping))
    lifecycle.start_loop("schedules", ticker.run(lifecycle.stopping))
    if jwks is not None:
        lifecycle.start_loop("jwks", jwks.run(lifecycle.stopping))
    lifecycle.start_loop("dispatch", dispatcher.run(lifecycle.stopping))
    lifecycle.start_loop("queue-later", submitter.push_later(lifecycle.stopping))
    lifecycle.start_loop("concurrency-limits", limits.run(lifecycle.stopping))
    lifecycle.start_loop(
        "heartbeat",
        _heartbeat(
            queue, pressure, section.heartbeat_interval, section.heartbeat_ttl, lifecycle.stopping
        ),
    )
    lifecycle.start_loop(
        "queue-depth", measure_depth(queue, pressure, list(shards), lifecycle.stopping)
    )


async def _heartbeat(
    queue: RunQueue, pressure: BackPressure, interval: float, ttl: float, stopping: asyncio.Event
) -> None:
    """Keep this pod's queue from being adopted; tell back-pressure whether Redis answers."""
    while not stopping.is_set():
        try:
            await queue.heartbeat(ttl)
            pressure.queue_answered()
        except DependencyError as exc:
            pressure.queue_failed()
            log.warning("heartbeat failed: %s", exc)
        await sleep_or_stop(stopping, interval)


async def _hand_over(queues: QueueBackend, queue: RunQueue) -> None:
    """Give this pod's runs to a live pod, so that nothing waits for the maintainer."""
    try:
        await queue.leave()  # so that no pod stopping with this one hands its queue here
        pods = await queues.pods()
        others = [p for p in pods.live if p != queue.pod]
        if not others:
            log.info("no live pod to hand the queue to; the maintainer will adopt it")
            return
        moved = await queues.adopt(queue.pod, others[0])
        if moved is None:
            log.info("the pod to hand the queue to stopped; the maintainer will adopt it")
            return
        log.info("queue handed over", extra={"to": others[0], "runs": moved})
    except DependencyError as exc:
        log.warning("queue hand-over failed; the maintainer will adopt it: %s", exc)
