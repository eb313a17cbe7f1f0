"""The lean HTTP server with a fallback: the requests it does not take, and every request
after them on their connection, are another server's, which receives their bytes exactly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable

import pytest
from aiohttp import web

from nexus.core.httpserver import Answer, HttpServer, Request, _Connection, _Elsewhere

LEAN = b"POST /lean HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
LATER = b"POST /later HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy"
OTHER = b"GET /other?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"
LEAN_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\nlean:abc"
)


class Recorder(asyncio.Protocol):
    """A fallback protocol that keeps what it is given."""

    made: list[Recorder] = []

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.received = bytearray()
        Recorder.made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += data


class Lean:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    def handle(self, request: Request) -> Answer | Awaitable[Answer]:
        self.seen.append(request.path)
        self.started.set()
        if request.path == "/later":
            return self._later(request)
        return Answer(200, b"lean:" + request.body)

    async def _later(self, request: Request) -> Answer:
        await self.release.wait()
        return Answer(202, b"later:" + request.body)

    @staticmethod
    def takes(request: Request) -> bool:
        return request.method == "POST" and request.path in ("/lean", "/later")


def _server(lean: Lean, fallback: type[asyncio.Protocol] = Recorder) -> HttpServer:
    return HttpServer(lean.handle, max_body=1000, fallback=fallback, takes=lean.takes)


class _Fed(asyncio.Transport):
    """A connection's transport with no socket: what is written is kept, its protocol can
    be replaced, and whether it reads is known."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


def _feed(server: HttpServer, pieces: list[bytes]) -> tuple[_Fed, Recorder | None]:
    """Hand ``pieces`` as reads to one connection of ``server`` (to whichever protocol
    holds its transport then): its transport, and the fallback's protocol if it has one."""
    Recorder.made.clear()
    connection = _Connection(server)
    transport = _Fed()
    transport.set_protocol(connection)
    connection.connection_made(transport)
    for piece in pieces:
        protocol = transport.get_protocol()
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(piece)
    assert len(Recorder.made) <= 1
    return transport, Recorder.made[0] if Recorder.made else None


async def test_the_first_request_not_taken_hands_the_connection_over_however_cut() -> None:
    """Cut at every byte: the lean request is answered, and the fallback receives every
    byte from the first request not taken on, the lean ones after it included."""
    data = LEAN + OTHER + LEAN
    for cut in range(len(data) + 1):
        lean = Lean()
        transport, recorder = _feed(_server(lean), [data[:cut], data[cut:]])
        assert transport.written == LEAN_ANSWER, cut
        assert recorder is not None, cut
        assert recorder.transport is transport
        assert recorder.received == OTHER + LEAN, cut
        assert lean.seen == ["/lean"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /lean HTTP/1.1\r\n\r\n", id="another-method"),
        pytest.param(b"HEAD /lean HTTP/1.1\r\n\r\n", id="head"),
        pytest.param(b"POST /lean/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n", id="another-path"),
        pytest.param(b"POST /lean HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", id="too-large"),
        pytest.param(b"POST /lean HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", id="bad-length"),
        pytest.param(b"POST /lean HTTP/1.1\r\nbad header\r\n\r\n", id="malformed"),
        pytest.param(
            b"POST /lean HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            id="chunked",
        ),
        pytest.param(b"GET /" + b"x" * 70_000, id="head-too-large"),
        pytest.param(
            b"POST /lean HTTP/1.1\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            id="repeated-field",
        ),
    ],
)
async def test_what_the_lean_server_would_refuse_is_the_fallbacks(request_bytes: bytes) -> None:
    """Its own 400s, 413s and 405s are never answered: the fallback answers as it does."""
    lean = Lean()
    transport, recorder = _feed(_server(lean), [LEAN + request_bytes])
    assert transport.written == LEAN_ANSWER
    assert recorder is not None
    assert recorder.received == request_bytes
    assert lean.seen == ["/lean"]


async def test_handed_over_only_once_every_answer_before_is_written() -> None:
    lean = Lean()
    server = _server(lean)
    transport, recorder = _feed(server, [LATER + OTHER])
    assert recorder is None  # the lean answer is computed: the rest waits
    assert transport.written == b""
    lean.release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert transport.written.endswith(b"\r\n\r\nlater:xy")
    assert len(Recorder.made) == 1
    assert Recorder.made[0].received == OTHER
    assert not server.connections  # the lean server's no more: not closed by it


