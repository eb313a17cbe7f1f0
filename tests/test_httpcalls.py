"""The simulated pods' HTTP client against servers that answer in every way HTTP allows."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import trustme
from aiohttp import web

from nexus.core.httpcalls import CallFailed, HttpCalls

Answer = Callable[[bytes], bytes | None]  # request bytes -> raw answer (None: say nothing)


class RawServer:
    """A TCP server that answers each request with whatever ``answer`` returns."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                raw = self.answer(request)
                if raw is None:
                    continue
                writer.write(raw)
                await writer.drain()
                lowered = raw.lower()
                framed = b"content-length" in lowered or b"chunked" in lowered
                if b"connection: close" in lowered or not framed:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


Serve = Callable[[Answer], Awaitable[tuple[RawServer, str]]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> tuple[RawServer, str]:
        raw = RawServer(answer)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return raw, f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()


def ok(body: bytes = b"hi", extra: bytes = b"") -> Answer:
    return lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_keep_alive_reuses_one_connection_and_sends_the_request(serve: Serve) -> None:
    server, base = await serve(ok(b'{"x":1}'))
    calls = HttpCalls(limit=4, timeout=2.0)
    try:
        for _ in range(3):
            assert await calls.request("GET", f"{base}/in/x?sig=a%2Fb") == (200, b'{"x":1}')
        status, _ = await calls.request(
            "POST", f"{base}/done", b'{"a":1}', {"Authorization": "Bearer t"}
        )
    finally:
        await calls.close()
    assert status == 200
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /in/x?sig=a%2Fb HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length" not in server.requests[0]
    post = server.requests[3]
    assert post.startswith(b"POST /done HTTP/1.1\r\n")
    assert b"Authorization: Bearer t\r\n" in post
    assert post.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: t\r\n\r\n", b""),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            b"ok",
        ),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", b"until the end"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
async def test_answer_framings(serve: Serve, raw: bytes, body: bytes) -> None:
    _, base = await serve(lambda _: raw)
    calls = HttpCalls(limit=4, timeout=2.0)
    try:
        status, answer = await calls.request("GET", f"{base}/")
        again = await calls.request("GET", f"{base}/")
    finally:
        await calls.close()
    assert status >= 200
    assert answer == body
    assert again == (status, body)


