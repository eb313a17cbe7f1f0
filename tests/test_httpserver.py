"""The lean HTTP server spoken to byte by byte: framing, keep-alive, answers computed later,
streams, shutdown."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from nexus.core import httpserver
from nexus.core.httpserver import Answer, HttpServer, Request, _Connection


async def _stream_numbers(request: Request, count: int, done: asyncio.Event) -> None:
    stream = request.stream(200, {"Content-Type": "application/json"})
    try:
        for i in range(count):
            await stream.write(b"%d\n" % i)
            await asyncio.sleep(0)
        stream.finish()
    finally:
        done.set()


async def _stream_bytes(request: Request, chunks: int, done: asyncio.Event) -> None:
    """``chunks`` pieces of 64 KiB."""
    stream = request.stream(200, {"Content-Type": "application/octet-stream"})
    try:
        for _ in range(chunks):
            await stream.write(b"x" * 65536)
            await asyncio.sleep(0)
        stream.finish()
    finally:
        done.set()


class App:
    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.stream_done = asyncio.Event()
        self.release = asyncio.Event()
        self.later_done = 0

    def handle(self, request: Request) -> Answer | Awaitable[None]:
        self.seen.append(request)
        if request.path == "/boom":
            raise RuntimeError("boom")
        if request.path == "/stream":
            count = int(request.query.get("n", "3"))
            return _stream_numbers(request, count, self.stream_done)
        if request.path == "/bytes":
            return _stream_bytes(request, int(request.query["chunks"]), self.stream_done)
        if request.path == "/hold":
            return self._hold(request)
        if request.path == "/later":
            return self._later(request)
        if request.path == "/later-boom":
            return self._later_boom()
        if request.path == "/plain":  # no further headers: the head made once per status
            return Answer(201, b'{"created":' + request.body + b"}")
        return Answer(200, b"echo:" + request.body, headers={"X-Query": request.query.get("q", "")})

    async def _later(self, request: Request) -> Answer:
        """An answer that waits for :attr:`release` (a write to commit), then is sent."""
        await self.release.wait()
        self.later_done += 1
        return Answer(202, b"later:" + request.body)

    async def _later_boom(self) -> Answer:
        await asyncio.sleep(0)
        raise RuntimeError("boom, later")

    async def _hold(self, request: Request) -> None:
        stream = request.stream(200, {})
        await self.release.wait()
        stream.finish()


async def _started(
    *, max_body: int, keepalive_timeout: float | None = None
) -> tuple[App, HttpServer, int]:
    """A server answering with an :class:`App`, listening on a free loopback port."""
    app = App()
    server = HttpServer(app.handle, max_body=max_body, keepalive_timeout=keepalive_timeout)
    return app, server, await server.start("127.0.0.1", 0)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[App, HttpServer, int]]:
    app, server, port = await _started(max_body=1000)
    yield app, server, port
    await server.close(grace=0.5)


async def exchange(port: int, data: bytes, expect: int = 1) -> bytes:
    """Send ``data``, read until ``expect`` answers are complete or the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    try:
        while received.count(b"HTTP/1.1 ") < expect or not _complete(received):
            chunk = await asyncio.wait_for(reader.read(65536), 2)
            if not chunk:
                break
            received += chunk
    finally:
        writer.close()
    return received


def _complete(received: bytes) -> bool:
    """Whether the last answer in ``received`` is complete."""
    last = b"HTTP/1.1 " + received.rsplit(b"HTTP/1.1 ", 1)[-1]
    head, _, body = last.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:
        return body.endswith(b"0\r\n\r\n")
    length = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Length:")]
    return bool(length) and len(body) >= int(length[0].split(b":")[1])


