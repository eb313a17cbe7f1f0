"""The HTTP server's request reading under random and mutated requests, cut anywhere.

Requests are generated from a seeded random generator (``NEXUS_FUZZ_SEED`` replays another
run): one to four pipelined on a connection, with ``Content-Length`` or chunked bodies
(extensions, trailers), some over the body limit, some closing the connection; half are
then mutated byte by byte (bytes changed, inserted, removed, repeated, cut short). Each is
delivered whole, a byte at a time, and in pieces cut at random points, and checked against
h11, an independent RFC 9112 reader:

* the server raises nothing and answers the same, byte for byte, however it is cut;
* every request it hands on is the one h11 reads at that place (method, target, fields,
  body): it may refuse what h11 takes (it is stricter where framing could be read two
  ways), never take what h11 refuses, nor read a body other than the framing gives;
* it refuses with one ``400`` or ``413`` and closes, hands on no request past that, and
  answers each request it handed on once, in order;
* a valid request is always taken, and one with a body over the limit is ``413`` without
  reaching the handler.

A second driver sends cases over loopback sockets to a listening server whose handler is
sometimes a coroutine, so that pipelined requests also wait for an answer computed later.
A third gives the server a fallback that takes the connection at the first request it
does not take or would refuse: it then refuses nothing itself, answers what it takes as
without one, and the fallback receives the rest from that request's first byte, however
the stream is cut.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import zlib
from collections.abc import Awaitable
from dataclasses import dataclass, field

import h11
import pytest
from support.fuzzing import chunked, mutate

from nexus.core.httpserver import Answer, HttpServer, Request, _Connection

SEED = int(os.environ.get("NEXUS_FUZZ_SEED", "20261207"))
MAX_BODY = 600

_NAMES = ["Accept", "User-Agent", "X-Request-Id", "Authorization", "Cache-Control", "X-Trace"]
_VALUE_CHARS = bytes(range(0x21, 0x7F)) + b" \t"
_PATH_CHARS = b"abcxyz0123456789-._~%/?=&+:@!$'()*,;"
_INSERTS = [
    *(b"\r", b"\n", b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b"-", b"+", b"_"),
    *(b"0", b"9", b"f", b"x", b"\x00", b"\x7f", b"\xff", b"chunked", b"Content-Length: 3\r\n"),
]
"""Bytes that change framing when they land in the wrong place."""


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Case:
    raw: bytes
    mutated: bool
    cuts: list[int]
    valid_count: int = 0
    """For an unmutated case: the requests before any whose body is over the limit."""
    too_large: bool = False
    """For an unmutated case: whether a request's body is over the limit."""

    def __repr__(self) -> str:
        raw = self.raw if len(self.raw) <= 600 else self.raw[:600] + b"..."
        return f"Case({len(self.raw)} bytes, mutated={self.mutated}, cuts={self.cuts}: {raw!r})"

    def pieces(self, cuts: list[int]) -> list[bytes]:
        points = [0, *sorted(cuts), len(self.raw)]
        return [self.raw[a:b] for a, b in itertools.pairwise(points) if b > a]


def _case_name(name: str, rng: random.Random) -> bytes:
    return "".join(c.upper() if rng.random() < 0.3 else c.lower() for c in name).encode()


def valid_request(rng: random.Random, last: bool) -> tuple[bytes, int]:
    """One request, and the length of its body."""
    method = rng.choice([b"GET", b"POST", b"POST", b"PUT", b"HEAD", b"DELETE"])
    target = b"/" + bytes(rng.choice(_PATH_CHARS) for _ in range(rng.randrange(0, 30)))
    version = b"HTTP/1.0" if last and rng.random() < 0.1 else b"HTTP/1.1"
    lines = _case_name("Host", rng) + b": fuzz\r\n"
    for name in rng.sample(_NAMES, rng.randrange(0, 4)):
        value = bytes(rng.choice(_VALUE_CHARS) for _ in range(rng.randrange(1, 30)))
        value = value.strip(b" \t") or b"v"
        lines += _case_name(name, rng) + b":" + rng.choice([b" ", b"", b"  ", b"\t"]) + value
        lines += rng.choice([b"", b" ", b"\t"]) + b"\r\n"
    body = rng.randbytes(rng.choice([0, 0, 1, 2, 17, 300, MAX_BODY, MAX_BODY + 1, 2000]))
    framing = rng.choice(["length", "chunked", "none"] if not body else ["length", "chunked"])
    if version == b"HTTP/1.0" and framing == "chunked":
        framing = "length"
    if framing == "length":
        lines += _case_name("Content-Length", rng) + b": %d\r\n" % len(body)
    elif framing == "chunked":
        lines += _case_name("Transfer-Encoding", rng) + b": chunked\r\n"
    if rng.random() < 0.1:
        lines += b"Expect: 100-continue\r\n"
    if last and version == b"HTTP/1.1" and rng.random() < 0.3:
        lines += b"Connection: close\r\n"
    raw = b"%s %s %s\r\n%s\r\n" % (method, target, version, lines)
    raw += chunked(rng, body) if framing == "chunked" else body
    return raw, len(body)