async def test_answer_in_pieces(serve: Serve) -> None:
    whole = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    class Slow(RawServer):
        async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for i in range(len(whole)):
                writer.write(whole[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
            writer.close()

    slow = Slow(ok())
    server = await asyncio.start_server(slow.handle, "127.0.0.1", 0)
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        port = server.sockets[0].getsockname()[1]
        assert await calls.request("GET", f"http://127.0.0.1:{port}/") == (200, b"hello")
    finally:
        await calls.close()
        server.close()


async def test_connection_close_opens_a_new_connection(serve: Serve) -> None:
    server, base = await serve(ok(b"x", b"Connection: close\r\n"))
    calls = HttpCalls(limit=4, timeout=2.0)
    try:
        for _ in range(3):
            assert await calls.request("GET", base) == (200, b"x")
    finally:
        await calls.close()
    assert server.connections == 3


async def test_stale_connection_is_retried_for_idempotent_calls_only(serve: Serve) -> None:
    server, base = await serve(ok(b"x"))
    calls = HttpCalls(limit=4, timeout=2.0)
    try:
        assert await calls.request("GET", base) == (200, b"x")
        # the server closes its end of the kept-alive connection; the client has not noticed
        server.writers[0].transport.abort()
        assert await calls.request("PUT", base, b"r") == (200, b"x")
        assert server.connections == 2
        # a POST is not sent again ...
        server.writers[1].transport.abort()
        with pytest.raises(CallFailed, match="disconnected before answering"):
            await calls.request("POST", base, b"p")
        # ... unless the caller says it is harmless
        assert await calls.request("GET", base) == (200, b"x")
        server.writers[-1].transport.abort()
        answer = await calls.call("POST", base, b"p", idempotent=True)
        assert (answer.status, answer.body) == (200, b"x")
    finally:
        await calls.close()


async def test_limit_per_host_queues_callers(serve: Serve) -> None:
    server, base = await serve(ok(b"x"))
    calls = HttpCalls(limit=2, timeout=5.0)
    try:
        answers = await asyncio.gather(*(calls.request("GET", f"{base}/{i}") for i in range(20)))
    finally:
        await calls.close()
    assert answers == [(200, b"x")] * 20
    assert server.most_open <= 2


async def test_close_fails_the_calls_in_flight_and_waiting_and_those_after(serve: Serve) -> None:
    server, base = await serve(lambda _: None)  # never answers
    calls = HttpCalls(limit=1, timeout=30.0)
    in_flight = asyncio.create_task(calls.request("GET", f"{base}/a"))
    waiting = asyncio.create_task(calls.request("GET", f"{base}/b"))
    for _ in range(500):  # until the first call is sent, for 5 s at most
        if server.requests:
            break
        await asyncio.sleep(0.01)
    await calls.close()
    for task in (in_flight, waiting):
        with pytest.raises(CallFailed, match="closed"):
            await asyncio.wait_for(task, 5)
    with pytest.raises(CallFailed, match="closed"):
        await calls.request("GET", f"{base}/c")
    await asyncio.sleep(0.05)
    assert server.connections == 1  # the waiting call opened none of its own
    assert server.open == 0  # and nothing was left open


async def test_no_answer_times_out(serve: Serve) -> None:
    _, base = await serve(lambda _: None)
    calls = HttpCalls(limit=1, timeout=0.2)
    try:
        with pytest.raises(CallFailed, match=r"no answer within 0\.2 s"):
            await calls.request("GET", base)
        # the slot is free again: the next caller is not stuck behind the timed-out one
        with pytest.raises(CallFailed, match="no answer"):
            await calls.request("GET", base)
    finally:
        await calls.close()


async def test_a_connection_that_never_opens_times_out() -> None:
    """A listener whose backlog is full drops further handshakes, as a host dropping
    packets does: connecting counts against the call's timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    first = socket.create_connection(("127.0.0.1", port))  # fills the backlog
    calls = HttpCalls(limit=1, timeout=0.3)
    try:
        with pytest.raises(CallFailed, match=r"cannot connect .* within 0\.3 s"):
            await asyncio.wait_for(calls.request("GET", f"http://127.0.0.1:{port}/"), 10)
    finally:
        await calls.close()
        first.close()
        listener.close()


async def test_refused_and_malformed(serve: Serve) -> None:
    _, base = await serve(lambda _: b"HTTP/1.1 abc\r\n\r\n")
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        with pytest.raises(CallFailed, match="malformed answer"):
            await calls.request("GET", base)
        with pytest.raises(CallFailed, match="cannot connect"):
            await calls.request("GET", "http://127.0.0.1:1/")
    finally:
        await calls.close()


HEAD = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n-6\r\nhello\r\n0\r\n\r\n", "chunk size"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", "chunk size"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", "chunk size"),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", "chunk size"),
        (
            HEAD + b"Transfer-Encoding: chunked\r\n\r\n1" + b"0" * 17 + b"\r\n",
            "Chunk size overflow",
        ),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", "after chunk data"),
        (HEAD + b"Content-Length: -1\r\n\r\nhi", "Content-Length"),
        (HEAD + b"Content-Length: 0_2\r\n\r\nhi", "Content-Length"),
        (HEAD + b"Content-Length: +2\r\n\r\nhi", "Content-Length"),
        (HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nhi!", "Content-Length"),
        (HEAD + b"Content-Length: 2, 3\r\n\r\nhi!", "Content-Length"),
        # RFC 9110 §8.6 lets a recipient reject a repeated length even when the values
        # agree; no server of ours repeats it, and llhttp rejects it
        (HEAD + b"Content-Length: 2, 2\r\n\r\nhi", "Content-Length"),
        (HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi", "Content-Length"),
        (HEAD + b"Content-Length: 99999999999\r\n\r\nhi", "too large"),
        (HEAD + b"Content-Length: 99999999999999999999999\r\n\r\nhi", "Content-Length overflow"),
        # RFC 9112 §6.3 item 3: Transfer-Encoding beside Content-Length "ought to be
        # handled as an error" (request smuggling, response splitting)
        (
            HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "Content-Length",
        ),
        (
            HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "Content-Length",
        ),
        # obsolete line folding (RFC 9112 §5.2)
        (HEAD + b"Transfer-Encoding:\r\n chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", "header value"),
        (HEAD + b"X-Note: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", "header value"),
        (HEAD + b"Content-Length : 2\r\n\r\nhi", "header field"),
        (HEAD + b"X-Note: a\x00b\r\nContent-Length: 2\r\n\r\nhi", "header value"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nhi", "status"),
        (b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nhi", "status 600"),
        (b"HTTP/1.1 099 Before\r\nContent-Length: 2\r\n\r\nhi", "status 99"),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", "CR"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
            "switching protocols",
        ),
        (HEAD + b"X-Big: " + b"x" * 70_000, "head too large"),
    ],
)
async def test_an_answer_framed_wrong_fails_the_call(
    serve: Serve, raw: bytes, problem: str
) -> None:
    """Never a wrong body taken for the answer, nor a loop that never ends."""
    _, base = await serve(lambda _: raw)
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        with pytest.raises(CallFailed, match=f"malformed answer: .*{problem}"):
            await asyncio.wait_for(calls.request("GET", f"{base}/"), 5)
    finally:
        await calls.close()


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: CHUNKED\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        HEAD + b"Content-Length:  2  \r\n\r\nhi",
    ],
)
async def test_chunked_last_frames_the_body(serve: Serve, raw: bytes) -> None:
    """Chunked as the last transfer coding frames the body (RFC 9112 §6.3 item 4); the
    other codings are not undone, as before."""
    _, base = await serve(lambda _: raw)
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        assert await calls.request("GET", f"{base}/") == (200, b"hi")
        assert await calls.request("GET", f"{base}/") == (200, b"hi")
    finally:
        await calls.close()


async def test_a_body_read_to_the_close_and_cut_by_a_reset_is_no_answer() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"\r\n" + b'{"metadata": {"ui')
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not an orderly end

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        with pytest.raises(CallFailed, match="server disconnected"):
            await calls.request("GET", f"http://127.0.0.1:{port}/")
    finally:
        await calls.close()
        server.close()


async def test_redirects_go_through_aiohttp() -> None:
    async def handle(request: web.Request) -> web.Response:
        if request.path == "/old":
            raise web.HTTPFound("/new")
        return web.Response(body=b"moved here")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    calls = HttpCalls(limit=2, timeout=2.0)
    try:
        assert await calls.request("GET", f"http://127.0.0.1:{port}/old") == (200, b"moved here")
    finally:
        await calls.close()
        await runner.cleanup()


async def test_tls_with_a_context_and_the_answers_headers() -> None:
    """https goes over the lean client when it is given a context that trusts the server;
    the answer's headers come back with lower-case names."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("shard.example").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    raw = RawServer(
        lambda _: b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}"
    )
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    calls = HttpCalls(limit=2, timeout=5.0, tls=client_context, server_hostname="shard.example")
    try:
        for _ in range(2):
            answer = await calls.call("POST", f"https://127.0.0.1:{port}/jobs", b"{}")
            assert (answer.status, answer.body, answer.headers["retry-after"]) == (429, b"{}", "7")
        assert raw.connections == 1  # kept alive over TLS
        # a certificate for another name is refused
        wrong = HttpCalls(limit=1, timeout=5.0, tls=client_context, server_hostname="other.example")
        try:
            with pytest.raises(CallFailed, match="certificate"):
                await wrong.call("GET", f"https://127.0.0.1:{port}/")
        finally:
            await wrong.close()
    finally:
        await calls.close()
        server.close()


