"""The HTTP client's answer reading under random and mutated answers, cut anywhere.

Answers are generated from a seeded random generator (``NEXUS_FUZZ_SEED`` replays another
run), some left valid, some mutated byte by byte, and delivered in pieces cut at random
points, then followed by an orderly close, a reset or silence. Each outcome is checked
against h11, an independent RFC 9112 reader: the client may refuse what h11 takes, but an
answer it returns must be the one h11 reads (never a body the framing does not give), it
raises nothing but :class:`CallFailed`, and a call is left waiting only when the answer is
incomplete, for the timeout sweep to end it. Two drivers: one feeds a connection's
protocol directly (thousands of cases, exact cut points), one goes through loopback
sockets and the real timeout (fewer cases, the kernel's cut points).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import Literal

import h11
import pytest
from support.fuzzing import chunked, mutate

from nexus.core.httpcalls import Answer, CallFailed, HttpCalls, _Connection, _Host

SEED = int(os.environ.get("NEXUS_FUZZ_SEED", "20261130"))
End = Literal["close", "reset", "silence"]
Truth = tuple[int, bytes] | Literal["invalid", "incomplete"]

_NAMES = ["Content-Type", "Date", "Audit-Id", "ETag", "Server", "Cache-Control", "X-Amz-Id"]
_VALUE_CHARS = bytes(range(0x21, 0x7F)) + b" \t"
_INSERTS = [b"\r", b"\n", b"\r\n", b" ", b"-", b"0", b"f", b";", b":", b",", b"\x00", b"\xff"]


@dataclass
class Case:
    method: str
    raw: bytes
    end: End
    cuts: list[int]
    mutated: bool
    expected: tuple[int, bytes, dict[str, str]] | None = None
    """For a valid answer: status, body and headers, or ``None`` when it is incomplete."""

    def __repr__(self) -> str:
        raw = self.raw if len(self.raw) <= 400 else self.raw[:400] + b"..."
        return f"Case({self.method} {len(self.raw)} bytes, end={self.end}, cuts={self.cuts}, mutated={self.mutated}: {raw!r})"

    def pieces(self) -> list[bytes]:
        points = [0, *sorted(self.cuts), len(self.raw)]
        return [self.raw[a:b] for a, b in itertools.pairwise(points) if b > a]


def _case_name(name: str, rng: random.Random) -> bytes:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in name).encode()


def _header_lines(rng: random.Random, count: int) -> tuple[bytes, dict[str, str]]:
    lines, found = b"", {}
    for name in rng.sample(_NAMES, count):
        raw_value = bytes(rng.choice(_VALUE_CHARS) for _ in range(rng.randrange(1, 40)))
        value = raw_value.strip(b" \t") or b"v"
        lines += _case_name(name, rng) + b":" + rng.choice([b" ", b"", b"  "]) + value + b"\r\n"
        found[name.lower()] = value.decode()
    return lines, found


def valid_answer(rng: random.Random) -> Case:
    method = rng.choice(["GET", "GET", "POST", "PUT", "HEAD"])
    version = b"HTTP/1.0" if rng.random() < 0.15 else b"HTTP/1.1"
    raw = b""
    if version == b"HTTP/1.1":
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            lines, _ = _header_lines(rng, rng.randrange(0, 2))
            raw += b"HTTP/1.1 %d Interim\r\n%s\r\n" % (rng.choice([100, 102, 103]), lines)
    status = rng.choice([200, 201, 204, 304, 404, 409, 429, 500, 503])
    body = rng.randbytes(rng.choice([0, 1, 2, 17, 300, 5000]))
    framing = rng.choice(
        ["length", "chunked", "close"] if version == b"HTTP/1.1" else ["length", "close"]
    )
    bodiless = method == "HEAD" or status in (204, 304)
    lines, headers = _header_lines(rng, rng.randrange(0, 5))
    if framing == "length":
        lines += _case_name("Content-Length", rng) + b": %d\r\n" % len(body)
        headers["content-length"] = str(len(body))
    elif framing == "chunked":
        lines += _case_name("Transfer-Encoding", rng) + b": chunked\r\n"
        headers["transfer-encoding"] = "chunked"
    if rng.random() < 0.2:
        word = rng.choice(["close", "keep-alive"])
        lines += b"Connection: %s\r\n" % word.encode()
        headers["connection"] = word
    raw += b"%s %d Status\r\n%s\r\n" % (version, status, lines)
    if not bodiless:
        if framing == "chunked":
            raw += chunked(rng, body)
        else:
            raw += body
    end: End = rng.choice(["close", "reset", "silence"])
    complete = bodiless or framing != "close" or end == "close"
    return Case(
        method=method,
        raw=raw,
        end=end,
        cuts=[],
        mutated=False,
        expected=(status, b"" if bodiless else body, headers) if complete else None,
    )


def generate(rng: random.Random) -> Case:
    case = valid_answer(rng)
    if rng.random() < 0.5:
        case.raw, case.mutated, case.expected = mutate(rng, case.raw, _INSERTS), True, None
    case.cuts = (
        [rng.randrange(1, len(case.raw)) for _ in range(rng.randrange(0, 6))]
        if len(case.raw) > 1
        else []
    )
    return case


def truth(case: Case) -> Truth:
    """What h11 reads in ``case``: the final answer's status and body, or why none."""
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method=case.method, target="/", headers=[("Host", "fuzz")]))
    reader.send(h11.EndOfMessage())
    try:
        reader.receive_data(case.raw)
        if case.end == "close":
            reader.receive_data(b"")
        status, body = 0, b""
        while True:
            event = reader.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return "incomplete"
            elif event is h11.PAUSED:
                return "invalid"  # a 101: the rest is another protocol
    except h11.RemoteProtocolError:
        return "invalid"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def judge(case: Case, outcome: Answer | BaseException | None) -> str | None:
    """Why ``outcome`` is wrong for ``case`` (``None``: it is right). An outcome of
    ``None`` is a call still waiting after all was delivered."""
    seen = truth(case)
    if case.expected is not None and seen != case.expected[:2]:
        return f"h11 reads {_short(seen)} in a valid answer"  # the generator is wrong
    if isinstance(outcome, BaseException):
        if not isinstance(outcome, CallFailed):
            return f"raised {outcome!r}"
        if not case.mutated and case.expected is not None:
            return f"a valid answer failed: {outcome}"
        return None
    if outcome is None:
        if case.end != "silence":
            return "still waiting after the connection ended"
        if isinstance(seen, tuple) and not case.mutated:
            return f"still waiting for a complete answer {_short(seen)}"
        return None
    got = (outcome.status, outcome.body)
    if case.expected is not None and (*got, dict(outcome.headers)) != case.expected:
        return f"answered {_short((*got, outcome.headers))}, expected {_short(case.expected)}"
    if seen == "incomplete":
        return f"answered {_short(got)} where h11 reads no complete answer"
    if isinstance(seen, tuple) and got != seen:
        return f"answered {_short(got)} where h11 reads {_short(seen)}"
    return None  # h11 refuses what llhttp takes: no framing to compare with


