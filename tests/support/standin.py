"""A stand-in for a shard's API server: any aiohttp application, served on loopback, with
a kubeconfig pointing at it, for answers the local cluster never gives."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import yaml
from aiohttp import web


@asynccontextmanager
async def stand_in_shard(app: web.Application, directory: Path) -> AsyncIterator[Path]:
    """Serve ``app`` on a free loopback port; yield the path of its kubeconfig (bearer
    token ``t``), written in ``directory``."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    path = write_kubeconfig(f"http://127.0.0.1:{runner.addresses[0][1]}", directory)
    try:
        yield path
    finally:
        await runner.cleanup()


def write_kubeconfig(server: str, directory: Path) -> Path:
    """A kubeconfig for the API server at ``server`` (bearer token ``t``), in ``directory``."""
    path = directory / "stand-in.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "s", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "s", "context": {"cluster": "s", "user": "u"}}],
                "current-context": "s",
            }
        )
    )
    return path


def refused_address() -> str:
    """``127.0.0.1:<port>`` where nothing listens: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"