def by_request(answers: dict[bytes, bytes]) -> Answer:
    """Answers chosen by the request line's first word and path (``b"HEAD /a"``)."""
    return lambda request: answers[b" ".join(request.split(b" ", 2)[:2])]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_an_answer_to_head_ends_with_its_head(serve: Serve, raw: bytes) -> None:
    """HEAD's answer announces a body it does not carry; the connection, read afresh,
    serves the next call."""
    server, base = await serve(
        by_request({b"HEAD /a": raw, b"GET /b": HEAD + b"Content-Length: 4\r\n\r\nbody"})
    )
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        answer = await calls.call("HEAD", f"{base}/a")
        assert (answer.status, answer.body) == (200, b"")
        assert await calls.request("GET", f"{base}/b") == (200, b"body")
        assert await calls.request("HEAD", f"{base}/a") == (200, b"")
    finally:
        await calls.close()
    assert server.connections == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_204_and_304_have_no_body_whatever_their_head_says(serve: Serve, raw: bytes) -> None:
    server, base = await serve(
        by_request({b"GET /a": raw, b"GET /b": HEAD + b"Content-Length: 1\r\n\r\nb"})
    )
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        status, body = await calls.request("GET", f"{base}/a")
        assert (status in (204, 304), body) == (True, b"")
        assert await calls.request("GET", f"{base}/b") == (200, b"b")
    finally:
        await calls.close()
    assert server.connections == 1


