"""CPU per call of the lean HTTP client (nexus.core.httpcalls): this tree's against the
client of another revision, on the answers of the hot paths.

    .venv/bin/python benchmarks/http_client.py --baseline REV [--calls 3000] [--pairs 3]
    .venv/bin/python benchmarks/http_client.py --baseline REV --callgrind

A stand-in server in a child process answers three kinds of call as the real servers do:
``job`` (a Job creation's POST, answered 201 with a Kubernetes API server's headers and a
1.3 KB Job), ``upload`` (a 16 KiB PUT, answered by S3 with an empty body) and ``chunked``
(a GET answered with a 4 KiB chunked body). The client, on one kept-alive connection
under uvloop, makes ``--calls`` calls of each kind, one after the other.

Timings alternate the two clients (A/B/A/B, ``--pairs`` pairs, after a warm-up) and
report CPU (process time, the server's excluded) and wall time per call, then the CPU of
reading an answer alone (no socket), for each client's connection and for aiohttp's
bundled parser; with
``--callgrind`` each client is also run under ``valgrind --tool=callgrind`` with
``--calls`` and with a fifth of it, and the instructions per call are the difference
divided by the difference in calls (start-up cancels out): deterministic, so comparable
on a busy machine. Prints a line per figure, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import uvloop

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("job", "upload", "chunked")
JOB = json.dumps(
    {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "run-0123456789abcdef",
            "namespace": "nexus-shard-0",
            "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "resourceVersion": "123456",
            "generation": 1,
            "creationTimestamp": "2026-11-30T12:00:00Z",
            "labels": {"nexus/run": "0123456789abcdef", "nexus/algorithm": "solver"},
            "annotations": {"nexus/request-id": "0f8fad5b-d9cb-469f-a165-70867728950e"},
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 300,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "algorithm",
                            "image": "registry.example/solver:1.4.2",
                            "env": [
                                {"name": "NEXUS_INPUT", "value": "https://s3.example/in/x"},
                                {"name": "NEXUS_RESULT", "value": "https://s3.example/out/x"},
                            ],
                            "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                        }
                    ],
                }
            },
        },
        "status": {},
    }
).encode()
ANSWERS = {
    b"POST": b"HTTP/1.1 201 Created\r\n"
    b"Audit-Id: 6d3c7a9e-4b1f-4c2a-9d8e-1f2a3b4c5d6e\r\n"
    b"Cache-Control: no-cache, private\r\n"
    b"Content-Type: application/json\r\n"
    b"X-Kubernetes-Pf-Flowschema-Uid: 2b3c4d5e-6f70-4812-9a3b-4c5d6e7f8091\r\n"
    b"X-Kubernetes-Pf-Prioritylevel-Uid: 3c4d5e6f-7081-4923-ab4c-5d6e7f809102\r\n"
    b"Date: Mon, 30 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(JOB), JOB),
    b"PUT": b"HTTP/1.1 200 OK\r\n"
    b'Etag: "5d41402abc4b2a76b9719d911017c592"\r\n'
    b"Server: SeaweedFS S3\r\n"
    b"X-Amz-Request-Id: 1732968000123456789\r\n"
    b"Date: Mon, 30 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Length: 0\r\n\r\n",
    b"GET": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Date: Mon, 30 Nov 2026 12:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (1024, b"x" * 1024) for _ in range(4))
    + b"0\r\n\r\n",
}
UPLOAD = b"r" * 16 * 1024


class StandIn(asyncio.Protocol):
    """Answers each request by its method, as soon as the whole request has come."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end]
            found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            length = int(found.group(1)) if found else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(ANSWERS[head.split(b" ", 1)[0]])


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StandIn, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()


def load(revision: str | None) -> ModuleType:
    """``nexus.core.httpcalls`` of this tree, or of ``revision`` (by ``git show``)."""
    if revision is None:
        from nexus.core import httpcalls

        return httpcalls
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:nexus/core/httpcalls.py"],
        check=True,
        capture_output=True,
    ).stdout
    path = Path(tempfile.gettempdir()) / f"httpcalls_{os.getpid()}_{revision[:12]}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(f"httpcalls_{revision[:12]}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    path.unlink()
    return module


CALLS = {
    "job": ("POST", "/apis/batch/v1/jobs", JOB, 201, len(JOB)),
    "upload": ("PUT", "/nexus/out/x", UPLOAD, 200, 0),
    "chunked": ("GET", "/nexus/in/x", b"", 200, 4096),
}


async def calls(client: Any, base: str, kind: str, count: int) -> None:
    method, path, body, status, length = CALLS[kind]
    for _ in range(count):
        answer = await client.call(method, base + path, body, idempotent=True)
        if (answer.status, len(answer.body)) != (status, length):
            raise RuntimeError(f"{kind}: unexpected answer {answer.status}")