class Transport(asyncio.Transport):
    """Stands in for a socket: keeps what is written, notes a close."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def feed(
    calls: HttpCalls, host: _Host, method: str, pieces: list[bytes], end: End
) -> Answer | BaseException | None:
    """One call on a fresh connection whose answer arrives as ``pieces``, then ``end``.
    The connection is closed afterwards and its outcome returned (``None``: waiting)."""
    connection = _Connection(host)
    transport = Transport()
    connection.connection_made(transport)
    host.open += 1
    waiter: asyncio.Future[Answer] = calls.loop.create_future()
    connection.deadline = time.monotonic() + 60
    calls.busy.add(connection)
    connection.send(
        b"%s / HTTP/1.1\r\nHost: fuzz\r\n\r\n" % method.encode(), waiter, method == "HEAD"
    )
    lost = False
    for piece in pieces:
        if transport.closing:  # the client gave up on the connection: nothing more is read
            break
        connection.data_received(piece)
    if not transport.closing and end != "silence":
        connection.connection_lost(None if end == "close" else ConnectionResetError(104, "reset"))
        lost = True
    outcome: Answer | BaseException | None = None
    if waiter.done():
        outcome = waiter.exception() or waiter.result()
    else:
        assert connection in calls.busy, "a waiting call out of the timeout sweep's sight"
        connection.fail(CallFailed("no answer (as the sweep does)"))
        waiter.exception()
    if not lost:
        connection.close()
        connection.connection_lost(None)  # as the event loop reports the close it was asked
    return outcome


async def test_random_answers_fed_in_random_pieces() -> None:
    rng = random.Random(SEED)
    calls = HttpCalls(limit=1, timeout=60.0)
    host = calls._host("http", "fuzz.invalid")
    counts: dict[str, int] = {}
    try:
        for index in range(4000):
            case = generate(rng)
            outcome = feed(calls, host, case.method, case.pieces(), case.end)
            problem = judge(case, outcome)
            assert problem is None, f"seed {SEED} case {index}: {problem}\n{case!r}"
            kind = "answer" if isinstance(outcome, Answer) else "failed" if outcome else "waiting"
            key = f"{'mutated' if case.mutated else 'valid'} {kind}"
            counts[key] = counts.get(key, 0) + 1
    finally:
        await calls.close()
    assert host.open == 0 and not host.idle
    # the generator reaches every outcome, or the test proves less than it says
    assert {"valid answer", "valid failed", "mutated answer", "mutated failed"} <= set(counts)


HEAD = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "x"\r\n\r\nhello'
ANSWERS = [
    HEAD,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello",
]


@pytest.mark.parametrize("raw", ANSWERS)
async def test_an_answer_split_byte_by_byte_reads_as_a_whole(raw: bytes) -> None:
    calls = HttpCalls(limit=1, timeout=60.0)
    host = calls._host("http", "fuzz.invalid")
    try:
        whole = feed(calls, host, "GET", [raw], "close")
        split = feed(calls, host, "GET", [raw[i : i + 1] for i in range(len(raw))], "close")
    finally:
        await calls.close()
    assert isinstance(whole, Answer) and whole.body == b"hello"
    assert split == whole


@pytest.mark.parametrize(
    ("raw", "method", "body"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", "GET", b""),
        (b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n', "GET", b""),
        (HEAD[: HEAD.index(b"hello")], "HEAD", b""),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD", b""),
    ],
)
async def test_a_bodiless_answer_needs_no_end_of_connection(
    raw: bytes, method: str, body: bytes
) -> None:
    """Complete with its head, byte by byte and with the connection kept open."""
    calls = HttpCalls(limit=1, timeout=60.0)
    host = calls._host("http", "fuzz.invalid")
    try:
        answer = feed(calls, host, method, [raw[i : i + 1] for i in range(len(raw))], "silence")
    finally:
        await calls.close()
    assert isinstance(answer, Answer) and answer.body == body


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4000001\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # read to the close
    ],
)
async def test_no_body_over_64_mib_is_read_however_framed(head: bytes) -> None:
    calls = HttpCalls(limit=1, timeout=60.0)
    host = calls._host("http", "fuzz.invalid")
    try:
        outcome = feed(
            calls, host, "GET", [head, bytes(32 * 1024**2), bytes(32 * 1024**2 + 1)], "close"
        )
    finally:
        await calls.close()
    assert isinstance(outcome, CallFailed) and "too large" in str(outcome)


@pytest.mark.slow
async def test_random_answers_over_sockets_end_within_the_timeout() -> None:
    """Through the whole client and loopback sockets, the server writing the pieces as
    they were cut: every call ends (answer or :class:`CallFailed`) within its timeout."""
    rng = random.Random(SEED + 1)
    cases: list[Case] = []
    while len(cases) < 150:
        case = generate(rng)
        if not re.search(rb"HTTP/[0-9.]+ 3", case.raw):  # redirects are aiohttp's to follow
            cases.append(case)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            case = cases[int(request.split(b" ")[1][1:])]
            for piece in case.pieces():
                writer.write(piece)
                await writer.drain()
                for _ in range(2):  # let the client read this piece on its own
                    await asyncio.sleep(0)
            if case.end == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if case.end == "silence":
                await reader.read()  # until the client gives up and closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=len(cases))
    port = server.sockets[0].getsockname()[1]
    timeout = 2.0
    calls = HttpCalls(limit=len(cases), timeout=timeout)

    async def one(index: int, case: Case) -> Answer | BaseException:
        call = calls.call(case.method, f"http://127.0.0.1:{port}/{index}")
        try:
            return await asyncio.wait_for(call, timeout + 2.0)
        except TimeoutError as exc:
            return AssertionError(f"case {index} hung past the timeout: {exc!r}")
        except Exception as exc:
            return exc

    try:
        outcomes = await asyncio.gather(*(one(i, case) for i, case in enumerate(cases)))
    finally:
        await calls.close()
        server.close()
        await server.wait_closed()
    for index, (case, outcome) in enumerate(zip(cases, outcomes, strict=True)):
        if (
            case.end == "silence"
            and isinstance(outcome, CallFailed)
            and "no answer" in str(outcome)
        ):
            problem = judge(case, None)  # it waited: for an incomplete answer only
        else:
            problem = judge(case, outcome)
        assert problem is None, f"seed {SEED + 1} case {index}: {problem}\n{case!r}"
