"""The receiver service: ``create_app(settings)`` wires the checkpoint store and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from nexus.core.checkpoints import CheckpointStore
from nexus.core.httpapi import finish_routes
from nexus.core.lifecycle import create_base_app
from nexus.core.migrations import prepare_schema
from nexus.core.signing import Signer
from nexus.core.storage import ObjectNames
from receiver.completions import RECEIVER, Receiver, add_routes
from receiver.gocompletions import add_go_routes
from receiver.settings import ReceiverSettings


async def create_app(settings: ReceiverSettings) -> web.Application:
    signer = Signer(settings.signing.keys)  # a missing key stops the process at once
    app = create_base_app("receiver", settings.http)
    add_routes(app)
    add_go_routes(app)
    finish_routes(app)

    async def clients(app: web.Application) -> AsyncIterator[None]:
        await prepare_schema(settings.postgres)
        store = await CheckpointStore.open(settings.postgres)
        app[RECEIVER] = Receiver(store, signer, ObjectNames(settings.storage), settings.receiver)
        yield
        await store.close()

    app.cleanup_ctx.append(clients)
    return app
