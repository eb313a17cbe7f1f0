"""The maintainer service: ``create_app(settings)`` wires clients, leadership and loops.

Start-up: migrations (or a wait for a migration Job), then clients (Postgres, Redis, S3,
every shard, and the controller cluster when the configuration controller is enabled),
then two loops: the lease (:mod:`maintainer.leadership`) and the *term* runner. Every
time this process becomes the leader it starts a fresh :class:`Term` — a watch per shard,
the sweeper, the crawl of stored inputs without a run (:mod:`maintainer.orphans`), the
adopter, the healer of a Redis that lost its data (:mod:`maintainer.healing`), the action
writer and, when enabled, the configuration copies
(:mod:`maintainer.replication`), with empty caches and grace timers that start now — and
stops it the moment it stops leading. Nothing at start-up waits for a shard to answer.
A standby process is ready (it answers its probes) but does nothing else, so a brief
overlap of two leaders is bounded by the lease and harmless because every action is
idempotent.

Shutdown (SIGTERM): the term stops (watches close, the sweep in progress ends, submitted
actions are written), the lease is released so the standby takes over at once, and the
clients are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from maintainer.actions import Actions
from maintainer.adoption import Adopter
from maintainer.healing import Healer
from maintainer.leadership import Leadership
from maintainer.limits import SlotReconciler
from maintainer.orphans import OrphanInputs
from maintainer.replication import Replicator
from maintainer.retries import Retrier
from maintainer.settings import MaintainerSettings
from maintainer.shardwatch import ShardWatch
from maintainer.sweeping import Sweeper
from nexus.core.checkpoints import CheckpointStore
from nexus.core.httpapi import finish_routes
from nexus.core.lifecycle import LIFECYCLE, create_base_app
from nexus.core.migrations import prepare_schema
from nexus.core.queues import QueueBackend
from nexus.core.shards import ShardClient, open_controller, open_shards
from nexus.core.slots import Slots
from nexus.core.storage import PayloadStore
from nexus.core.sweeps import Sweeps
from nexus.core.waiting import first_of

log = logging.getLogger(__name__)


@dataclass
class Term:
    """Everything the leader runs, fresh for each period of leadership."""

    actions: Actions
    watches: dict[str, ShardWatch]
    sweeper: Sweeper
    adopter: Adopter
    healer: Healer
    orphans: OrphanInputs
    reconciler: SlotReconciler | None = None
    replicator: Replicator | None = None
    retrier: Retrier | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for name, watch in self.watches.items():
                group.create_task(watch.run(self.stopping), name=f"maintainer:shard:{name}")
            if self.replicator is not None:
                group.create_task(self.replicator.run(self.stopping), name="maintainer:copies")
            group.create_task(self.sweeper.run(self.stopping), name="maintainer:sweep")
            group.create_task(self.orphans.run(self.stopping), name="maintainer:orphans")
            group.create_task(self.adopter.run(self.stopping), name="maintainer:adopt")
            if self.retrier is not None:
                group.create_task(self.retrier.run(self.stopping), name="maintainer:retries")
            group.create_task(self.healer.run(self.sweeper, self.stopping), name="maintainer:heal")
            if self.reconciler is not None:
                group.create_task(self.reconciler.run(self.stopping), name="maintainer:slots")
            # last out: writes what the others submitted before they stopped
            await self.actions.run(self.stopping)


@dataclass
class Maintainer:
    settings: MaintainerSettings
    store: CheckpointStore
    queues: QueueBackend
    payloads: PayloadStore
    shards: dict[str, ShardClient]
    leadership: Leadership
    controller: ShardClient | None = None
    """The controller cluster (templates, workgroups), when copies are kept on shards."""
    term: Term | None = None
    healer: Healer | None = None
    """Kept across terms: a Redis that lost its data also lost the lease."""

    def new_term(self) -> Term:
        section = self.settings.maintainer

        def leading() -> bool:
            return self.leadership.active

        actions = Actions(self.store, self.shards, leading)
        retrier = Retrier(actions, self.queues, leading)
        watches = {
            name: ShardWatch(c, actions, section, retrier) for name, c in self.shards.items()
        }
        sweeper = Sweeper(
            store=self.store,
            queues=self.queues,
            payloads=self.payloads,
            watches=watches,
            actions=actions,
            section=section,
            leading=leading,
        )
        adopter = Adopter(self.queues, section.adopt_interval, leading)
        orphans = OrphanInputs(Sweeps(self.store), self.payloads, section, leading)
        replicator = None
        if self.controller is not None:
            replicator = Replicator(
                self.controller,
                self.settings.shards.controller_namespace,
                self.shards,
                self.settings.replication,
                leading,
                watch_timeout=section.watch_timeout,
            )
        reconciler = SlotReconciler(
            self.store, Slots(self.queues), section.limit_reconcile_interval, leading
        )
        if self.healer is None:
            self.healer = Healer(self.queues, section, leading)
        return Term(
            actions, watches, sweeper, adopter, self.healer, orphans, reconciler, replicator,
            retrier,
        )  # fmt: skip

    async def lead(self, stopping: asyncio.Event) -> None:
        """Run a term whenever this process leads, until ``stopping``."""
        while not stopping.is_set():
            if self.leadership.active:
                self.term = term = self.new_term()
                task = asyncio.create_task(term.run(), name="maintainer:term")
                try:
                    while self.leadership.active and not stopping.is_set() and not task.done():
                        await first_of(self.leadership.wait_for_change(stopping), task)
                finally:
                    term.stopping.set()
                    await task  # a crashed term stops the process (lifecycle)
                    self.term = None
                continue
            await self.leadership.wait_for_change(stopping)


MAINTAINER = web.AppKey("nexus.maintainer", Maintainer)


async def create_app(settings: MaintainerSettings) -> web.Application:
    app = create_base_app("maintainer", settings.http)
    finish_routes(app)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _open(app, settings, stack)
            yield

    app.cleanup_ctx.append(clients)
    return app


async def _open(
    app: web.Application, settings: MaintainerSettings, stack: contextlib.AsyncExitStack
) -> None:
    s, lifecycle = settings, app[LIFECYCLE]
    await prepare_schema(s.postgres)
    store = await CheckpointStore.open(s.postgres)
    stack.push_async_callback(store.close)
    queues = QueueBackend.connect(s.redis)
    stack.push_async_callback(queues.close)
    await queues.ping()
    payloads = await PayloadStore.open(s.storage)
    stack.push_async_callback(payloads.close)
    shards = await open_shards(
        s.shards.kubeconfig_dir, s.shards.runtime_namespace, s.shards.request_timeout
    )
    for client in shards.values():
        stack.push_async_callback(client.close)
    if not shards:
        log.warning("no shard kubeconfigs found", extra={"directory": str(s.shards.kubeconfig_dir)})
    controller = None
    if s.replication.enabled:
        controller = await open_controller(
            s.shards.controller_kubeconfig, s.shards.controller_namespace, s.shards.request_timeout
        )
        stack.push_async_callback(controller.close)
    section = s.maintainer
    leadership = Leadership(queues, section.lease_name, section.instance, section.lease_ttl)
    maintainer = Maintainer(s, store, queues, payloads, shards, leadership, controller)
    app[MAINTAINER] = maintainer
    lifecycle.start_loop("leadership", leadership.run(lifecycle.stopping))
    lifecycle.start_loop("lead", maintainer.lead(lifecycle.stopping))