def generate(rng: random.Random) -> Case:
    count = rng.choice([1, 1, 2, 3, 4])
    raw, valid, too_large = b"", 0, False
    for index in range(count):
        request, length = valid_request(rng, last=index == count - 1)
        raw += request
        if length > MAX_BODY:
            too_large = True
            break
        valid += 1
    case = Case(raw, mutated=False, cuts=[], valid_count=valid, too_large=too_large)
    if rng.random() < 0.5:
        case.raw, case.mutated = mutate(rng, case.raw, _INSERTS), True
    if len(case.raw) > 1:
        case.cuts = [rng.randrange(1, len(case.raw)) for _ in range(rng.randrange(1, 6))]
    return case


@dataclass
class Truth:
    """What h11 reads: the requests it takes, in order, and how reading ended."""

    requests: list[Seen] = field(default_factory=list)
    ending: str = "incomplete"
    """``incomplete``, ``closed`` (a request asked to close), ``invalid``, or
    ``no-host`` (h11 refuses an HTTP/1.1 request without ``Host``; the server does not
    ask for one)."""


def truth(raw: bytes) -> Truth:
    found = Truth()
    if not raw:  # h11 takes no data for the end of the stream
        return found
    reader = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    reader.receive_data(raw)
    current: Seen | None = None
    try:
        while True:
            event = reader.next_event()
            if isinstance(event, h11.Request):
                headers: dict[str, str] = {}
                for name, value in event.headers:
                    key = name.decode("latin-1")
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                current = Seen(event.method.decode(), event.target.decode(), headers, b"")
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                found.requests.append(current)
                reader.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                reader.send(h11.EndOfMessage())
                if h11.MUST_CLOSE in (reader.our_state, reader.their_state):
                    found.ending = "closed"
                    return found
                reader.start_next_cycle()
            elif event is h11.NEED_DATA:
                return found
            else:
                raise AssertionError(f"h11 gave {event!r}")
    except h11.RemoteProtocolError as exc:
        found.ending = "no-host" if "Host" in str(exc) else "invalid"
        return found


