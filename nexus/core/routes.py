"""Routes on the lean HTTP server (:mod:`nexus.core.httpserver`), answered as on aiohttp.

A service whose every request is small and alike (the receiver: a completion is a POST of
a few hundred bytes, answered once its write is committed) is served without aiohttp,
whose request, URL and response machinery cost more CPU than the completion's own work.
What :mod:`nexus.core.httpapi` gives an aiohttp application, a :class:`Router` gives it
here, the same to a client and to Prometheus:

* **routes by template** (``/algorithm/v1.2/complete/{algorithm}/requests/{request_id}``):
  a ``{name}`` is one path segment, percent-decoded, never empty; a GET route takes HEAD
  too;
* **JSON errors** (DESIGN §2): what a handler raises is answered by
  :func:`nexus.core.httpapi.error_of`; another method on a known path is 405 naming the
  allowed ones, an unknown path 404; a body over the limit is 413 ``payload_too_large``;
  a body in a Content-Encoding is decoded as aiohttp decodes it (``gzip``, ``deflate``,
  ``br``, ``zstd``; another is 415), and one larger than the limit once decoded is 413;
* **every answer counted and timed** in ``nexus_http_request_duration_seconds`` by route
  template, method and status, as :func:`nexus.core.httpapi.json_errors` counts them.

A handler takes the request and the path's parameters and returns its :class:`Answer`,
at once or from a coroutine; the server holds that connection, and only that one, until
the coroutine returns, and never cancels it because the client went away, so a write the
handler started is finished and a client that retries finds it done.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp.compression_utils import BrotliDecompressor, ZLibDecompressor, ZSTDDecompressor

from nexus.core.httpapi import (
    DECODED,
    NO_ROUTE,
    TOO_LARGE,
    ApiError,
    bad_request,
    check_encoding,
    error_of,
    json_object,
    request_meter,
)
from nexus.core.httpserver import Answer, Request

Params = dict[str, str]
RouteHandler = Callable[[Request, Params], "Answer | Coroutine[Any, Any, Answer]"]


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    """A JSON answer serialised with orjson."""
    return Answer(status, orjson.dumps(body), headers=headers or None)


def error_answer(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Answer:
    return json_answer({"error": code, "message": message}, status, headers)


def header(request: Request, name: str) -> str | None:
    """The value of the header ``name`` (lower-case) as aiohttp reads it: UTF-8, a byte
    that is not part of UTF-8 as a surrogate (the server reads bytes as latin-1)."""
    value = request.headers.get(name)
    if value is None or value.isascii():
        return value
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


def request_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's body as a JSON object, decoded from its Content-Encoding (at most
    ``limit`` bytes once decoded), or the 400/413/415 naming what is wrong with it."""
    raw = request.body
    stated = request.headers.get("content-encoding")
    if stated is not None:
        check_encoding([stated])
        coding = stated.lower()
        if coding != "identity" and raw:
            raw = _decoded(raw, coding, limit)
    return json_object(raw)


def _decoded(raw: bytes, coding: str, limit: int) -> bytes:
    """``raw`` decoded as aiohttp decodes a request body (a ``deflate`` body without its
    zlib header taken as raw deflate); over ``limit`` bytes is 413."""
    decompressor: BrotliDecompressor | ZLibDecompressor | ZSTDDecompressor
    if coding == "br":
        decompressor = BrotliDecompressor()
    elif coding == "zstd":
        decompressor = ZSTDDecompressor()
    else:
        assert coding in DECODED
        raw_deflate = coding == "deflate" and raw[0] & 0xF != 8
        decompressor = ZLibDecompressor(encoding=coding, suppress_deflate_header=raw_deflate)
    try:
        body = decompressor.decompress_sync(raw, max_length=limit + 1)
        while decompressor.data_available and len(body) <= limit:
            body += decompressor.decompress_sync(b"", max_length=limit + 1 - len(body))
        finished = not isinstance(decompressor, ZLibDecompressor) or (
            coding != "deflate" or decompressor.eof
        )
    except Exception as exc:
        raise bad_request(
            f"the body cannot be read: Can not decode content-encoding: {coding}",
            "malformed_body",
        ) from exc
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", TOO_LARGE)
    if not finished:
        raise bad_request(
            f"the body cannot be read: Can not decode content-encoding: {coding}",
            "malformed_body",
        )
    return body


