"""A lean HTTP/1.1 load generator for loopback benchmarks.

A general-purpose client (aiohttp, httpx) spends more CPU per request than the server under
test, and on a 2-core machine that CPU is taken from the server. This one writes prebuilt
request bytes on persistent connections and parses only the status line and the
``Content-Length``, so it costs a few tens of microseconds per request.

Two shapes of load:

* :func:`closed_loop` — ``connections`` clients each sending the next request as soon as
  the previous answer arrives, for a time or a number of requests: the server's maximum
  throughput;
* :func:`open_loop` — requests started at a fixed rate regardless of answers (on as many
  connections as needed): latency at a given load, without coordinated omission.

Only loopback targets are accepted, and every run is bounded by a duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Results:
    """Answers by status, latencies (s) of the successful ones, and the wall time."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def record(self, status: int, latency: float, body: bytes, keep_body: bool) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.latencies.append(latency)
            if keep_body:
                self.bodies.append(body)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        return {
            "requests": sum(self.statuses.values()),
            "ok": self.ok,
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "seconds": round(self.seconds, 3),
            "ok_per_second": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "max_ms": round(max(self.latencies, default=float("nan")) * 1000, 2),
        }


def request_bytes(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """One serialised HTTP/1.1 request to ``url``."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"load is only sent to loopback addresses, not {parts.hostname}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> _Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        status, body, _ = await self.exchange_head(request)
        return status, body

    async def exchange_head(self, request: bytes) -> tuple[int, bytes, bytes]:
        """Status, body and the answer's head (its status line and headers)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        body = await self.reader.readexactly(length) if length else b""
        return status, body, head

    def close(self) -> None:
        self.writer.close()


async def closed_loop(
    url: str | list[str],
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    duration: float,
    total: int | None = None,
    keep_bodies: bool = False,
) -> Results:
    """As fast as ``connections`` sequential clients can go, for ``duration`` seconds or
    until ``total`` requests are answered, whichever comes first.

    With several URLs, client ``c`` talks to ``url[c % len(url)]``."""
    results = Results()
    urls = [url] if isinstance(url, str) else list(url)
    counter = iter(range(10**12 if total is None else total))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def client(target: str) -> None:
        connection = await _Connection.open(target)
        try:
            while loop.time() < deadline:
                index = next(counter, None)
                if index is None:
                    return
                request = make_request(index)
                started = time.perf_counter()
                try:
                    status, body = await connection.exchange(request)
                except (OSError, asyncio.IncompleteReadError):
                    results.errors += 1
                    connection.close()
                    connection = await _Connection.open(target)
                    continue
                results.record(status, time.perf_counter() - started, body, keep_bodies)
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(urls[c % len(urls)]) for c in range(connections)))
    results.seconds = time.perf_counter() - started
    return results


async def open_loop(
    url: str | list[str],
    make_request: Callable[[int], bytes],
    *,
    rate: float,
    duration: float,
    max_connections: int = 256,
    keep_bodies: bool = False,
) -> Results:
    """Requests started at ``rate`` per second for ``duration`` seconds; latency measured
    from each request's scheduled start, so a slow server cannot hide its queueing.

    With several URLs (servers behind a round-robin balancer), request ``i`` goes to
    ``url[i % len(url)]`` and ``make_request`` gets ``i``."""
    results = Results()
    urls = [url] if isinstance(url, str) else list(url)
    idle: dict[str, list[_Connection]] = {u: [] for u in urls}
    in_flight: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(index: int, scheduled: float) -> None:
        target = urls[index % len(urls)]
        pool = idle[target]
        connection = pool.pop() if pool else await _Connection.open(target)
        try:
            status, body = await connection.exchange(make_request(index))
        except (OSError, asyncio.IncompleteReadError):
            results.errors += 1
            connection.close()
            return
        results.record(status, time.perf_counter() - scheduled, body, keep_bodies)
        pool.append(connection)

    started = time.perf_counter()
    total = int(rate * duration)
    for index in range(total):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_connections:
            results.errors += 1  # the server is too slow for this rate: count, do not wait
            continue
        task = loop.create_task(one(index, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    results.seconds = time.perf_counter() - started
    for pool in idle.values():
        for connection in pool:
            connection.close()
    return results