async def timed(
    modules: dict[str, ModuleType], base: str, count: int, pairs: int
) -> dict[str, Any]:
    clients = {name: module.HttpCalls(limit=1, timeout=30.0) for name, module in modules.items()}
    cpu: dict[str, dict[str, list[float]]] = {n: {k: [] for k in KINDS} for n in clients}
    wall: dict[str, dict[str, list[float]]] = {n: {k: [] for k in KINDS} for n in clients}
    try:
        for client in clients.values():  # warm-up: connections, caches, the JIT-less paths
            for kind in KINDS:
                await calls(client, base, kind, max(100, count // 10))
        for _ in range(pairs):
            for name, client in clients.items():
                for kind in KINDS:
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    await calls(client, base, kind, count)
                    cpu[name][kind].append((time.process_time() - cpu0) / count * 1e6)
                    wall[name][kind].append((time.perf_counter() - wall0) / count * 1e6)
    finally:
        for client in clients.values():
            await client.close()
    return {"cpu_us": cpu, "wall_us": wall}


class Sink(asyncio.Transport):
    """Takes what a connection writes and drops it: for reading answers alone."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass


async def reading(modules: dict[str, ModuleType], count: int, pairs: int) -> dict[str, Any]:
    """µs of CPU to read one answer of each kind, without sockets: each client's own
    connection fed the answer whole, against aiohttp's bundled parser (llhttp too) kept
    for the connection, as its client would keep it, answer headers and body taken."""
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.http_parser import HttpResponseParser

    loop = asyncio.get_running_loop()
    readers: dict[str, Any] = {}
    opened = []
    for name, module in modules.items():
        client = module.HttpCalls(limit=1, timeout=30.0)
        host = client._host("http", "bench.invalid")
        connection = module._Connection(host)
        connection.connection_made(Sink())
        host.open += 1
        opened.append((client, connection))

        def read(raw: bytes, connection: Any = connection, host: Any = host) -> Any:
            waiter = loop.create_future()
            connection.send(b"GET / HTTP/1.1\r\n\r\n", waiter, False)
            connection.data_received(raw)
            host.idle.clear()
            return waiter.result()

        readers[name] = read
    aiohttp_parser = HttpResponseParser(ResponseHandler(loop), loop, 2**16)

    def read_aiohttp(raw: bytes) -> Any:
        (message, payload), *_ = aiohttp_parser.feed_data(raw)[0]
        body = payload.read_nowait()
        return message.code, body, {key.lower(): value for key, value in message.headers.items()}

    readers["aiohttp's parser"] = read_aiohttp
    figures: dict[str, dict[str, list[float]]] = {n: {k: [] for k in KINDS} for n in readers}
    for kind, method in zip(KINDS, (b"POST", b"PUT", b"GET"), strict=True):
        answer = ANSWERS[method]
        for _ in range(pairs):
            for name, read in readers.items():
                seconds = min(timeit.repeat(lambda: read(answer), number=count, repeat=3))  # noqa: B023
                figures[name][kind].append(seconds / count * 1e6)
    for client, connection in opened:
        connection.close()
        connection.connection_lost(None)
        await client.close()
    return figures


def callgrind(revision: str | None, port: int, count: int) -> dict[str, float]:
    """Instructions per call of each kind for one client, from runs of ``count`` and of a
    fifth of it (the difference cancels start-up and imports)."""
    small = max(1, count // 5)

    def instructions(counts: dict[str, int]) -> int:
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--worker", "--port", str(port),
            "--counts", json.dumps(counts),
        ]  # fmt: skip
        if revision is not None:
            command += ["--baseline", revision]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        found = re.search(r"Collected : (\d+)", done.stderr)
        assert found, done.stderr[-2000:]
        return int(found.group(1))

    base = instructions(dict.fromkeys(KINDS, small))
    return {
        kind: (instructions({**dict.fromkeys(KINDS, small), kind: count}) - base) / (count - small)
        for kind in KINDS
    }


async def worker(revision: str | None, port: int, counts: dict[str, int]) -> None:
    client = load(revision).HttpCalls(limit=1, timeout=600.0)
    try:
        for kind in KINDS:
            await calls(client, f"http://127.0.0.1:{port}", kind, counts[kind])
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="the revision whose client to compare with")
    parser.add_argument("--calls", type=int, default=3000, help="calls of each kind per run")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs of timed runs")
    parser.add_argument("--callgrind", action="store_true", help="count instructions too")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve())
        return
    if args.worker:
        uvloop.run(worker(args.baseline, args.port, json.loads(args.counts)))
        return

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        revisions: dict[str, str | None] = {"this tree": None}
        if args.baseline:
            revisions = {f"baseline {args.baseline}": args.baseline, **revisions}
        modules = {name: load(revision) for name, revision in revisions.items()}
        reference = min(timeit.repeat("sum(range(10**6))", number=10, repeat=5)) / 10 * 1e3
        print(f"reference: sum(range(10**6)) takes {reference:.1f} ms on this machine now")
        results: dict[str, Any] = {"calls": args.calls, "pairs": args.pairs}
        results["reference_sum_range_ms"] = round(reference, 2)
        results.update(uvloop.run(timed(modules, base, args.calls, args.pairs)))
        for figure in ("cpu_us", "wall_us"):
            for name in modules:
                for kind in KINDS:
                    runs = results[figure][name][kind]
                    shown = " ".join(f"{v:.1f}" for v in runs)
                    print(
                        f"{figure:7} {name:20} {kind:8} median {statistics.median(runs):6.1f}"
                        f" µs per call (runs, alternated: {shown})"
                    )
        results["reading_us"] = uvloop.run(reading(modules, args.calls * 5, args.pairs))
        for name, kinds in results["reading_us"].items():
            for kind, runs in kinds.items():
                shown = " ".join(f"{v:.2f}" for v in runs)
                print(
                    f"reading {name:20} {kind:8} median {statistics.median(runs):6.2f}"
                    f" µs per answer, no socket (runs, alternated: {shown})"
                )
        if args.callgrind:
            results["instructions"] = {}
            for name, revision in revisions.items():
                counted = callgrind(revision, port, args.calls)
                results["instructions"][name] = counted
                for kind, value in counted.items():
                    print(f"instructions {name:20} {kind:8} {value:10,.0f} per call")
        print(json.dumps(results))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(10)


if __name__ == "__main__":
    main()