async def test_keep_alive_and_pipelined_requests(served: tuple[App, HttpServer, int]) -> None:
    app, _, port = served
    requests = (
        b"POST /a?q=x%20y HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    received = await exchange(port, requests, expect=2)
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK\r\n")
    assert b"X-Query: x y\r\n" in first
    assert first.endswith(b"echo:abc")
    assert second.endswith(b"echo:")
    assert [r.path for r in app.seen] == ["/a", "/b"]
    assert app.seen[0].host == "h"


async def test_plain_answers_kept_alive_byte_for_byte(
    served: tuple[App, HttpServer, int],
) -> None:
    _, _, port = served
    requests = (
        b"POST /plain HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
        b"HEAD /plain HTTP/1.1\r\n\r\n"
        b"POST /plain HTTP/1.1\r\nContent-Length: 2\r\n\r\n22"
    )
    received = await exchange(port, requests, expect=3)
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: "
    assert received == (
        head + b'13\r\n\r\n{"created":1}'
        + head + b"12\r\n\r\n"  # HEAD: the length of the body it would have, no body
        + head + b'14\r\n\r\n{"created":22}'
    )  # fmt: skip
    closing = await exchange(port, b"POST /plain HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert closing == head + b'12\r\nConnection: close\r\n\r\n{"created":}'


async def test_chunked_body_and_expect_continue(served: tuple[App, HttpServer, int]) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"2\r\nhe\r\n3;ext=1\r\nllo\r\n")
    await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await reader.readexactly(10) == b"echo:hello"
    writer.close()


async def test_connection_close_head_and_http_1_0(served: tuple[App, HttpServer, int]) -> None:
    _, _, port = served
    closing = await exchange(port, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert b"Connection: close\r\n" in closing
    head = await exchange(port, b"HEAD /x HTTP/1.0\r\n\r\n")
    assert b"Content-Length: 5\r\n" in head
    assert head.endswith(b"\r\n\r\n")  # no body, and the connection closes (HTTP/1.0)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", b"413"),
        (b"GET /boom HTTP/1.1\r\n\r\n", b"500"),
    ],
)
async def test_bad_requests(
    served: tuple[App, HttpServer, int], request_bytes: bytes, status: bytes
) -> None:
    _, _, port = served
    received = await exchange(port, request_bytes)
    assert received.startswith(b"HTTP/1.1 " + status)


async def test_stream_then_next_request_on_the_same_connection(
    served: tuple[App, HttpServer, int],
) -> None:
    _, _, port = served
    received = await exchange(
        port, b"GET /stream?n=3 HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n", expect=2
    )
    streamed, after = received.split(b"HTTP/1.1 ")[1:]
    assert b"Transfer-Encoding: chunked\r\n" in streamed
    assert streamed.endswith(b"2\r\n0\n\r\n2\r\n1\n\r\n2\r\n2\n\r\n0\r\n\r\n")
    assert after.endswith(b"echo:")


async def test_slow_reader_holds_the_stream_back(served: tuple[App, HttpServer, int]) -> None:
    app, _, port = served
    # A small receive buffer, fixed (no autotuning, which takes megabytes on loopback), and
    # a stream far larger than it and the server's send buffer (4 MiB at most here, see
    # net.ipv4.tcp_wmem) together: the server can finish only by buffering what the client
    # has not read, which it must not do.
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=client, limit=1 << 16)
    writer.transport.pause_reading()  # type: ignore[attr-defined]
    chunks = 160  # 10 MiB
    writer.write(b"GET /bytes?chunks=%d HTTP/1.1\r\n\r\n" % chunks)
    await asyncio.sleep(0.3)  # the whole stream is written in milliseconds where not held
    assert not app.stream_done.is_set()  # the server waits for the client to read
    writer.transport.resume_reading()  # type: ignore[attr-defined]
    total = 0
    while not app.stream_done.is_set() or total < chunks << 16:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        if not chunk:
            break
        total += len(chunk)
    assert app.stream_done.is_set()
    assert total > chunks << 16  # all of it, with the chunks' framing
    writer.close()


async def test_client_going_away_ends_the_stream(served: tuple[App, HttpServer, int]) -> None:
    app, _, port = served
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream?n=100000000 HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.05)
    writer.transport.abort()  # type: ignore[attr-defined]
    await asyncio.wait_for(app.stream_done.wait(), 5)


async def test_close_waits_for_streams_then_cuts_them() -> None:
    _, server, port = await _started(max_body=10)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hold HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    started = asyncio.get_running_loop().time()
    await server.close(grace=0.2)
    assert 0.15 < asyncio.get_running_loop().time() - started < 2
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_an_answer_computed_later_holds_its_connection_not_others(
    served: tuple[App, HttpServer, int],
) -> None:
    app, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
        b"POST /plain HTTP/1.1\r\nContent-Length: 1\r\n\r\n2"
    )
    # another connection is answered while the first waits
    other = await exchange(port, b"POST /plain HTTP/1.1\r\nContent-Length: 1\r\n\r\n3")
    assert other.endswith(b'{"created":3}')
    with pytest.raises(TimeoutError):  # the pipelined request waits for the one before
        await asyncio.wait_for(reader.read(1), 0.1)
    app.release.set()
    head = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"
    assert await reader.readexactly(len(head) + 7) == head + b"later:1"
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 201 Created\r\n")
    assert await reader.readexactly(13) == b'{"created":2}'
    writer.close()


async def test_a_client_gone_while_its_answer_is_computed(
    served: tuple[App, HttpServer, int],
) -> None:
    """The work goes on to its end (a commit is neither lost nor done twice); only its
    answer has nowhere to go."""
    app, server, port = served
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n1")
    await writer.drain()
    await _until(lambda: bool(app.seen))
    writer.transport.abort()  # type: ignore[attr-defined]
    await _until(lambda: not server.connections)
    app.release.set()
    await _until(lambda: app.later_done > 0)
    assert app.later_done == 1


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 2 s")


