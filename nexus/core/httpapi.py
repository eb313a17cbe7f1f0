"""What every Nexus HTTP API shares: JSON errors, body parsing, dependency failures.

Every error answer is ``{"error": "<code>", "message": "<human text>"}`` with a 4xx/5xx
status (DESIGN §2). Handlers raise :class:`ApiError`; :func:`json_errors` renders it,
turns a body over the size limit into 413, an unknown run (:class:`RunNotFound`) into 404,
a transition the run's stage refuses (:class:`TransitionRejected`) into 409, and a real
component that is unavailable into 503 with ``Retry-After`` — bad input never becomes a
5xx, and an outage never looks like the client's fault. Anything else unexpected is logged
once, with the request id, and answered 500 without internals. :func:`finish_routes`
answers unknown paths (404) and methods (405) the same way.

Every answer, errors included, is counted and timed in ``nexus_http_request_duration_seconds``
by route *template* (``/algorithm/v1.2/run/{algorithm}``, never the path), method and
status: the labels' values are bounded by the routes a service has, whatever clients send.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Final, TypedDict

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from nexus.core.errors import (
    CheckpointRejected,
    DependencyError,
    QueueUnavailable,
    RunNotFound,
    ShardUnavailable,
    StorageUnavailable,
    StoreUnavailable,
    TransitionRejected,
)
from nexus.core.meters import HistogramChild, LoopHistogram

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON = "application/json"
TOO_LARGE = "the request body is larger than this server accepts (NEXUS__HTTP__MAX_BODY_SIZE)"
RETRY_AFTER = "2"
"""Seconds a client is asked to wait after a 503 for a component that is unavailable: an
outage is over in seconds more often than not (a restart, a fail-over), and clients that
honour it come back soon enough to find it over, not all at once in a storm."""
DECODED = ("gzip", "deflate", "br", "zstd")
"""Content-Encodings of request bodies that aiohttp decodes; another is answered 415."""
_UNAVAILABLE: dict[type[DependencyError], str] = {
    StoreUnavailable: "the checkpoint store",
    QueueUnavailable: "the queue",
    StorageUnavailable: "object storage",
    ShardUnavailable: "the cluster's API server",
}

REQUEST_SECONDS = LoopHistogram(
    "nexus_http_request_duration_seconds",
    "Time from a request's handler taking it to its answer, by route template, method and"
    " status (the _count is the number of requests).",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
_TIMED: dict[tuple[str, str, int], HistogramChild] = {}
"""The histogram's children by labels (no status spelt again for each answer)."""
_BY_ROUTE: dict[tuple[web.AbstractRoute, int], HistogramChild] = {}
"""The same children by the route that answered and its status: an answer of a route
with one method is counted with one dictionary look-up, not its template and method
worked out again."""
NO_ROUTE = "(no route)"
"""The route label of a request no route takes: its path is the client's, not ours."""


def _observe(request: web.Request, status: int, started: float) -> None:
    """Count and time one answer of the route that took it."""
    route = request.match_info.route
    child = _BY_ROUTE.get((route, status))
    if child is None:
        resource = route.resource
        template = resource.canonical if resource is not None else NO_ROUTE
        child = request_meter(template, request.method, status)
        if route.method in _METHODS:  # not "*": every answer of it has this method
            _BY_ROUTE[(route, status)] = child
    child.observe(time.perf_counter() - started)


def request_meter(template: str, method: str, status: int) -> HistogramChild:
    """The histogram's child for an answer of ``status`` to ``method`` on ``template``."""
    key = (template, method if method in _METHODS else "other", status)
    child = _TIMED.get(key)
    if child is None:
        child = _TIMED[key] = REQUEST_SECONDS.labels(*key[:2], str(status))
    return child


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ErrorAnswer(TypedDict):
    """The body of every error answer (DESIGN §2)."""

    error: str
    """Machine-readable: ``invalid_request``, ``not_found``, ``unavailable``…"""
    message: str
    """For people: what is wrong, naming the field when input is."""


class RunStatus(TypedDict):
    """The answer of a route that changed a run (a cancellation, a completion): the run
    and the stage it is in now."""

    requestId: str
    status: str


class ApiError(Exception):
    """An answer other than success; ``code`` is machine-readable, ``message`` for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer serialised with orjson."""
    if headers is None:  # copied by the response, never changed
        return web.Response(body=orjson.dumps(body), status=status, headers=_JSON_HEADERS)
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON, headers=headers)


_JSON_HEADERS: Final = MappingProxyType({"Content-Type": JSON})
"""The headers of a JSON answer that has none of its own: aiohttp copies them into the
answer's, which costs less than working the ``content_type`` argument out again."""


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    answer: ErrorAnswer = {"error": code, "message": message}
    return json_response(answer, status, headers)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages clients can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 naming what is wrong with it.

    The body is consumed: ``request.read()`` afterwards answers nothing."""
    if "Content-Encoding" in request.headers:
        _check_encoding(request)
    try:
        raw = await _body(request)
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "payload_too_large", TOO_LARGE) from exc
    except RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not have
        raise bad_request(f"the body cannot be read: {exc}", "malformed_body") from exc
    return json_object(raw)


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw``, a whole request body, as a JSON object, or a 400 naming what is wrong."""
    if not raw:
        raise bad_request("the body is empty; expected a JSON object", "malformed_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}", "malformed_json") from exc
    if not isinstance(body, dict):
        raise bad_request(
            f"the body must be a JSON object, not {json_type(body)}", "malformed_json"
        )
    return body


