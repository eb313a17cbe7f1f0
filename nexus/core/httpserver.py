"""A lean HTTP/1.1 server: requests parsed as they arrive, answers written in one piece.

The local cluster's shards answer thousands of Job creates a second on a machine they
share with Nexus, and aiohttp's server spent about 25 µs of CPU on each request before the
handler ran (request and header objects, URL parsing, a task per connection, response
machinery). Their traffic is plain — small JSON requests with a ``Content-Length``, JSON
answers, and chunked streams for watches — and this server handles exactly that for about
5 µs:

* **plain or TLS** (given an :class:`ssl.SSLContext`: the event loop's TLS, the same
  protocol on top);
* **keep-alive connections**, requests answered in order (a pipelined request waits for
  the one before); ``Connection: close`` and HTTP/1.0 are honoured;
* **bodies** by ``Content-Length`` or ``chunked``, up to ``max_body`` bytes (``413``
  beyond); ``Expect: 100-continue`` is answered;
* **a handler answers at once** with an :class:`Answer` — no task, no await — or returns a
  coroutine: the connection is then its own until it returns (what the client pipelines
  meanwhile waits, and is read no further than one more request), other connections are
  served meanwhile. The coroutine returns its :class:`Answer` when it has one to compute
  (a write to commit first), or streams (a watch) through :meth:`Request.stream`
  (chunked; waits while the client's socket buffer is full, raises
  :class:`ConnectionResetError` once the client is gone) and returns ``None``. A client
  that goes away while it runs does not stop it: its answer is then dropped;
* a malformed request gets ``400`` and the connection is closed; a handler that raises
  gets ``500`` and a log line, as from aiohttp. What is taken is what an RFC 9112 reader
  takes (``tests/test_httpserver_fuzz.py`` holds it to h11); where the framing could be
  read two ways it is refused: bare ``LF`` line ends, whitespace before a header's colon,
  folded header lines, a ``Transfer-Encoding`` other than ``chunked``, one beside a
  ``Content-Length``, ``Content-Length`` fields that disagree;
* a request refused for its body's size is answered ``413`` at once, and what the client
  still sends in the next second is read and dropped before the connection closes (as
  aiohttp lingers), so that its socket is not reset with the answer unread;
* with ``keepalive_timeout``, a connection idle that long between requests is closed
  (aiohttp's 75 s), so that clients gone without a word do not hold sockets for ever;
* :meth:`HttpServer.close` stops listening, closes idle connections and gives streams
  ``grace`` seconds to end before cutting them off;
* **with a fallback** (another server's protocol factory, e.g. aiohttp's ``web.Server``),
  only the requests ``takes`` accepts are answered here, and only those whose head is
  well formed, names no field twice (a handler would read the fields joined, where the
  fallback may read the first alone: aiohttp's ``Authorization``, ``Idempotency-Key``)
  and whose body has a ``Content-Length`` within ``max_body``; at the first
  other request the connection is the fallback's for the rest of its life: once every
  answer before it is written, the transport is given to a protocol of the fallback's,
  which receives every byte from that request's first one on (reading resumed if it was
  held). What the fallback answers — errors, 413s, refused framing — is then exactly its
  own, and its server shuts those connections down, not this one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import NoReturn, cast
from urllib.parse import parse_qsl

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_JOIN_LIMIT = 64 * 1024
"""Bodies up to this size are joined to their head for one plain write (cheaper than a
``writev`` of two pieces); larger ones are written beside it, not copied."""
_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_HEAD = re.compile(
    rf"{_TOKEN} [\x21-\x7e]+ HTTP/1\.[01](?:\r\n{_TOKEN}:[^\x00-\x08\x0a-\x1f\x7f]*)*"
)
"""A request head as RFC 9112 spells it: the request line, then header fields (a token,
a colon, a value of visible characters, spaces and tabs) — one match, no backtracking."""
_TRAILERS = re.compile(rf"(?:{_TOKEN}:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?")
_MAX_CHUNK_LINE = 4096
"""Longest chunk size line read, its extensions included."""
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_HEADS: dict[tuple[int, str], bytes] = {}
"""An answer's first bytes, up to its ``Content-Length`` value, by status and type."""
_SERVER_ERROR = b"500 Internal Server Error\n\nServer got itself in trouble"
_LINGER = 1.0
"""Seconds a refused client's further bytes are read and dropped before closing."""


