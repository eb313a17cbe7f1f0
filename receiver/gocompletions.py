"""Completions from containers built for the Go Nexus: ``/algorithm/v1/complete/…``.

``POST /algorithm/v1/complete/{algorithmName}/requests/{requestId}`` with the Go receiver's
body ``{"resultUri", "errorCause", "errorDetails"}``: no ``errorCause`` means ``COMPLETED``
with the result at ``resultUri``, one means ``FAILED`` with that cause and details. It is
the v1.2 completion (:func:`receiver.completions.complete`, which reads these names too)
under the Go path, answered ``202`` as the Go receiver answered, with ``{"requestId",
"status"}`` (a map of strings, what Go clients read).

Guarantees, where Nexus keeps more than the Go receiver did: the 202 is sent once the
completion is committed (the Go receiver answered before writing it, and dropped what it
then failed to write); the run's token is required as on v1.2; a run that has finished is
not changed.
"""

from __future__ import annotations

from aiohttp import web

from nexus.core.httpapi import json_errors
from receiver.completions import complete

PATH = "/algorithm/v1/complete/{algorithm}/requests/{request_id}"


async def complete_v1(request: web.Request) -> web.StreamResponse:
    answer = await complete(request)  # committed (or found finished) when it returns
    answer.set_status(202)
    return answer


def add_go_routes(app: web.Application) -> None:
    app.router.add_post(PATH, json_errors(complete_v1))
