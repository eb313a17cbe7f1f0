"""Completions from containers built for the Go Nexus: ``/algorithm/v1/complete/…``.

``POST /algorithm/v1/complete/{algorithmName}/requests/{requestId}`` with the Go receiver's
body ``{"resultUri", "errorCause", "errorDetails"}``: no ``errorCause`` means ``COMPLETED``
with the result at ``resultUri``, one means ``FAILED`` with that cause and details. It is
the v1.2 completion (:func:`receiver.completions.record_completion`, which reads these names too)
under the Go path, answered ``202`` as the Go receiver answered, with ``{"requestId",
"status"}`` (a map of strings, what Go clients read) and the status in the Go vocabulary,
which names a run that could not be scheduled ``SCHEDULING_FAILED``.

Guarantees, where Nexus keeps more than the Go receiver did: the 202 is sent once the
completion is committed (the Go receiver answered before writing it, and dropped what it
then failed to write); the run's token is required as on v1.2; a run that has finished is
not changed.
"""

from __future__ import annotations

from aiohttp import web

from nexus.core.compatibility import v12_status
from nexus.core.httpserver import Answer, Request
from nexus.core.routes import Params, Router, json_answer
from nexus.core.runs import Stage
from receiver.completions import RECEIVER, record_completion

PATH = "/algorithm/v1/complete/{algorithm}/requests/{request_id}"


GO_STATUS = {v12_status(stage): stage.value for stage in Stage}
"""A status as v1.2 answers it → as the Go Nexus does (its stage names are Nexus')."""


def add_go_routes(router: Router, app: web.Application) -> None:
    """The Go path's completion on ``router``, recorded by the receiver ``app`` holds."""

    async def complete_v1(request: Request, params: Params) -> Answer:
        # committed (or found finished) when it returns
        done = await record_completion(app[RECEIVER], request, params)
        done["status"] = GO_STATUS.get(done["status"], done["status"])
        return json_answer(done, 202)

    router.add("POST", PATH, complete_v1)