@dataclass(slots=True)
class Answer:
    """A complete answer: status, body and its type, any further headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] | None = None


Handler = Callable[["Request"], "Answer | Awaitable[Answer | None]"]
Fallback = Callable[[], asyncio.Protocol]
"""Makes the protocol a connection is handed to (:class:`HttpServer`'s ``fallback``)."""


class Request:
    """One request, its body already read. Header names are lower-case."""

    __slots__ = (
        "_connection",
        "_query",
        "body",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "path",
        "streamed",
    )

    def __init__(
        self, connection: _Connection, method: str, target: str, headers: dict[str, str]
    ) -> None:
        self._connection = connection
        self.method = method
        self.path, _, query = target.partition("?")
        self._query: str | dict[str, str] = query
        self.headers = headers
        self.body = b""
        self.keep_alive = True
        self.http10 = False
        self.streamed = False

    @property
    def query(self) -> Mapping[str, str]:
        """The query parameters, decoded; the first of repeated ones wins."""
        query = self._query
        if isinstance(query, str):
            parsed: dict[str, str] = {}
            if query:  # most requests have none: parse_qsl's checks cost microseconds
                for key, value in parse_qsl(query, keep_blank_values=True):
                    parsed.setdefault(key, value)
            query = self._query = parsed
        return query

    @property
    def host(self) -> str:
        return self.headers.get("host", "")

    @property
    def disconnected(self) -> bool:
        """Whether the client has gone (or the server is closing the connection)."""
        return self._connection.closed

    def stream(self, status: int, headers: Mapping[str, str]) -> Stream:
        """Start a chunked answer; only from a streaming handler."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines.append("Transfer-Encoding: chunked\r\n\r\n")
        self.streamed = True
        self._connection.write("".join(lines).encode("latin-1"))
        return Stream(self._connection)


class Stream:
    """The body of a chunked answer, written piece by piece."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def write(self, data: bytes) -> None:
        if not data:
            return
        connection = self._connection
        if connection.closed:
            raise ConnectionResetError("the client went away")
        connection.write(b"%x\r\n%b\r\n" % (len(data), data))
        if connection.paused:
            await connection.drained()

    async def write_lines(self, lines: list[bytes]) -> None:
        """Write ``lines`` as one chunk, handed to the socket as they are (one ``writev``,
        no joined copy: a busy watch writes hundreds of kilobytes at a time)."""
        size = sum(map(len, lines))
        if not size:
            return
        connection = self._connection
        if connection.closed:
            raise ConnectionResetError("the client went away")
        connection.writelines([b"%x\r\n" % size, *lines, b"\r\n"])
        if connection.paused:
            await connection.drained()

    def finish(self) -> None:
        if not self._connection.closed:
            self._connection.write(b"0\r\n\r\n")


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, hands them to the handler, writes answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.paused = False
        self.streaming: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._continued = False
        self._reading = True
        self._scanned = 0
        self._request: Request | None = None
        self._length = 0
        self._chunks: bytearray | None = None
        self._chunk_left = -1
        """Bytes of the current chunk's data still to come; 0: its CRLF; -1: a size line."""
        self._trailers = False
        self.lingering = False
        self.last_read = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._wake_drain()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drain()
        if self.streaming is None and not self.closed:
            self._read_on()
            if self.buffer:
                self._serve()

    def _hold(self) -> None:
        """Read no further (the client pipelines faster than it reads its answers, or while
        one is computed)."""
        if self._reading and self.transport is not None:
            self.transport.pause_reading()
            self._reading = False

    def _read_on(self) -> None:
        if not self._reading and not self.closed and self.transport is not None:
            self.transport.resume_reading()
            self._reading = True

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    async def drained(self) -> None:
        if self.paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        if not self.closed and self.transport is not None:
            self.transport.writelines(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self.last_read = time.monotonic()
        self.buffer += data
        if self.streaming is None:
            self._serve()
        elif len(self.buffer) > _MAX_HEAD + self.server.max_body:
            self._hold()  # a client pipelining while its answer is computed: until it is sent

    def _serve(self) -> None:
        """Answer every complete request in the buffer, until one streams or the client's
        socket is full: then nothing more is read until it drains (what a client that
        pipelines and does not read its answers costs is bounded)."""
        while not self.closed and self.streaming is None:
            if self.server.closing:  # a connection accepted while the server closes
                self.close()
                return
            if self.paused:
                self._hold()
                return
            try:
                request = self._parse()
            except _Elsewhere:
                break  # handed over below, outside the except clause (see there)
            except ValueError as exc:
                status = 413 if isinstance(exc, _TooLarge) else 400
                text = f"{status}: {_REASONS[status]} ({exc})".encode()
                answer = Answer(status, text, "text/plain; charset=utf-8")
                too_large = self.server.too_large
                if isinstance(exc, _TooLarge) and exc.request is not None and too_large:
                    answer = too_large(exc.request)
                self._answer(None, answer, linger=isinstance(exc, _TooLarge))
                return
            if request is None:
                return
            try:
                result = self.server.handler(request)
            except Exception:
                log.exception("error handling request")
                result = Answer(500, _SERVER_ERROR, "text/plain; charset=utf-8")
            if isinstance(result, Answer):
                self._answer(request, result)
            else:
                task = asyncio.get_running_loop().create_task(self._stream(request, result))
                self.streaming = task
                self.server.handling.add(task)
                task.add_done_callback(self.server.handling.discard)
        else:
            return
        # Not within ``except _Elsewhere``: what the fallback's protocol does with the bytes
        # would run with that exception being handled, and an error it logs (aiohttp's, of a
        # malformed request) would name it, and this server's frames, as its context.
        self._hand_over()

    async def _stream(self, request: Request, streaming: Awaitable[Answer | None]) -> None:
        try:
            answer = await streaming
        except ConnectionError:
            self.close()
            answer = None
        except Exception:
            if request.streamed:  # the head is out: the client learns from the cut
                log.exception("error streaming an answer")
                self.close()
                answer = None
            else:
                log.exception("error handling request")
                answer = Answer(500, _SERVER_ERROR, "text/plain; charset=utf-8")
        finally:
            self.streaming = None
            self.last_read = time.monotonic()  # idle from its answer on, not its request
        if self.server.closing:
            request.keep_alive = False  # said in the answer: the client sends nothing more
        if answer is not None:
            self._answer(request, answer)
        if not request.keep_alive:
            self.close()  # at shutdown, a request the client pipelined is not started
        elif not self.paused:
            self._read_on()
            if self.buffer:
                self._serve()

    def _hand_over(self) -> None:
        """Give the connection, and what is buffered from its next request's first byte
        on, to a protocol of the server's fallback: every answer before it is written."""
        transport, fallback = self.transport, self.server.fallback
        assert transport is not None
        assert fallback is not None
        protocol = fallback()
        self.closed = True  # to this side: nothing more is read or written here
        self.server.connections.discard(self)
        data = bytes(self.buffer)
        self.buffer.clear()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not self._reading:
            transport.resume_reading()
            self._reading = True
        if data:
            protocol.data_received(data)

    def _answer(self, request: Request | None, answer: Answer, *, linger: bool = False) -> None:
        body = answer.body
        keep_alive = request is not None and request.keep_alive
        if (
            keep_alive
            and request is not None
            and not request.http10
            and not answer.headers
            and len(body) <= _JOIN_LIMIT
        ):
            # the common answer (a Job created, an object read): its head up to the length
            # is made once per status and type, and one formatting joins it all
            key = (answer.status, answer.content_type)
            start = _HEADS.get(key)
            if start is None:
                start = _HEADS[key] = (
                    f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}\r\n"
                    f"Content-Type: {answer.content_type}\r\nContent-Length: "
                ).encode("latin-1")
            if request.method == "HEAD":
                self.write(b"%b%d\r\n\r\n" % (start, len(body)))
            else:
                self.write(b"%b%d\r\n\r\n%b" % (start, len(body), body))
            return
        head = [
            f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}\r\n"
            f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n"
        ]
        if answer.headers:
            head += [f"{name}: {value}\r\n" for name, value in answer.headers.items()]
        if not keep_alive:
            head.append("Connection: close\r\n")
        elif request is not None and request.http10:
            head.append("Connection: keep-alive\r\n")
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        if request is not None and request.method == "HEAD":
            self.write(data)
        elif len(body) > _JOIN_LIMIT:
            self.writelines([data, body])  # one writev, no copy of a large body (a list)
        else:
            self.write(data + body)
        if linger and not self.closed:
            self.lingering = True
            self.buffer.clear()
            asyncio.get_running_loop().call_later(_LINGER, self.close)
        elif not keep_alive:
            self.close()

    def _parse(self) -> Request | None:
        """The next complete request in the buffer, or ``None`` until more arrives.

        Linear in what arrives however it is cut: the head is searched for only in bytes not
        searched yet, a parsed head waits for its body without being read again, and a
        chunked body's framing is consumed chunk by chunk (the buffer keeps only what is not
        parsed yet, the body what its chunks carried)."""
        request = self._request
        if request is None:
            request = self._parse_head()
            if request is None:
                return None
        buffer = self.buffer
        if self._chunks is not None:
            try:
                complete = self._read_chunks()
            except _TooLarge as exc:
                exc.request = request
                raise
            if not complete:
                self._continue(request)
                return None
            request.body = bytes(self._chunks)
            self._chunks = None
        else:
            stop = self._length
            if len(buffer) < stop:
                self._continue(request)
                return None
            with memoryview(buffer) as view:
                request.body = bytes(view[:stop])
            del buffer[:stop]
        self._request = None
        self._continued = False
        return request

    def _parse_head(self) -> Request | None:
        """The next request's head, taken from the buffer, with how its body is framed
        (``_length`` or ``_chunks``); ``None`` until the head is complete."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3), _MAX_HEAD + 4)
        if end < 0:
            if len(buffer) > _MAX_HEAD + 3:  # not a head's end cut after its first bytes
                self._refuse_head("request head too large")
            self._scanned = len(buffer)
            return None
        self._scanned = 0
        view = memoryview(buffer)  # slices of it are copied once, not twice
        try:
            head = str(view[:end], "latin-1")
        finally:
            view.release()  # a bytearray with exports cannot be resized
        if _HEAD.fullmatch(head) is None:
            self._refuse_head("malformed request head")
        lines = head.split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.lower()
            if name in headers:  # repeated: one list, as RFC 9110 joins them
                if self.server.fallback is not None:
                    raise _Elsewhere  # read as the fallback reads it (aiohttp: the first)
                headers[name] += ", " + value.strip()
            else:
                headers[name] = value.strip()
        request = Request(self, method, target, headers)
        connection = headers.get("connection")
        if version == "HTTP/1.1":
            request.keep_alive = connection is None or "close" not in _tokens(connection)
        else:  # HTTP/1.0 keeps a connection only when asked to, and is told it is kept
            request.keep_alive = connection is not None and _tokens(connection) == {"keep-alive"}
            request.http10 = True
        server = self.server
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if server.fallback is not None:
                raise _Elsewhere  # the head still in the buffer, for the fallback
            if coding.lower() != "chunked":
                raise ValueError(f"Transfer-Encoding {coding[:40]!r}: only chunked is read")
            if "content-length" in headers:
                raise ValueError("both Transfer-Encoding and Content-Length")
            if request.http10:  # RFC 9112 6.1: the framing is not to be trusted further
                request.keep_alive = False
            self._chunks = bytearray()
            self._chunk_left = -1
            self._trailers = False
        else:
            try:
                length = _content_length(headers.get("content-length", "0"))
            except ValueError as exc:
                self._refuse_head(str(exc))
            if length > server.max_body:
                if server.fallback is not None:
                    raise _Elsewhere
                raise _TooLarge(f"body of {length} bytes, at most {server.max_body}", request)
            if server.takes is not None and not server.takes(request):
                raise _Elsewhere
            self._length = length
        del buffer[: end + 4]
        self._request = request
        return request

    def _refuse_head(self, problem: str) -> NoReturn:
        """A head not taken: the fallback's to answer when there is one, else a 400."""
        if self.server.fallback is not None:
            raise _Elsewhere
        raise ValueError(problem)

    def _read_chunks(self) -> bool:
        """Take what has come of the chunked body into ``_chunks``, each byte once: a chunk's
        data as it comes, its size line and the trailer section once complete (searched for
        only in bytes not searched yet); whether the body is complete."""
        buffer = self.buffer
        body = self._chunks
        assert body is not None
        while True:
            left = self._chunk_left
            if left > 0:
                taken = buffer[:left]
                body += taken
                del buffer[: len(taken)]
                self._chunk_left = left = left - len(taken)
                if left:
                    return False
            if left == 0:  # a chunk's data ends with CRLF
                if len(buffer) < 2:
                    return False
                if buffer[:2] != b"\r\n":
                    raise ValueError("a chunk does not end where its size says")
                del buffer[:2]
                self._chunk_left = -1
            elif self._trailers:
                if buffer.startswith(b"\r\n"):
                    del buffer[:2]
                    return True
                end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3), _MAX_HEAD + 4)
                if end < 0:
                    if len(buffer) > _MAX_HEAD + 3:
                        raise ValueError("trailer section too large")
                    self._scanned = len(buffer)
                    return False
                self._scanned = 0
                if _TRAILERS.fullmatch(str(buffer[: end + 4], "latin-1")) is None:
                    raise ValueError("malformed trailer fields")
                del buffer[: end + 4]
                return True
            else:
                line_end = buffer.find(b"\r\n", max(0, self._scanned - 1), _MAX_CHUNK_LINE + 2)
                if line_end < 0:
                    if len(buffer) > _MAX_CHUNK_LINE + 1:  # not one cut between CR and LF
                        raise ValueError("chunk size line too long")
                    self._scanned = len(buffer)
                    return False
                self._scanned = 0
                size_line = _CHUNK_SIZE.fullmatch(buffer, 0, line_end)
                if size_line is None:
                    raise ValueError("bad chunk size line")
                size = int(size_line[1], 16)
                del buffer[: line_end + 2]
                if size == 0:
                    self._trailers = True
                elif len(body) + size > self.server.max_body:
                    raise _TooLarge(f"body larger than {self.server.max_body} bytes")
                else:
                    self._chunk_left = size

    def _continue(self, request: Request) -> None:
        """``100 Continue`` once, to an HTTP/1.1 client that expects it (RFC 9110 10.1.1: an
        HTTP/1.0 one's expectation is ignored)."""
        expect = request.headers.get("expect", "")
        if not self._continued and expect.lower() == "100-continue" and not request.http10:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._continued = True


