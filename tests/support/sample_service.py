"""A minimal service on the shared lifecycle, run as a process by the lifecycle tests.

``python -m tests.support.sample_service <port-file> [crash] [partial]``: serves ``/slow``
(answers after 1 s), runs one background loop that finishes its current tick when asked
to stop, and prints lifecycle milestones on stdout. With ``partial``, it listens on the
lean server, whose one route, ``POST /lean-slow``, answers after 1 s (and says so on
stdout); every other request is handed over to aiohttp.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from nexus.core.config import HttpSettings, LogSettings
from nexus.core.httpserver import Answer, Request
from nexus.core.lifecycle import LIFECYCLE, ROUTER, Lifecycle, create_base_app, serve
from nexus.core.routes import Params, Router, json_answer

HTTP = HttpSettings(host="127.0.0.1", port=0, drain_delay=0.5, shutdown_timeout=5)


async def ticker(lifecycle: Lifecycle, crash: bool) -> None:
    ticks = 0
    while not lifecycle.stopping.is_set():
        await asyncio.sleep(0.05)
        ticks += 1
        if crash and ticks == 5:
            raise RuntimeError("the loop broke")
    print("loop drained", flush=True)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(1.0)
    return web.json_response({"slow": "done"})


async def lean_slow(request: Request, params: Params) -> Answer:
    await asyncio.sleep(1.0)
    print("lean request answered", flush=True)
    return json_answer({"slow": "lean"})


def main() -> int:
    port_file, crash = Path(sys.argv[1]), "crash" in sys.argv[2:]

    async def factory() -> web.Application:
        app = create_base_app("sample", HTTP)
        app.router.add_get("/slow", slow)
        if "partial" in sys.argv[2:]:
            router = app[ROUTER] = Router(partial=True)
            router.add("POST", "/lean-slow", lean_slow)

        async def clients(app: web.Application) -> AsyncIterator[None]:
            await asyncio.sleep(0.3)  # start-up takes a while
            app[LIFECYCLE].start_loop("ticker", ticker(app[LIFECYCLE], crash))
            yield
            print("clients closed", flush=True)

        app.cleanup_ctx.append(clients)
        return app

    code = serve(
        "sample",
        factory,
        HTTP,
        LogSettings(format="text"),
        on_listening=lambda port: port_file.write_text(str(port)),
    )
    print(f"exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
