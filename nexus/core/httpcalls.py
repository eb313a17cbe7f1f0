"""A lean HTTP/1.1 client: pooled keep-alive connections, one parser per connection.

Two hot paths make one small call after another to the same few hosts: Job creation on a
shard (the scheduler) and the simulated pods' three calls (input ``GET``, result ``PUT``,
completion ``POST``). aiohttp's client spends 60-90 µs of CPU on each such call, more
than anything else the caller does for it; this client does what these calls need —
plain HTTP/1.1 over kept-alive connections, TLS when given a context — for a quarter of
that (benchmarked: 88 against 24 µs per ``POST``): each connection is an
:class:`asyncio.Protocol` that parses the answer as it arrives and completes the caller's
future, with no stream objects, tasks or timers per call.

Guarantees:

* **At most ``limit`` connections per host** (host, port); further callers wait, first
  come first served, and are handed the next connection that is released.
* **Keep-alive:** a connection returns to its host's pool after a complete answer unless
  the server said ``Connection: close`` (or spoke HTTP/1.0); idle connections the server
  closes are dropped. A ``GET`` or ``PUT`` whose reused connection turns out closed before
  any byte of answer is sent once more on a new connection, as aiohttp does; a ``POST``
  only when the caller says repeating it is harmless (``idempotent=True``: a Job
  creation, whose repetition answers 409).
* **Timeouts without a timer per call:** a call fails with :class:`CallFailed` once it has
  taken ``timeout`` seconds (waiting for a connection included); one sweep a quarter of
  ``timeout`` apart finds such calls.
* **Answers** with ``Content-Length``, ``chunked`` or read-to-close bodies, and their
  headers (names in lower case); informational ``1xx`` answers are skipped. Framing is
  read strictly (RFC 9112 §6.3): ``Transfer-Encoding`` overrides ``Content-Length``,
  conflicting lengths, signed or non-digit sizes and folded headers fail the call, a
  read-to-close body cut by a reset is not an answer, and no body over 64 MiB is read.
* **TLS** for ``https`` URLs when the client is given an :class:`ssl.SSLContext` (and,
  optionally, the name the server's certificate must carry).
* **What it does not speak goes to aiohttp:** ``https`` URLs without a context, and calls
  answered with a redirect, are made (again) through one shared ``aiohttp.ClientSession``,
  so they behave exactly as before.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import aiohttp

_CHUNKED = -2
_TO_CLOSE = -1
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024**2
"""Largest answer body read; a larger one fails the call (the answers of the servers this
client talks to are small: Jobs, S3 replies, run inputs)."""
_STATUS = re.compile(r"[1-5][0-9][0-9]")
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class CallFailed(Exception):
    """No complete answer: connection refused or lost, malformed answer, or timed out."""


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: Mapping[str, str]


class _Connection(asyncio.Protocol):
    """One kept-alive connection; parses one answer at a time."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.deadline = 0.0
        self.closed = False
        self.reused = False
        self.received = False
        self.no_body = False
        self.buffer = bytearray()
        self.status = 0
        self.length = 0
        self.keep_alive = True
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0

    # -- protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: the server is confused, stop using it
            self.close()
            return
        self.received = True
        self.buffer += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self.fail(CallFailed(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.host.lost(self)
        if self.waiter is None:
            return
        if self.status and self.length == _TO_CLOSE and exc is None:  # the end of the body
            self._finish(bytes(self.buffer))
        elif self.reused and not self.received:
            self._settle(None, _Stale())
        else:
            self._settle(None, CallFailed(f"server disconnected ({exc!r})"))

    # -- calls ---------------------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future[Answer], head: bool) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.received = False
        self.no_body = head
        self.status = 0
        self.transport.write(request)

    def fail(self, error: Exception) -> None:
        self._settle(None, error)
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True

    def _settle(self, answer: Answer | None, error: Exception | None) -> None:
        waiter, self.waiter = self.waiter, None
        self.host.client.busy.discard(self)
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            assert answer is not None
            waiter.set_result(answer)

    def _finish(self, body: bytes) -> None:
        answer = Answer(self.status, body, self.headers)
        reusable = self.keep_alive and not self.buffer and not self.closed
        self._settle(answer, None)
        if reusable:
            self.host.release(self)
        else:
            self.close()

    def _parse(self) -> None:
        buffer = self.buffer
        while not self.status:  # the head, after any informational (1xx) answers
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise ValueError("answer head too large")
                return
            lines = buffer[:end].decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            version, status_text = lines[0].split(" ", 2)[:2]
            if not _STATUS.fullmatch(status_text):
                raise ValueError(f"status {status_text!r}")
            status = int(status_text)
            if status >= 200:
                self._head(version, status, lines[1:])
        if self.length >= 0:
            if len(buffer) >= self.length:
                body = bytes(buffer[: self.length])
                del buffer[: self.length]
                self._finish(body)
        elif self.length == _CHUNKED:
            self._parse_chunks()
        elif len(buffer) > _MAX_BODY:
            raise ValueError("answer body too large")

    def _head(self, version: str, status: int, lines: list[str]) -> None:
        """Read the headers of an answer and how its body is framed (RFC 9112 §6.3)."""
        keep_alive = version == "HTTP/1.1"
        headers: dict[str, str] = {}
        lengths: set[str] = set()
        codings = ""
        for line in lines:
            if line[:1] in (" ", "\t"):
                raise ValueError("obsolete line folding")
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = value
            if name == "content-length":
                lengths.update(v.strip() for v in value.split(","))
            elif name == "transfer-encoding":
                codings = f"{codings},{value}" if codings else value
            elif name == "connection":
                keep_alive = value.lower() == "keep-alive" or (
                    keep_alive and value.lower() != "close"
                )
        length = _TO_CLOSE
        if codings:
            # chunked last: the body is chunked; anything else: it ends with the connection.
            # A Content-Length beside it is ignored, and the connection not used again.
            if codings.rsplit(",", 1)[-1].strip().lower() == "chunked":
                length = _CHUNKED
            keep_alive = keep_alive and not lengths
        elif lengths:
            if len(lengths) > 1 or not _DIGITS.fullmatch(next(iter(lengths))):
                raise ValueError(f"Content-Length {headers['content-length']!r}")
            length = int(next(iter(lengths)))
            if length > _MAX_BODY:
                raise ValueError("answer body too large")
        if self.no_body or status in (204, 304):
            length = 0
        if length == _TO_CLOSE:
            keep_alive = False
        self.status, self.length, self.keep_alive = status, length, keep_alive
        self.headers = headers
        self.chunks = []
        self.size = 0

    def _parse_chunks(self) -> None:
        buffer = self.buffer
        position = 0
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                if len(buffer) - position > _MAX_HEAD:
                    raise ValueError("chunk line too long")
                break
            text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
            if not _HEX.fullmatch(text):
                raise ValueError(f"chunk size {text[:20]!r}")
            size = int(text, 16)
            if size == 0:
                end = buffer.find(b"\r\n\r\n", line_end)
                if end < 0:
                    break
                del buffer[: end + 4]
                self._finish(b"".join(self.chunks))
                return
            self.size += size
            if self.size > _MAX_BODY:
                raise ValueError("answer body too large")
            data_end = line_end + 2 + size
            if len(buffer) < data_end + 2:
                self.size -= size  # counted again when the rest has come
                break
            if buffer[data_end : data_end + 2] != b"\r\n":
                raise ValueError("chunk longer than its size")
            self.chunks.append(bytes(buffer[line_end + 2 : data_end]))
            position = data_end + 2
        del buffer[:position]


class _Stale(Exception):
    """A reused connection was closed by the server before it answered."""


class _Host:
    """The connections to one (host, port): idle ones, how many exist, who waits."""

    def __init__(
        self, client: HttpCalls, host: str, port: int, header: str, tls: ssl.SSLContext | None
    ) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.tls = tls
        self.header = header
        """What the ``Host`` header says: as in the URL, without a default port."""
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: deque[tuple[float, asyncio.Future[_Connection | None]]] = deque()

    async def acquire(self, deadline: float) -> _Connection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                connection.reused = True
                return connection
        if self.open >= self.client.limit:
            waiter: asyncio.Future[_Connection | None] = self.client.loop.create_future()
            self.waiters.append((deadline, waiter))
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # handed over just as the caller gave up: pass it on
                    handed = waiter.result()
                    if handed is None:
                        self._hand_over(None)
                    else:
                        self.release(handed)
                raise
            if self.client.closed:  # closed while this caller waited: use nothing more
                if handed is not None:
                    handed.close()
                raise CallFailed("the client was closed")
            if handed is not None:
                handed.reused = True
                return handed
        self.open += 1
        try:
            # the call's deadline covers the connection too: a server whose host drops
            # packets would otherwise hold this slot for the kernel's SYN retries (~2 min)
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                _, connection = await self.client.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.client.server_hostname if self.tls else None,
                )
        except BaseException as exc:
            self.open -= 1
            self._hand_over(None)
            where = f"{self.host}:{self.port}"
            if isinstance(exc, TimeoutError):
                raise CallFailed(
                    f"cannot connect to {where} within {self.client.timeout:g} s"
                ) from exc
            if isinstance(exc, OSError):
                raise CallFailed(f"cannot connect to {where}: {exc!r}") from exc
            raise
        return connection

    def release(self, connection: _Connection) -> None:
        if not self._hand_over(connection):
            self.idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        self.open -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        self._hand_over(None)

    def _hand_over(self, connection: _Connection | None) -> bool:
        """Give a connection (or, with ``None``, the right to open one) to the next waiter."""
        while self.waiters:
            _, waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False


class HttpCalls:
    """HTTP/1.1 calls to a few hosts over kept-alive connections; :meth:`close` when done."""

    def __init__(
        self,
        *,
        limit: int,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self.tls = tls
        self.server_hostname = server_hostname
        """The name the servers' certificates must carry, when not the URL's host."""
        self.loop = asyncio.get_running_loop()
        self.hosts: dict[str, _Host] = {}
        """Pools by scheme and authority of the URL, as written (few: parsed once each)."""
        self.busy: set[_Connection] = set()
        self.closed = False
        self._session: aiohttp.ClientSession | None = None
        self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    async def request(
        self, method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """``(status, body)`` of the answer; :class:`CallFailed` when there is none."""
        answer = await self.call(method, url, body, headers)
        return answer.status, answer.body

    async def call(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        idempotent: bool | None = None,
    ) -> Answer:
        """The whole answer; :class:`CallFailed` when there is none. ``idempotent``
        overrides the method's own rule for sending again on a stale connection."""
        if self.closed:
            raise CallFailed("the client was closed")
        repeatable = method in _IDEMPOTENT if idempotent is None else idempotent
        scheme, _, rest = url.partition("://")
        authority, slash, target = rest.partition("/")
        host = self.hosts.get(f"{scheme}://{authority}")
        if host is None:
            lean = scheme == "http" or (scheme == "https" and self.tls is not None)
            if not lean or not authority or "?" in authority or "#" in authority:
                return await self._through_aiohttp(method, url, body, headers)
            host = self._host(scheme, authority)
        target = slash + target.partition("#")[0] if slash else "/"
        head = [f"{method} {target} HTTP/1.1\r\nHost: {host.header}\r\n"]
        if headers:
            head.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if body or method not in ("GET", "HEAD"):
            head.append(f"Content-Length: {len(body)}\r\n")
        request = "".join(head).encode("latin-1") + b"\r\n" + body
        deadline = time.monotonic() + self.timeout
        for _ in range(2):
            connection = await host.acquire(deadline)
            waiter: asyncio.Future[Answer] = self.loop.create_future()
            connection.deadline = deadline
            self.busy.add(connection)
            connection.send(request, waiter, method == "HEAD")
            try:
                answer = await waiter
            except _Stale:
                if repeatable:
                    continue
                raise CallFailed("server disconnected before answering") from None
            if 300 <= answer.status < 400 and answer.status != 304:
                return await self._through_aiohttp(method, url, body, headers)
            return answer
        raise CallFailed("server disconnected before answering")

    def _host(self, scheme: str, authority: str) -> _Host:
        """The pool of ``authority`` (``[user@]host[:port]`` of an ``http(s)`` URL)."""
        parts = urlsplit(f"{scheme}://{authority}/")
        if not parts.hostname:
            raise CallFailed(f"no host in {authority!r}")
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        header = authority.rpartition("@")[2]
        if header.endswith(f":{default}"):
            header = header[: -len(f":{default}")]
        tls = self.tls if scheme == "https" else None
        host = self.hosts[f"{scheme}://{authority}"] = _Host(
            self, parts.hostname, port, header, tls
        )
        return host

    async def _through_aiohttp(
        self, method: str, url: str, body: bytes, headers: Mapping[str, str] | None
    ) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                skip_auto_headers=("User-Agent",),
            )
        try:
            async with self._session.request(
                method, url, data=body or None, headers=dict(headers or {})
            ) as response:
                content = await response.read()
                found = {name.lower(): value for name, value in response.headers.items()}
                return Answer(response.status, content, found)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallFailed(repr(exc)) from exc

    def _sweep_interval(self) -> float:
        return min(1.0, max(0.05, self.timeout / 4))

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self.busy if c.deadline <= now]:
            connection.fail(CallFailed(f"no answer within {self.timeout:g} s"))
        for host in self.hosts.values():
            while host.waiters and host.waiters[0][0] <= now:
                _, waiter = host.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(CallFailed(f"no connection within {self.timeout:g} s"))
        self._sweeper = self.loop.call_later(self._sweep_interval(), self._sweep)

    async def close(self) -> None:
        """Fail the calls in flight and those waiting for a connection; close them all.
        Calls made afterwards fail too."""
        self.closed = True
        self._sweeper.cancel()
        for host in self.hosts.values():
            while host.waiters:
                _, waiter = host.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(CallFailed("the client was closed"))
        for connection in list(self.busy):
            connection.fail(CallFailed("the client was closed"))
        for host in self.hosts.values():
            for connection in host.idle:
                connection.close()
            host.idle.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