class _Elsewhere(Exception):
    """The request at the buffer's start is the fallback's, from its first byte on."""


class _TooLarge(ValueError):
    def __init__(self, message: str, request: Request | None = None) -> None:
        super().__init__(message)
        self.request = request


def _tokens(value: str) -> set[str]:
    """The lower-cased tokens of a list-valued field (``Connection: keep-alive, Upgrade``)."""
    return {token.strip().lower() for token in value.split(",")}


def _content_length(value: str) -> int:
    """The length a ``Content-Length`` field gives: digits, or the same digits repeated
    (``5, 5``, from a repeated field) — never what ``int()`` alone would also take
    (``+5``, ``1_0``)."""
    if not (value.isdigit() and value.isascii()):
        lengths = {length.strip() for length in value.split(",")}
        if len(lengths) != 1:
            raise ValueError("Content-Length fields that disagree")
        value = lengths.pop()
        if not (value.isdigit() and value.isascii()):
            raise ValueError(f"bad Content-Length {value[:40]!r}")
    return int(value)


class HttpServer:
    """Listens on one address and hands every request to ``handler``."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        too_large: Callable[[Request], Answer] | None = None,
        keepalive_timeout: float | None = None,
        fallback: Fallback | None = None,
        takes: Callable[[Request], bool] | None = None,
    ) -> None:
        """``too_large`` answers a request whose body is over ``max_body`` (its body left
        unread, the connection then closed) where a plain-text ``413`` will not do;
        ``keepalive_timeout``: seconds a connection may wait idle for its next request;
        ``fallback``: what a connection is handed to at its first request that ``takes``
        does not take or that is not plain enough to be taken (see the module docstring);
        without one, every request is ``handler``'s."""
        self.handler = handler
        self.fallback = fallback
        self.takes = takes if fallback is not None else None
        self.max_body = max_body
        self.too_large = too_large
        self.keepalive_timeout = keepalive_timeout
        self._sweep: asyncio.TimerHandle | None = None
        self.connections: set[_Connection] = set()
        self.handling: set[asyncio.Task[None]] = set()
        """Every handler's coroutine still running, its client gone or not."""
        self.closing = False
        self._server: asyncio.AbstractServer | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> int:
        """Start listening, over TLS when given a context; the port (chosen by the system
        when ``port`` is 0). ``reuse_port``: ``SO_REUSEPORT``, shared with other processes."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl=tls,
        )
        if self.keepalive_timeout is not None:
            self._sweep = loop.call_later(self.keepalive_timeout / 2, self._close_idle)
        return int(self._server.sockets[0].getsockname()[1])

    def _close_idle(self) -> None:
        """Close the connections idle for ``keepalive_timeout``: checked every half of it
        (one timer for all, not one a request), so one is closed within 1.5 times it."""
        assert self.keepalive_timeout is not None
        quiet_since = time.monotonic() - self.keepalive_timeout
        for connection in list(self.connections):
            if connection.streaming is None and connection.last_read < quiet_since:
                connection.close()
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(self.keepalive_timeout / 2, self._close_idle)

    async def close(self, grace: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._server is not None:
            self._server.close()
            self._server = None
        self.closing = True  # what the clients pipelined behind those running is not started
        for connection in list(self.connections):
            if connection.streaming is None:
                connection.close()
        deadline = time.monotonic() + grace
        while self.handling:  # with those whose client has gone: they still work
            left = deadline - time.monotonic()
            if left <= 0:
                for stream in self.handling:
                    stream.cancel()
                await asyncio.wait(list(self.handling))
                break
            await asyncio.wait(list(self.handling), timeout=left)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
            connection.closed = True