class _Transport(asyncio.Transport):
    """What a connection writes, kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closing, "written after close"
        self.written += data

    def writelines(self, data: object) -> None:
        for piece in data:  # type: ignore[attr-defined]
            self.write(piece)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answer(request: Request) -> Answer:
    return Answer(200, b"%d:%d" % (len(request.body), zlib.crc32(request.body)))


def deliver(pieces: list[bytes]) -> tuple[list[Seen], bytes, bool]:
    """Feed ``pieces`` to one connection: the requests handed on, what was written and
    whether the server closed the connection (or reads only to drop what comes, before
    closing it)."""
    seen: list[Seen] = []

    def handle(request: Request) -> Answer:
        seen.append(Seen(request.method, _target(request), dict(request.headers), request.body))
        return _answer(request)

    server = HttpServer(handle, max_body=MAX_BODY)
    connection = _Connection(server)
    transport = _Transport()
    connection.connection_made(transport)
    for piece in pieces:
        if transport.closing:
            break
        connection.data_received(piece)
    # an interim answer comes only while the body is still on its way
    written = bytes(transport.written).replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    return seen, written, transport.closing or connection.lingering


def _target(request: Request) -> str:
    query = request._query
    assert isinstance(query, str)  # not parsed yet: the query as it came
    return f"{request.path}?{query}" if query else request.path


def _comparable(seen: Seen) -> tuple[str, str, dict[str, str], bytes]:
    """h11 rewrites the two framing fields (``5, 5`` → ``5``, ``CHUNKED`` → ``chunked``);
    the rest must be the same."""
    headers = {
        k: v for k, v in seen.headers.items() if k not in ("content-length", "transfer-encoding")
    }
    path, _, query = seen.target.partition("?")
    return seen.method, f"{path}?{query}" if query else path, headers, seen.body


def judge(case: Case, seen: list[Seen], written: bytes, closed: bool) -> str | None:
    """Why the server's reading of ``case`` is wrong (``None``: it is right)."""
    expected = truth(case.raw)
    taken = len(seen)
    valid = [_comparable(s) for s in expected.requests][: case.valid_count]
    if not case.mutated and (taken != case.valid_count or valid != list(map(_comparable, seen))):
        # the generator's requests are valid: h11 takes them all, and so must the server
        return f"took {taken} of {case.valid_count} valid requests: {seen!r}"
    if expected.ending != "no-host" and taken > len(expected.requests):
        return f"took {taken} requests, h11 reads {len(expected.requests)} ({expected.ending})"
    for mine, theirs in zip(seen, expected.requests, strict=False):
        if _comparable(mine) != _comparable(theirs):
            return f"took {mine!r}, h11 reads {theirs!r}"
    for mine in seen:
        if len(mine.body) > MAX_BODY:
            return f"handed on a body of {len(mine.body)} bytes"
    answers = written.count(b"HTTP/1.1 ")
    refused = written.rsplit(b"HTTP/1.1 ", 1)[-1].startswith((b"400 ", b"413 "))
    if answers != taken + refused:
        return f"{answers} answers to {taken} requests taken (refused: {refused})"
    if refused and not closed:
        return "refused a request and kept the connection open"
    if not case.mutated and case.too_large and not refused:
        return "a body over the limit was not answered 413"
    return None


async def test_generated_requests_are_read_as_h11_reads_them() -> None:
    rng = random.Random(SEED)
    failures: list[str] = []
    kinds = {"mutated": 0, "valid": 0, "too large": 0, "refused": 0}
    for _ in range(3000):
        case = generate(rng)
        whole = deliver([case.raw])
        for cuts in (case.cuts, list(range(1, len(case.raw)))):  # random, and every byte
            if deliver(case.pieces(cuts)) != whole:
                failures.append(f"{case!r}: cut at {cuts[:20]} answers otherwise than whole")
        problem = judge(case, *whole)
        if problem is not None:
            failures.append(f"{case!r}: {problem}")
        kinds["mutated" if case.mutated else "valid"] += 1
        kinds["too large"] += case.too_large
        kinds["refused"] += b" 400 " in whole[1] or b" 413 " in whole[1]
        if len(failures) >= 5:
            break
    assert not failures, "\n".join(failures)
    # the generator reaches every kind of case, or the test proves less than it says
    assert min(kinds.values()) > 100, kinds


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1_0\r\n\r\n0123456789",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n",
    ],
)
def test_ambiguous_framing_is_refused(raw: bytes) -> None:
    seen, written, closed = deliver([raw])
    assert seen == []
    assert written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert closed


async def test_endless_chunk_framing_is_refused() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    endless = [head, b"1;"] + [b"x" * 4096] * 20  # a size line longer than any head
    seen, written, closed = deliver(endless)
    assert seen == []
    assert written.startswith(b"HTTP/1.1 400 ")
    assert closed


async def test_pipelined_requests_over_sockets_with_late_answers() -> None:
    """Cases over loopback, answered at once or by a coroutine a little later: every
    request the server takes is answered once, in the order sent."""
    rng = random.Random(SEED + 1)

    def handle(request: Request) -> Answer | Awaitable[Answer]:
        if rng.random() < 0.5:
            return _answer(request)

        async def later() -> Answer:
            await asyncio.sleep(rng.choice([0, 0, 0.001]))
            return _answer(request)

        return later()

    server = HttpServer(handle, max_body=MAX_BODY)
    port = await server.start("127.0.0.1", 0)
    try:
        for _ in range(150):
            case = generate(rng)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for piece in case.pieces(case.cuts):
                writer.write(piece)
                await writer.drain()
            received = b""
            try:
                while True:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.1)
                    if not chunk:
                        break
                    received += chunk
            except TimeoutError:
                pass  # incomplete: the server waits for the rest
            except ConnectionResetError:
                pass  # refused with data unread: the answer may be lost in the reset
            finally:
                writer.close()
            _, written, _ = deliver([case.raw])
            if received and not written.startswith(received[: len(written)]):
                pytest.fail(f"{case!r}: over a socket {received!r}, fed {written!r}")
            if not case.mutated and not case.too_large:
                assert received.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"") == written, case
    finally:
        await server.close(grace=0.5)