async def _body(request: web.Request) -> bytes:
    """The whole body, as ``request.read()`` gives it (a 413 past ``client_max_size``).

    A small body has nearly always arrived with its headers: it is then taken as it lies
    in the buffer, without ``read()``'s loop of coroutines, which reads on until a second
    ``readany`` finds the end."""
    content = request.content
    if not content.is_eof():
        return await request.read()
    raw = content.read_nowait()
    if request.client_max_size and len(raw) > request.client_max_size:
        raise web.HTTPRequestEntityTooLarge(request.client_max_size, len(raw))
    return raw


def _check_encoding(request: web.Request) -> None:
    check_encoding(request.headers.getall("Content-Encoding"))


def check_encoding(stated: list[str]) -> None:
    """aiohttp decodes a body whose one Content-Encoding is one of :data:`DECODED` and
    passes any other as it came, so a body in another, or in several, is refused, not
    misread."""
    if len(stated) > 1 or stated[0].lower() not in (*DECODED, "identity"):
        raise ApiError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {', '.join(stated)!r} is not supported: send the body as it"
            f" is, or in one of {', '.join(DECODED)}",
            {"Accept-Encoding": ", ".join(DECODED)},
        )


def json_errors(handler: Handler) -> Handler:
    """``handler``, with what it raises answered as a JSON error (see the module docstring).

    Bound to each route when it is added, not run as a middleware: with one, aiohttp looks
    up and runs a middleware chain (its own wrapper included) on every request — 5 % of
    the instructions of a whole small request, counted with callgrind. One coroutine per
    request: a success costs a ``try`` and the metric, the errors are told apart only
    when there is one."""

    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect raised rather than returned
                _observe(request, exc.status, started)
                raise
            response = _http_error(exc)
        except Exception as exc:
            response = _error_answer(request, exc)
        _observe(request, response.status, started)
        return response

    setattr(handle, _JSON_ERRORS, True)
    return handle


def _error_answer(request: web.Request, exc: Exception) -> web.Response:
    """The JSON answer to what a handler raised (not an aiohttp ``HTTPException``)."""
    return error_response(*error_of(exc, request.path))


def error_of(exc: Exception, path: str) -> tuple[int, str, str, dict[str, str] | None]:
    """The status, code, message and headers that answer what a handler of ``path``
    raised (logged when it is unexpected), whichever server the answer goes out on."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, CheckpointRejected):  # the request's data cannot be stored as it is
        return 400, "invalid_request", str(exc), None
    if isinstance(exc, RunNotFound):
        return 404, "not_found", str(exc), None
    if isinstance(exc, TransitionRejected):  # e.g. cancelling a run that has finished
        return 409, "conflict", str(exc), None
    if isinstance(exc, DependencyError):
        # the client learns what is down, not where it runs; the log learns it once
        # per outage, from the client of that component (nexus.core.outages)
        log.debug("dependency unavailable: %s", exc, extra={"path": path})
        what = next((v for k, v in _UNAVAILABLE.items() if isinstance(exc, k)), None)
        message = f"{what or 'a service Nexus depends on'} is unavailable"
        return 503, "unavailable", f"{message}; retry later", {"Retry-After": RETRY_AFTER}
    log.error("unexpected error", exc_info=exc, extra={"path": path})
    return 500, "internal_error", "an unexpected error occurred", None


def _http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own error answer (4xx/5xx) as a JSON error."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "payload_too_large", TOO_LARGE)
    code = exc.reason.lower().replace(" ", "_")
    headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
    return error_response(exc.status, code, exc.reason, headers)


def finish_routes(app: web.Application) -> None:
    """Answer requests no route takes as JSON errors too: another method on a known path
    is a 405 naming the allowed ones, an unknown path a 404. Call once every route is
    added; every route's handler must be wrapped in :func:`json_errors`."""
    for resource in list(app.router.resources()):
        if not isinstance(resource, web.Resource):
            continue  # static files: aiohttp's own answers
        methods = {route.method for route in resource}
        for route in resource:
            if not getattr(route.handler, _JSON_ERRORS, False):
                raise TypeError(f"{route.method} {resource.canonical}: not wrapped in json_errors")
        if "*" not in methods:
            resource.add_route("*", _method_not_allowed(resource.canonical, sorted(methods)))
    app.router.add_route("*", "/{path:.*}", _no_route)


_JSON_ERRORS = "__nexus_json_errors__"


def _method_not_allowed(template: str, methods: list[str]) -> Handler:
    allow = ",".join(methods)

    async def refuse(request: web.Request) -> web.StreamResponse:
        message = f"{request.method} is not allowed here; use {allow}"
        request_meter(template, request.method, 405).observe(0.0)
        return error_response(405, "method_not_allowed", message, {"Allow": allow})

    return refuse


async def _no_route(request: web.Request) -> web.StreamResponse:
    request_meter(NO_ROUTE, request.method, 404).observe(0.0)
    return error_response(404, "not_found", "no such route")
