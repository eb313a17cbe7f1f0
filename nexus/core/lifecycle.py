"""How every Nexus process starts, runs and stops.

A service is an aiohttp application built by a ``create_app(settings)`` factory. Clients
(Postgres, Redis, S3, shards) are opened in the application's ``cleanup_ctx`` and kept under
``web.AppKey``\\ s; background loops are started there through :class:`Lifecycle` before the
``yield`` and are drained and cancelled after it. :func:`serve` adds the probes and the
metrics route and runs the application under uvloop. ``/metrics`` is served on the API's
port, or, when ``metrics_port`` is set, by a listener of its own on that port alone. An
application made by :func:`create_lean_app` (the receiver) keeps that lifecycle, but its
requests, probes and metrics included, are served by the lean HTTP server through its
:class:`~nexus.core.routes.Router` (:func:`listen` starts whichever listener it has). An
aiohttp application given a *partial* router (the scheduler: its submits) listens on the
lean server too, which answers the router's routes and hands every connection whose
request it does not take over to the application's aiohttp server for the rest of its
life; the lean listener closes first at shutdown, then the runner those connections.

Guarantees:

* ``/health/ready`` answers 200 only after start-up has finished and turns 503 the moment
  shutdown begins; ``/health/live`` answers 200 while the event loop turns.
* SIGTERM or SIGINT → not ready → ``drain_delay`` (load balancers notice) → the listener
  closes → loops are told to stop taking work and get until the shutdown deadline to
  finish → in-flight requests finish within ``shutdown_timeout`` (idle kept-alive
  connections are closed at once, so their clients connect anew, elsewhere) → clients
  are closed → exit status 0. With ``reuse_port`` a replacement process listens on the
  same port beforehand and takes the new connections. A separate metrics listener opens
  before the API's and closes after it, so the whole shutdown can be scraped.
* A background loop that ends with an exception stops the process with exit status 1: a
  half-working pod is worse than a restarted one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from nexus.core.config import HttpSettings, LogSettings
from nexus.core.httpapi import json_errors
from nexus.core.httpserver import Answer, HttpServer, Request
from nexus.core.logs import configure as configure_logs
from nexus.core.routes import Params, Router, error_answer, json_answer

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASHED = 1
EXIT_CONFIG = 2


class Lifecycle:
    """The state of one service process: readiness, stopping, and its background loops."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = False
        self.exit_code = EXIT_OK
        self.stopping = asyncio.Event()
        """Set when shutdown begins; loops stop taking new work when they see it."""
        self.stop_requested = asyncio.Event()
        """Set by a signal or a crashed loop; :func:`serve` then shuts the process down."""
        self._loops: dict[str, asyncio.Task[None]] = {}

    def start_loop(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` until shutdown. If it raises, the whole process stops with status 1.

        A loop should watch :attr:`stopping` and return once its in-flight work is done.
        """
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._loops[name] = task
        task.add_done_callback(lambda t: self._loop_done(name, t))
        return task

    def _loop_done(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if not self.stopping.is_set():
                self.crash(f"background loop {name!r} was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            log.error("background loop crashed", exc_info=exc, extra={"loop": name, "exit": 1})
            self.crash(f"background loop {name!r} crashed: {exc!r}")
        elif not self.stopping.is_set():
            self.crash(f"background loop {name!r} returned before shutdown")

    def crash(self, reason: str) -> None:
        """Stop the process with a non-zero exit status."""
        if self.exit_code == EXIT_OK:
            log.error("stopping the process: %s", reason)
        self.exit_code = EXIT_CRASHED
        self.ready = False
        self.stop_requested.set()

    async def stop_loops(self, timeout: float) -> None:
        """Tell the loops to stop, give them ``timeout`` seconds, then cancel the rest."""
        self.stopping.set()
        tasks = [t for t in self._loops.values() if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning("loop did not stop in time; cancelling", extra={"loop": task.get_name()})
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=max(1.0, timeout / 4))


LIFECYCLE = web.AppKey("nexus.lifecycle", Lifecycle)


def create_base_app(name: str, http: HttpSettings) -> web.Application:
    """An application with the lifecycle, probes and metrics every service has."""
    # lingering_time: after refusing an oversize body, read what a client still sends for
    # one second (not aiohttp's ten), so a client that gives up does not hold a task.
    app = web.Application(
        client_max_size=http.max_body_size,
        handler_args={"access_log": None, "lingering_time": 1.0},
    )
    app[LIFECYCLE] = Lifecycle(name)
    app.router.add_get("/health/live", json_errors(_live))
    app.router.add_get("/health/ready", json_errors(_ready))
    if http.metrics_port is None:
        app.router.add_get("/metrics", json_errors(_metrics))
    app.on_shutdown.append(_stop_loops_on_shutdown(http.shutdown_timeout))
    return app


KEEPALIVE_TIMEOUT = 75.0
"""Seconds an idle kept-alive connection stays open on the lean server: aiohttp's."""
ROUTER = web.AppKey("nexus.router", Router)
"""The routes of an application served by the lean HTTP server (:func:`create_lean_app`)."""


def create_lean_app(name: str, http: HttpSettings) -> web.Application:
    """An application with the lifecycle every service has, whose requests are all served
    by the lean HTTP server: the probes and ``/metrics`` are on its :data:`ROUTER`, and
    the service adds its own routes there."""
    app = web.Application()
    lifecycle = app[LIFECYCLE] = Lifecycle(name)
    router = app[ROUTER] = Router()

    def ready(request: Request, params: Params) -> Answer:
        if lifecycle.ready:
            return json_answer({"status": "ready"})
        return error_answer(503, "not_ready", "the service is starting or stopping")

    router.add("GET", "/health/live", lambda request, params: json_answer({"status": "live"}))
    router.add("GET", "/health/ready", ready)
    if http.metrics_port is None:
        router.add("GET", "/metrics", _lean_metrics)
    app.on_shutdown.append(_stop_loops_on_shutdown(http.shutdown_timeout))
    return app


def _lean_metrics(request: Request, params: Params) -> Answer:
    return Answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)


class Listener:
    """The API's listener, on aiohttp's server or the lean one: its port, and how it
    closes (the lean one: idle connections at once, requests in flight within the
    shutdown timeout; aiohttp's closes with its runner)."""

    def __init__(self, port: int, server: HttpServer | None = None, grace: float = 0.0) -> None:
        self.port = port
        self._server = server
        self._grace = grace

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close(self._grace)


async def listen(
    runner: web.AppRunner, http: HttpSettings, *, host: str | None = None, port: int | None = None
) -> Listener:
    """Start listening for ``runner``'s application (set up) on ``http``'s address, or
    ``host`` and ``port``: on the lean server when it has a :data:`ROUTER`."""
    host = http.host if host is None else host
    port = http.port if port is None else port
    router = runner.app.get(ROUTER) if runner.app is not None else None
    if router is not None:
        server = HttpServer(
            router.handle,
            max_body=http.max_body_size,
            too_large=router.too_large,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            fallback=runner.server if router.partial else None,
            takes=router.takes,
        )
        bound = await server.start(host, port, backlog=http.backlog, reuse_port=http.reuse_port)
        return Listener(bound, server, http.shutdown_timeout)
    site = web.TCPSite(
        runner,
        host,
        port,
        backlog=http.backlog,
        reuse_address=True,
        reuse_port=http.reuse_port or None,
    )
    await site.start()
    return Listener(_bound_port(runner))


def _stop_loops_on_shutdown(timeout: float) -> Callable[[web.Application], Awaitable[None]]:
    async def stop(app: web.Application) -> None:
        await app[LIFECYCLE].stop_loops(timeout)

    return stop


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def _ready(request: web.Request) -> web.Response:
    if request.app[LIFECYCLE].ready:
        return web.json_response({"status": "ready"})
    return web.json_response(
        {"error": "not_ready", "message": "the service is starting or stopping"}, status=503
    )


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _start_metrics_listener(http: HttpSettings) -> web.AppRunner | None:
    """The listener of ``/metrics`` alone on ``http.metrics_port``, when one is set."""
    if http.metrics_port is None:
        return None
    app = web.Application()
    app.router.add_get("/metrics", json_errors(_metrics))
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, http.host, http.metrics_port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("metrics listener ready", extra={"port": http.metrics_port})
    return runner


async def run_app(
    app: web.Application,
    http: HttpSettings,
    *,
    on_listening: Callable[[int], None] | None = None,
) -> int:
    """Serve ``app`` until SIGTERM/SIGINT or a crashed loop; return the exit status.

    ``on_listening`` gets the bound port once the service is ready (useful with port 0).
    """
    lifecycle = app[LIFECYCLE]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lifecycle.stop_requested.set)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=http.shutdown_timeout
    )
    metrics: web.AppRunner | None = None
    listener: Listener | None = None
    try:
        metrics = await _start_metrics_listener(http)
        await runner.setup()  # on_startup and cleanup_ctx up to their yield
        listener = await listen(runner, http)
        port = listener.port
        _settle_garbage_collector()
        if not lifecycle.stop_requested.is_set():
            lifecycle.ready = True
            log.info("service ready", extra={"port": port})
            if on_listening is not None:
                on_listening(port)
        await lifecycle.stop_requested.wait()
        log.info("shutting down", extra={"exitCode": lifecycle.exit_code})
        lifecycle.ready = False
        if http.drain_delay and lifecycle.exit_code == EXIT_OK:
            await asyncio.sleep(http.drain_delay)
    finally:
        lifecycle.ready = False
        if listener is not None:  # the lean server's requests finish before clients close
            await asyncio.shield(listener.close())
        await asyncio.shield(runner.cleanup())
        if metrics is not None:
            await asyncio.shield(metrics.cleanup())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped", extra={"exitCode": lifecycle.exit_code})
    return lifecycle.exit_code


GC_THRESHOLDS = (20_000, 50, 100)
"""Collect young objects every 20,000 allocations instead of 700. Measured in the
scheduler at 900 runs/s end to end, Python's cyclic collector took 14.5 % of its CPU,
mostly re-scanning long-lived objects; a request's objects die young and are freed by
reference counting, so rarer collections lose nothing but that cost."""


def _settle_garbage_collector() -> None:
    """After start-up: move everything alive now (modules, clients, caches) out of the
    collector's sight for good, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return 0


def serve(
    name: str,
    factory: Callable[[], Awaitable[web.Application]],
    http: HttpSettings,
    logs: LogSettings,
    *,
    on_listening: Callable[[int], None] | None = None,
) -> int:
    """Configure logs, run ``factory()``'s application under uvloop, return the exit status."""
    configure_logs(logs, name)

    async def main() -> int:
        app = await factory()
        return await run_app(app, http, on_listening=on_listening)

    return uvloop.run(main())
