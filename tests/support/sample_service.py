"""A minimal service on the shared lifecycle, run as a process by the lifecycle tests.

``python -m tests.support.sample_service <port-file> [crash]``: serves ``/slow`` (answers
after 1 s), runs one background loop that finishes its current tick when asked to stop,
and prints lifecycle milestones on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from nexus.core.config import HttpSettings, LogSettings
from nexus.core.lifecycle import LIFECYCLE, Lifecycle, create_base_app, serve

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


def main() -> int:
    port_file, crash = Path(sys.argv[1]), "crash" in sys.argv[2:]

    async def factory() -> web.Application:
        app = create_base_app("sample", HTTP)
        app.router.add_get("/slow", slow)

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
