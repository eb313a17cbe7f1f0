"""A lean HTTP/1.1 client: pooled keep-alive connections, one parser per connection.

Two hot paths make one small call after another to the same few hosts: Job creation on a
shard (the scheduler) and the simulated pods' three calls (input ``GET``, result ``PUT``,
completion ``POST``). aiohttp's client spends 60-90 µs of CPU on each such call, more
than anything else the caller does for it; this client does what these calls need —
plain HTTP/1.1 over kept-alive connections, TLS when given a context — for a quarter of
that (benchmarked: 88 against 24 µs per ``POST``; reading answers with llhttp then took
a fifth off, ``benchmarks/http_client.py``): each connection is an
:class:`asyncio.Protocol` whose llhttp parser reads the answer as it arrives and completes
the caller's future, with no stream objects, tasks or timers per call.

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
  headers (names in lower case; a chunked body's trailer fields are not among them);
  informational ``1xx`` answers are skipped, and answers to ``HEAD``, ``204`` and ``304``
  end with their head. llhttp (through httptools) reads them strictly, as RFC 9112 §6.3
  asks: ``Transfer-Encoding`` beside ``Content-Length``, repeated or non-digit lengths,
  bad chunk sizes or chunk ends, folded headers, a status outside 100-599, a ``101``
  nobody asked for and bytes that do not read as an answer fail the call. A body ends
  with the connection only when the answer has neither ``Content-Length`` nor
  ``Transfer-Encoding``, and one cut by a reset is not an answer; no head over 64 KiB
  nor body over 64 MiB is read; bytes after an answer make it the connection's last.
* **TLS** for ``https`` URLs when the client is given an :class:`ssl.SSLContext` (and,
  optionally, the name the server's certificate must carry).
* **What it does not speak goes to aiohttp:** ``https`` URLs without a context, and calls
  answered with a redirect, are made (again) through one shared ``aiohttp.ClientSession``,
  so they behave exactly as before.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import aiohttp
import httptools

_MAX_HEAD = 64 * 1024
"""Largest answer head (status line and headers, interim answers included) read."""
_MAX_BODY = 64 * 1024**2
"""Largest answer body read; a larger one fails the call (the answers of the servers this
client talks to are small: Jobs, S3 replies, run inputs)."""
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class CallFailed(Exception):
    """No complete answer: connection refused or lost, malformed answer, or timed out."""


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: Mapping[str, str]


class PreparedHeaders(Mapping[str, str]):
    """Headers sent with many calls, their lines encoded once: a Job creation's are the
    same for every Job until the bearer token changes, and writing them into each request
    was a fifth of the call's own instructions. Not to be changed once made."""

    __slots__ = ("_headers", "lines")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)
        self.lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode(
            "latin-1"
        )
        """``Name: value\r\n`` for each header, as a request carries them."""

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


class _Stop(Exception):
    """Raised in a parser callback to stop parsing; what went wrong is in ``problem``."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection; llhttp reads its answers, one call at a time.

    The parser calls back as it reads: the head's fields, then the body's pieces, then the
    end of the message. An answer is handed to the caller once ``feed_data`` returns, so
    that bytes after it in the same read (which a server that answered once has no reason
    to send) are seen first and keep the connection from being used again."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.deadline = 0.0
        self.closed = False
        self.reused = False
        self.received = 0
        """Bytes of answer received for the current call."""
        self.head_only = False
        """The call was a ``HEAD``: its answer ends with the head, whatever it says."""
        self.in_head = False
        self.status = 0
        """The final (non-1xx) answer's status, once its head has been read."""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.answer: Answer | None = None
        self.keep_alive = False
        self.problem = ""

    # -- protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: the server is confused, stop using it
            self.close()
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.problem = self.problem or "switching protocols, which was not asked for"
        except httptools.HttpParserError as exc:
            self.problem = self.problem or str(exc)
        if self.answer is not None:  # complete; bytes after it make it the connection's last
            self._finish(reusable=not self.problem and self.keep_alive)
        elif self.problem:
            self.fail(CallFailed(f"malformed answer: {self.problem}"))
        elif not self.status and self.received > _MAX_HEAD:
            self.fail(CallFailed("malformed answer: answer head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.host.lost(self)
        if self.waiter is None:
            return
        if exc is None and self._ends_with_connection():
            self.answer = Answer(self.status, b"".join(self.body), self.headers)
            self._finish(reusable=False)
        elif self.reused and not self.received:
            self._settle(None, _Stale())
        else:
            self._settle(None, CallFailed(f"server disconnected ({exc!r})"))

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.answer is not None:
            raise _Stop  # a second answer to one request: take the first, then close
        self.in_head = True
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # a chunked body's trailer fields are not the answer's headers
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").rstrip(" \t")

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:
            self.problem = f"status {status}"
            raise _Stop
        if status < 200:  # informational: the parser reads the next answer after it
            return
        length = self.headers.get("content-length")
        if length is not None and int(length) > _MAX_BODY:  # digits: the parser checked
            self.problem = "answer body too large"
            raise _Stop
        self.status = status
        self.body = []
        self.size = 0
        if self.head_only:  # the parser, not told, would wait for the body the head announces
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.answer is not None:
            raise _Stop  # bytes after an answer to HEAD
        self.size += len(body)
        if self.size > _MAX_BODY:
            self.problem = "answer body too large"
            raise _Stop
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status and self.answer is None:  # not an informational answer, nor HEAD's
            self._complete()

    # -- calls ---------------------------------------------------------------------------

    def send(self, request: bytes, waiter: asyncio.Future[Answer], head: bool) -> None:
        assert self.transport is not None
        if self.head_only:  # the last call's parser may still expect the body HEAD skipped
            self.parser = httptools.HttpResponseParser(self)
        self.waiter = waiter
        self.received = 0
        self.head_only = head
        self.status = 0
        self.transport.write(request)

    def fail(self, error: Exception) -> None:
        self._settle(None, error)
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True

    def _complete(self) -> None:
        self.answer = Answer(self.status, b"".join(self.body), self.headers)
        self.keep_alive = self.parser.should_keep_alive()

    def _ends_with_connection(self) -> bool:
        """Whether the answer being read has a body that ends with the connection: a final
        head read, with neither Content-Length nor Transfer-Encoding (RFC 9112 §6.3 item
        7). A transfer coding other than chunked (item 4) ends so too, but is refused:
        which of the two llhttp read is not known here, and a chunked body cut short must
        never be taken whole."""
        return (
            self.status != 0
            and "content-length" not in self.headers
            and "transfer-encoding" not in self.headers
        )

    def _settle(self, answer: Answer | None, error: Exception | None) -> None:
        waiter, self.waiter = self.waiter, None
        self.answer = None
        self.problem = ""
        self.host.client.busy.discard(self)
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            assert answer is not None
            waiter.set_result(answer)

    def _finish(self, reusable: bool) -> None:
        answer = self.answer
        self._settle(answer, None)
        if reusable and not self.closed:
            self.host.release(self)
        else:
            self.close()


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
        if type(headers) is PreparedHeaders:
            lines = headers.lines
        elif headers:
            lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode(
                "latin-1"
            )
        else:
            lines = b""
        length = b"Content-Length: %d\r\n" % len(body)
        request = b"".join(
            [
                f"{method} {target} HTTP/1.1\r\nHost: {host.header}\r\n".encode("latin-1"),
                lines,
                length if body or method not in ("GET", "HEAD") else b"",
                b"\r\n",
                body,
            ]
        )
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