async def test_an_answer_computed_later_that_raises_is_a_500(
    served: tuple[App, HttpServer, int],
) -> None:
    _, _, port = served
    received = await exchange(port, b"GET /later-boom HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n", 2)
    first, second = received.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"500 Internal Server Error\r\n")
    assert second.endswith(b"echo:")  # the connection serves on


async def test_a_client_pipelining_while_it_waits_is_read_no_further() -> None:
    app, server, port = await _started(max_body=10)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n1")
    flood = b"GET /x HTTP/1.1\r\n\r\n" * 40_000  # 840 kB
    writer.write(flood)
    await asyncio.sleep(0.3)
    (connection,) = server.connections
    # a head and a body's worth, and what the read that went past it brought (256 KiB)
    assert len(connection.buffer) < 64 * 1024 + 10 + 2 * 256 * 1024
    app.release.set()
    received = b""
    while received.count(b"HTTP/1.1 ") < 40_001:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        assert chunk
        received += chunk
    writer.close()
    await server.close(grace=0.5)


async def test_a_body_too_large_is_answered_then_read_and_dropped() -> None:
    """The client still sending the body it was refused for reads its 413, not a reset;
    the connection closes a second later."""
    app, server, port = await _started(max_body=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 3000000\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close\r\n" in head
    writer.write(b"x" * 3_000_000)  # the rest of the body, after the answer
    await asyncio.wait_for(writer.drain(), 2)
    started = asyncio.get_running_loop().time()
    rest = await asyncio.wait_for(reader.read(), 3)  # the answer's body, then the close
    assert rest.startswith(b"413: Request Entity Too Large")
    assert asyncio.get_running_loop().time() - started < 2
    assert app.seen == []
    writer.close()
    await server.close(grace=0.5)


async def test_idle_connections_are_closed_after_the_keepalive_timeout() -> None:
    _, server, port = await _started(max_body=10, keepalive_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"echo:")
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed within 0.3 s of quiet
    assert not server.connections
    writer.close()
    await server.close(grace=0.5)


async def test_a_connection_is_idle_from_its_last_answer_on() -> None:
    """An answer computed for longer than the keep-alive timeout does not make its
    connection look idle the moment it is sent."""
    app, server, port = await _started(max_body=10, keepalive_timeout=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n1")
    await asyncio.sleep(1.0)
    app.release.set()
    await reader.readuntil(b"later:1")
    server.keepalive_timeout = 0.5
    server._close_idle()  # a sweep right after the answer: 1 s after the request came
    assert len(server.connections) == 1
    writer.write(b"GET /x HTTP/1.1\r\n\r\n")
    assert (await reader.readuntil(b"echo:")).startswith(b"HTTP/1.1 200 OK")
    writer.close()
    await server.close(grace=0.5)


class _Fed(asyncio.Transport):
    """A connection's transport with no socket: what is written is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _feed(server: HttpServer, pieces: list[bytes]) -> bytes:
    """Hand ``pieces`` to one connection of ``server`` as reads; what it wrote."""
    connection = _Connection(server)
    transport = _Fed()
    connection.connection_made(transport)
    for piece in pieces:
        connection.data_received(piece)
    return bytes(transport.written)


def _tiny_chunks(body: bytes) -> bytes:
    return b"".join(b"1\r\n%b\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"


def _segments(data: bytes, size: int = 1448) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_a_body_of_one_byte_chunks_under_the_limit_is_taken() -> None:
    """Its framing is six times its size, and it is still a body under the limit."""
    taken: list[bytes] = []

    def handle(request: Request) -> Answer:
        taken.append(request.body)
        return Answer(200)

    body = bytes(range(256)) * 100  # 25,600 bytes, 153,605 framed
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    written = _feed(HttpServer(handle, max_body=30_000), _segments(head + _tiny_chunks(body)))
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert taken == [body]


async def test_a_chunked_body_is_parsed_once_however_it_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read parses only what is new: a body of N one-byte chunks arriving a segment
    at a time costs about N chunk size lines read, not N² / segment (which took a minute of
    CPU for 128 KiB)."""
    pattern = httpserver._CHUNK_SIZE
    read: list[int] = []

    class Counting:
        def fullmatch(self, buffer: bytearray, start: int, end: int) -> re.Match[bytes] | None:
            read.append(1)
            return pattern.fullmatch(buffer, start, end)

    monkeypatch.setattr(httpserver, "_CHUNK_SIZE", Counting())
    body = b"x" * 20_000
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = _segments(head + _tiny_chunks(body), 600)  # 201 reads
    written = _feed(HttpServer(lambda r: Answer(200), max_body=30_000), pieces)
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(read) == len(body) + 1  # each size line once
    read.clear()
    one_chunk = b"%x;%b\r\n%b\r\n0\r\n\r\n" % (len(body), b"e" * 4000, body)
    written = _feed(
        HttpServer(lambda r: Answer(200), max_body=30_000), _segments(head + one_chunk, 128)
    )
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(read) == 2  # not once a read while its data comes


async def test_a_client_that_pipelines_and_never_reads_is_read_no_further() -> None:
    """Answers wait in the server only up to the socket's high-water mark, then nothing
    more is read until the client reads; every request is answered in the end."""
    answer = b"m" * 20_000
    server = HttpServer(lambda request: Answer(200, answer, "text/plain"), max_body=10)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    count = 20_000  # 420 kB asked, 400 MB to answer
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n" * count)
    await asyncio.sleep(0.5)
    (connection,) = server.connections
    assert connection.transport is not None
    assert connection.transport.get_write_buffer_size() < 4 * 1024 * 1024
    received = 0
    while received < count * len(answer):
        chunk = await asyncio.wait_for(reader.read(1 << 22), 5)
        assert chunk
        received += chunk.count(b"m")
    assert received == count * len(answer)
    writer.close()
    await server.close(grace=0.5)


async def test_close_waits_for_an_answer_whose_client_has_gone() -> None:
    """Its work (a completion's commit) ends before the server's close returns, so what it
    uses (the store) is still open."""
    app, server, port = await _started(max_body=10)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n1")
    await writer.drain()
    await _until(lambda: bool(app.seen))
    writer.transport.abort()  # type: ignore[attr-defined]
    await _until(lambda: not server.connections)
    asyncio.get_running_loop().call_later(0.2, app.release.set)
    await server.close(grace=5)
    assert app.later_done == 1


async def test_close_starts_nothing_a_client_pipelined_behind_a_running_answer() -> None:
    app, server, port = await _started(max_body=10)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
        b"POST /later HTTP/1.1\r\nContent-Length: 1\r\n\r\n2"
    )
    await writer.drain()
    await _until(lambda: bool(app.seen))
    asyncio.get_running_loop().call_later(0.2, app.release.set)
    await server.close(grace=5)
    assert [request.body for request in app.seen] == [b"1"]
    assert app.later_done == 1
    received = await asyncio.wait_for(reader.read(), 2)  # the first answered, then closed
    assert received.startswith(b"HTTP/1.1 202 ") and received.endswith(b"later:1")
    assert b"\r\nConnection: close\r\n" in received  # said: the client sends nothing more
    writer.close()


async def test_connection_fields_are_lists() -> None:
    server = HttpServer(lambda request: Answer(200, b"ok"), max_body=10)
    kept = _feed(server, [b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"])
    assert b"Connection: keep-alive\r\n" in kept  # or an HTTP/1.0 client closes
    closing = _feed(server, [b"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n"])
    assert b"Connection: close\r\n" in closing
    twice = _feed(server, [b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n"])
    assert b"Connection: close\r\n" in twice
    chunked = b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert b"Connection: close\r\n" in _feed(server, [chunked + b"0\r\n\r\n"])  # RFC 9112 6.1


async def test_a_connection_made_while_the_server_closes_starts_nothing() -> None:
    seen: list[Request] = []

    def handle(request: Request) -> Answer:
        seen.append(request)
        return Answer(200)

    server = HttpServer(handle, max_body=10)
    server.closing = True  # as between close()'s start and its end: accepts may still land
    assert _feed(server, [b"GET / HTTP/1.1\r\n\r\n"]) == b""
    assert seen == []


_LONGEST_HEAD = b"GET / HTTP/1.1\r\nX: " + b"v" * (65536 - 19)
_LONGEST_SIZE_LINE = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 4094


@pytest.mark.parametrize(
    ("line", "rest"),
    [(_LONGEST_HEAD, b"\r\n\r\n"), (_LONGEST_SIZE_LINE, b"\r\nx\r\n0\r\n\r\n")],
)
async def test_a_longest_allowed_line_is_taken_however_it_is_cut(line: bytes, rest: bytes) -> None:
    """Cut anywhere in its line end too: the limit is on what the line holds, not on where
    a read ends; a byte more is refused."""
    server = HttpServer(lambda request: Answer(200), max_body=10)
    framed = line + rest
    for cut in range(len(line) - 1, len(line) + 4):
        written = _feed(server, [framed[:cut], framed[cut:]])
        assert written.startswith(b"HTTP/1.1 200 OK\r\n"), (cut, written[:60])
    longer = line + line[-1:] + rest
    assert _feed(server, [longer]).startswith(b"HTTP/1.1 400 ")


async def test_an_http_1_0_expectation_is_ignored() -> None:
    head = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    server = HttpServer(lambda request: Answer(200, request.body), max_body=10)
    assert _feed(server, [head]) == b""  # no 100 Continue: RFC 9110 10.1.1
    assert not _feed(server, [head, b"abc"]).startswith(b"HTTP/1.1 100")