async def test_reading_held_while_an_answer_is_computed_is_resumed_when_handed_over() -> None:
    """The fallback reads what the client still sends (it would wait for ever else)."""
    lean = Lean()
    big = b"POST /other HTTP/1.1\r\nContent-Length: 70000\r\n\r\n" + b"z" * 70_000
    transport, recorder = _feed(_server(lean), [LATER, big])
    assert recorder is None
    assert not transport.reading  # the client pipelines more than a request: held
    lean.release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert transport.reading
    assert Recorder.made[0].received == big


async def test_a_closing_server_hands_nothing_over() -> None:
    """A request pipelined behind one running when the server closes is not started, by
    either server: the lean answer says the connection closes, and it does."""
    lean = Lean()
    server = _server(lean)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(LATER + OTHER)
    await writer.drain()
    await asyncio.wait_for(lean.started.wait(), 2)
    Recorder.made.clear()
    closing = asyncio.create_task(server.close(grace=2))
    await asyncio.sleep(0.05)
    lean.release.set()
    await closing
    answer = await asyncio.wait_for(reader.read(), 2)  # to the end: closed
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(b"later:xy")
    assert Recorder.made == []
    writer.close()


class Witness(Recorder):
    """A fallback protocol that notes the exception being handled when it is called."""

    handling: list[BaseException | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Witness.handling.append(sys.exc_info()[1])
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        Witness.handling.append(sys.exc_info()[1])
        super().data_received(data)


async def test_the_fallback_is_not_called_while_an_exception_is_handled() -> None:
    """An error the fallback logs (aiohttp: a malformed request) names no exception of
    this server as its context."""
    Witness.handling.clear()
    lean = Lean()
    transport, recorder = _feed(_server(lean, Witness), [LEAN + OTHER, LEAN])
    assert transport.written == LEAN_ANSWER
    assert recorder is not None
    assert recorder.received == OTHER + LEAN
    # what another test left in this thread's exception state may show here; none of the
    # lean server's own exceptions may
    assert len(Witness.handling) == 3
    assert not any(isinstance(e, _Elsewhere) for e in Witness.handling)


async def _answer(request: web.BaseRequest) -> web.Response:
    body = await request.read()
    return web.Response(text=f"aiohttp:{request.method}:{request.path_qs}:{body.decode()}")


@pytest.fixture
async def aiohttp_fallback() -> AsyncIterator[tuple[Lean, HttpServer, web.Server, int]]:
    """A lean server whose fallback is aiohttp's low-level server."""
    fallback = web.Server(_answer, access_log=None)
    lean = Lean()
    server = HttpServer(lean.handle, max_body=1000, fallback=fallback, takes=lean.takes)
    port = await server.start("127.0.0.1", 0)
    yield lean, server, fallback, port
    await server.close(grace=0.5)
    fallback.pre_shutdown()
    await fallback.shutdown(1.0)


async def test_lean_and_aiohttp_answers_in_order_on_one_connection(
    aiohttp_fallback: tuple[Lean, HttpServer, web.Server, int],
) -> None:
    """Pipelined: a lean request computed later, one for aiohttp, then a lean one again
    (aiohttp's, the connection being its own now), each answered in order."""
    lean, _, fallback, port = aiohttp_fallback
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(LATER + OTHER + LEAN)
    await writer.drain()
    await asyncio.sleep(0.05)
    lean.release.set()
    first = await reader.readuntil(b"later:xy")
    assert first.startswith(b"HTTP/1.1 202 Accepted\r\n")
    second = await reader.readuntil(b"aiohttp:GET:/other?q=1:")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Server: Python" in second  # aiohttp's own answer
    third = await reader.readuntil(b"aiohttp:POST:/lean:abc")
    assert third.startswith(b"HTTP/1.1 200 OK\r\n")
    assert lean.seen == ["/later"]
    assert len(fallback.connections) == 1
    # still kept alive, by aiohttp
    writer.write(OTHER)
    assert (await reader.readuntil(b"aiohttp:GET:/other?q=1:")).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()


async def test_handed_over_connections_are_shut_down_by_their_server(
    aiohttp_fallback: tuple[Lean, HttpServer, web.Server, int],
) -> None:
    _, server, fallback, port = aiohttp_fallback
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(OTHER)
    await reader.readuntil(b"aiohttp:GET:/other?q=1:")
    await server.close(grace=0.5)  # the lean server's close leaves it to aiohttp
    writer.write(OTHER)
    await reader.readuntil(b"aiohttp:GET:/other?q=1:")
    fallback.pre_shutdown()
    await fallback.shutdown(1.0)
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by aiohttp
    writer.close()
    await writer.wait_closed()
