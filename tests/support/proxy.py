"""A TCP proxy in front of a shard, to make it unreachable and reachable again."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import yaml

from support.system import System


class Proxy:
    """A TCP proxy in front of a shard; :meth:`cut` closes every connection and refuses new
    ones until :meth:`restore`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._tasks.difference_update(pipes)
        for w in (writer, up_writer):
            self._links.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def cut(self) -> None:
        self.open = False
        for writer in list(self._links):
            writer.close()

    def restore(self) -> None:
        self.open = True

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def proxied_kubeconfigs(system: System, directory: Path, proxies: dict[str, Proxy]) -> Path:
    """A copy of the system's kubeconfigs whose named shards go through their proxy."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in system.kubeconfig_dir.glob("*.kubeconfig"):
        config = yaml.safe_load(source.read_text())
        shard = source.name.removesuffix(".kubeconfig")
        if shard in proxies:
            cluster = config["clusters"][0]["cluster"]  # TLS passes through: keep the scheme
            scheme = cluster["server"].partition("://")[0]
            cluster["server"] = f"{scheme}://127.0.0.1:{proxies[shard].port}"
        (directory / source.name).write_text(yaml.safe_dump(config))
    return directory