class _Route:
    __slots__ = ("handler", "method", "segments", "template")

    def __init__(self, method: str, template: str, handler: RouteHandler) -> None:
        self.method = method
        self.template = template
        self.segments = template.split("/")
        self.handler = handler

    def match(self, segments: list[str]) -> Params | None:
        params: Params = {}
        for mine, theirs in zip(self.segments, segments, strict=True):
            if mine.startswith("{"):
                if not theirs:
                    return None
                params[mine[1:-1]] = unquote(theirs) if "%" in theirs else theirs
            elif mine != theirs:
                return None
        return params


class Router:
    """The routes of one service: the lean server's handler (:meth:`handle`)."""

    def __init__(self, *, partial: bool = False) -> None:
        """``partial``: the service's aiohttp application answers every request these
        routes do not take (:meth:`takes`): its connection is handed over to it."""
        self.partial = partial
        self._by_length: dict[int, list[_Route]] = {}
        self._allowed: dict[str, str] = {}

    def takes(self, request: Request) -> bool:
        """Whether a route takes ``request``'s method on its path (a partial router's
        other requests, 404s and 405s included, are the aiohttp application's)."""
        method = request.method
        segments = request.path.split("/")
        for route in self._by_length.get(len(segments), ()):
            if route.method == method and route.match(segments) is not None:
                return True
        return False

    def add(self, method: str, template: str, handler: RouteHandler) -> None:
        """Route ``method`` requests on ``template`` to ``handler`` (GET: HEAD too)."""
        routes = self._by_length.setdefault(template.count("/") + 1, [])
        for one in ("GET", "HEAD") if method == "GET" else (method,):
            routes.append(_Route(one, template, handler))
        methods = {r.method for r in routes if r.template == template}
        self._allowed[template] = ",".join(sorted(methods))

    def handle(self, request: Request) -> Answer | Awaitable[Answer]:
        """The answer to ``request``: the route's, a JSON error, a 404 or a 405."""
        started = time.perf_counter()
        method = request.method
        segments = request.path.split("/")
        known: str | None = None
        for route in self._by_length.get(len(segments), ()):
            params = route.match(segments)
            if params is None:
                continue
            if route.method != method:
                known = route.template
                continue
            try:
                answer = route.handler(request, params)
            except Exception as exc:
                answer = error_answer(*error_of(exc, request.path))
            if isinstance(answer, Answer):
                request_meter(route.template, method, answer.status).observe(
                    time.perf_counter() - started
                )
                return answer
            return _timed(answer, request, route.template, started)
        if known is not None:
            allow = self._allowed[known]
            request_meter(known, method, 405).observe(0.0)
            message = f"{method} is not allowed here; use {allow}"
            return error_answer(405, "method_not_allowed", message, {"Allow": allow})
        request_meter(NO_ROUTE, method, 404).observe(0.0)
        return error_answer(404, "not_found", "no such route")

    def too_large(self, request: Request) -> Answer:
        """The 413 of a request whose body is over the server's limit, counted under the
        route that would have taken it."""
        method = request.method
        segments = request.path.split("/")
        template = NO_ROUTE
        for route in self._by_length.get(len(segments), ()):
            if route.match(segments) is not None:
                template = route.template
                if route.method == method:
                    break
        request_meter(template, method, 413).observe(0.0)
        return error_answer(413, "payload_too_large", TOO_LARGE)


async def _timed(
    answering: Coroutine[Any, Any, Answer], request: Request, template: str, started: float
) -> Answer:
    try:
        answer = await answering
    except Exception as exc:
        answer = error_answer(*error_of(exc, request.path))
    request_meter(template, request.method, answer.status).observe(time.perf_counter() - started)
    return answer