async def test_interim_answers_are_skipped_with_their_headers(serve: Serve) -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nLocation: /jobs/1\r\nContent-Length: 2\r\n\r\n{}"
    )
    server, base = await serve(lambda _: raw)
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        for _ in range(2):
            answer = await calls.call("POST", f"{base}/jobs", b"{}")
            assert (answer.status, answer.body) == (201, b"{}")
            assert dict(answer.headers) == {"location": "/jobs/1", "content-length": "2"}
    finally:
        await calls.close()
    assert server.connections == 1


async def test_trailer_fields_are_not_headers(serve: Serve) -> None:
    raw = (
        HEAD
        + b"Transfer-Encoding: chunked\r\nX-A: head\r\n\r\n2\r\nhi\r\n0\r\nX-A: trailer\r\nX-B: t\r\n\r\n"
    )
    _, base = await serve(lambda _: raw)
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        answer = await calls.call("GET", f"{base}/")
    finally:
        await calls.close()
    assert (answer.body, answer.headers["x-a"], "x-b" in answer.headers) == (b"hi", "head", False)


@pytest.mark.parametrize(
    "after",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nother",  # an answer nobody asked for
        b"garbage",
    ],
)
async def test_bytes_after_an_answer_end_the_connection_not_the_answer(
    serve: Serve, after: bytes
) -> None:
    server, base = await serve(lambda _: HEAD + b"Content-Length: 2\r\n\r\nhi" + after)
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        assert await calls.request("GET", f"{base}/") == (200, b"hi")
        assert await calls.request("GET", f"{base}/") == (200, b"hi")
    finally:
        await calls.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        HEAD + b"Connection: close\r\nContent-Length: 10\r\n\r\nhello",
        HEAD + b"Transfer-Encoding: gzip\r\n\r\nhello",  # no chunked: never taken whole
        HEAD + b"Content-Le",
    ],
)
async def test_an_answer_cut_by_an_orderly_close_is_no_answer(serve: Serve, raw: bytes) -> None:
    _, base = await serve(lambda _: raw)  # the stand-in closes after writing these
    calls = HttpCalls(limit=1, timeout=2.0)
    try:
        with pytest.raises(CallFailed, match="server disconnected"):
            await calls.request("GET", f"{base}/")
    finally:
        await calls.close()
