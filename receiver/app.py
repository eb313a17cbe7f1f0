"""The receiver service: ``create_app(settings)`` wires the checkpoint store and routes.

Every request is served by the lean HTTP server (:func:`nexus.core.lifecycle.create_lean_app`):
a completion is a small POST whose own work — a token checked, a row group-committed —
costs less CPU than aiohttp's request and response machinery did around it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from nexus.core.checkpoints import CheckpointStore
from nexus.core.lifecycle import ROUTER, create_lean_app
from nexus.core.migrations import prepare_schema
from nexus.core.signing import Signer
from nexus.core.storage import ObjectNames
from receiver.completions import RECEIVER, Receiver, add_routes
from receiver.gocompletions import add_go_routes
from receiver.settings import ReceiverSettings


async def create_app(settings: ReceiverSettings) -> web.Application:
    signer = Signer(settings.signing.keys)  # a missing key stops the process at once
    app = create_lean_app("receiver", settings.http)
    add_routes(app[ROUTER], app)
    add_go_routes(app[ROUTER], app)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        await prepare_schema(settings.postgres)
        store = await CheckpointStore.open(settings.postgres)
        app[RECEIVER] = Receiver(
            store,
            signer,
            ObjectNames(settings.storage),
            settings.receiver,
            settings.http.max_body_size,
        )
        yield
        await store.close()

    app.cleanup_ctx.append(clients)
    return app