class _Handed(asyncio.Protocol):
    """A fallback's protocol: what it is given, kept."""

    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data


class _Switching(_Transport):
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


def _taken(request: Request) -> bool:
    """What the fuzzed server with a fallback takes: not DELETE, not a target with ``x``."""
    return request.method != "DELETE" and "x" not in request.path


def deliver_handing_over(pieces: list[bytes]) -> tuple[list[Seen], bytes, bytes | None]:
    """Feed ``pieces`` to one connection of a server with a fallback: the requests handed
    on, what it wrote, and what the fallback received (``None``: not handed over)."""
    seen: list[Seen] = []

    def handle(request: Request) -> Answer:
        seen.append(Seen(request.method, _target(request), dict(request.headers), request.body))
        return _answer(request)

    handed: list[_Handed] = []

    def fallback() -> _Handed:
        handed.append(_Handed())
        return handed[-1]

    server = HttpServer(handle, max_body=MAX_BODY, fallback=fallback, takes=_taken)
    connection = _Connection(server)
    transport = _Switching()
    transport.protocol = connection
    connection.connection_made(transport)
    for piece in pieces:
        if transport.closing:
            break
        protocol = transport.protocol
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(piece)
    assert len(handed) <= 1
    written = bytes(transport.written).replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
    return seen, written, bytes(handed[0].received) if handed else None


async def test_generated_requests_not_taken_are_handed_over_from_their_first_byte() -> None:
    """With a fallback the server refuses nothing itself: it answers the requests it takes,
    exactly as without one, up to the first it does not take or would refuse; the fallback
    receives the rest of the stream from that request's first byte, however it is cut."""
    rng = random.Random(SEED + 2)
    failures: list[str] = []
    kinds = {"handed over": 0, "all taken": 0, "cut at a refusal": 0}
    for _ in range(1500):
        case = generate(rng)
        whole = deliver_handing_over([case.raw])
        for cuts in (case.cuts, list(range(1, len(case.raw)))):
            if deliver_handing_over(case.pieces(cuts)) != whole:
                failures.append(f"{case!r}: cut at {cuts[:20]} handed over otherwise than whole")
        seen, written, handed = whole
        if b" 400 " in written or b" 413 " in written:
            failures.append(f"{case!r}: refused it itself, {written!r}")
        if handed is None:
            kinds["all taken"] += 1
            continue
        kinds["handed over"] += 1
        if not case.raw.endswith(handed):
            failures.append(f"{case!r}: handed over {handed!r}, not the stream's end")
            continue
        # what came before the hand-over is the requests it took, answered as without one
        before = case.raw[: len(case.raw) - len(handed)]
        if deliver([before]) != (seen, written, False):
            failures.append(f"{case!r}: before the hand-over, {seen!r} answered {written!r}")
        alone, refused, _ = deliver([handed])
        kinds["cut at a refusal"] += b" 400 " in refused or b" 413 " in refused
        if alone and all(map(_taken_seen, alone[:1])) and b" 413 " not in refused:
            framing = alone[0].headers.get("transfer-encoding")
            if framing is None and not _repeats_a_field(handed):
                failures.append(f"{case!r}: handed over {alone[0]!r}, which it takes")
        if len(failures) >= 5:
            break
    assert not failures, "\n".join(failures)
    assert min(kinds.values()) > 50, kinds


def _repeats_a_field(raw: bytes) -> bool:
    """Whether the head at the start of ``raw`` names a field twice (handed over: the
    fallback reads such a field as it does, not joined)."""
    lines = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    names = [line.partition(b":")[0].lower() for line in lines]
    return len(names) != len(set(names))


def _taken_seen(seen: Seen) -> bool:
    return seen.method != "DELETE" and "x" not in seen.target.partition("?")[0]
