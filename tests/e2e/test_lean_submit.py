"""The scheduler's submits on the lean server, every other request on aiohttp, on one
connection: each answered as before and in order, the submits counted under their route.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import yarl
from harness import Servers
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.system import TOKEN, local_system, template

from nexus.core.lifecycle import ROUTER
from nexus_dev.cluster.emulators import ShardSpec

RUN = "/algorithm/v1.2/run/echo"
RUN_ROUTE = "/algorithm/v1.2/run/{algorithm}"
BULK = "/algorithm/v1.2/runs/echo"
BULK_ROUTE = "/algorithm/v1.2/runs/{algorithm}"


def _submit(parameters: dict[str, Any], token: str = TOKEN) -> bytes:
    body = orjson.dumps({"algorithmParameters": parameters})
    return (
        f"POST {RUN} HTTP/1.1\r\nHost: nexus\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """The next answer on the connection: status, headers (lower-case names), body (JSON
    decoded, when it is JSON)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if line)
    headers = {name.lower(): value for name, value in headers.items()}
    body = await reader.readexactly(int(headers["content-length"]))
    json = headers["content-type"].startswith("application/json")
    return int(head[0].split()[1]), headers, orjson.loads(body) if json else body


def _bulk(items: list[dict[str, Any]]) -> bytes:
    body = orjson.dumps({"runs": items})
    return (
        f"POST {BULK} HTTP/1.1\r\nHost: nexus\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _go_submit(query: str, accept: str) -> bytes:
    body = orjson.dumps({"algorithmParameters": {"go": True}})
    return (
        f"POST /algorithm/v1/run/echo{query} HTTP/1.1\r\nHost: nexus\r\n"
        f"Authorization: Bearer {TOKEN}\r\nAccept: {accept}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _answered(status: int, route: str = RUN_ROUTE) -> float:
    """How many submits were answered ``status``, as /metrics says."""
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "nexus_http_request_duration_seconds_count"
                and labels["route"] == route
                and labels["method"] == "POST"
                and labels["status"] == str(status)
            ):
                return sample.value
    return 0.0


async def test_submits_and_other_routes_share_a_connection_in_order(servers: Servers) -> None:
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[template("echo")]
    ) as system:
        assert system.schedulers[0].app[ROUTER].partial  # served as in production
        accepted, unauthorized = _answered(202), _answered(401)
        bulk_answered = _answered(200, BULK_ROUTE)
        url = yarl.URL(system.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            # pipelined: lean submits (v1.2, bulk, Go v1; two refused), then aiohttp's
            # routes, and a submit again (aiohttp's now: the connection is handed over)
            writer.write(
                _submit({"n": 1})
                + _bulk([{"algorithmParameters": {"n": 4}}, {"algorithmParameters": 5}])
                + _submit({"n": 2}, token="not-a-token")
                + _go_submit("", "application/json")
                + _go_submit("?dryRun=maybe", "text/plain")
                + b"GET /health/ready HTTP/1.1\r\nHost: nexus\r\n\r\n"
                + f"GET {RUN} HTTP/1.1\r\nHost: nexus\r\n\r\n".encode()
                + _submit({"n": 3})
                + _go_submit("?dryRun=maybe", "text/plain")
            )
            await writer.drain()
            answers = [await asyncio.wait_for(_answer(reader), 10) for _ in range(9)]
        finally:
            writer.close()
            await writer.wait_closed()
        # which server answered: aiohttp names itself, the lean server does not
        assert ["server" in headers for _, headers, _ in answers] == [False] * 5 + [True] * 4
        (first, _, one), (bulk, _, items), (refused, _, why), go, go_refused, *rest = answers
        assert (go[0], set(go[2])) == (202, {"requestId"})
        # as the Go scheduler wrote its errors, to a client that accepts only text/plain
        assert go_refused[0] == 400
        assert go_refused[1]["content-type"] == "text/plain; charset=utf-8"
        assert go_refused[2] == b"dryRun: expected true or false, got 'maybe'"
        (ready, _, health), (other, allow, no), third, go_refused_by_aiohttp = rest
        # and as aiohttp answers it
        assert go_refused_by_aiohttp[0] == go_refused[0]
        assert go_refused_by_aiohttp[2] == go_refused[2]
        assert go_refused_by_aiohttp[1]["content-type"] == go_refused[1]["content-type"]
        assert (first, set(one)) == (202, {"requestId"})
        assert bulk == 200
        assert set(items["runs"][0]) == {"requestId"}
        assert items["runs"][1]["error"] == "invalid_request", items  # judged alone
        assert refused == 401
        assert why["error"] == "unauthorized", why
        assert (ready, health) == (200, {"status": "ready"})
        assert (other, allow.get("allow"), no["error"]) == (405, "POST", "method_not_allowed")
        assert (third[0], set(third[2])) == (202, {"requestId"})
        assert (_answered(202) - accepted, _answered(401) - unauthorized) == (2, 1)
        assert _answered(200, BULK_ROUTE) - bulk_answered == 1
        ids = [one["requestId"], items["runs"][0]["requestId"], go[2]["requestId"]]
        for request_id in [*ids, third[2]["requestId"]]:
            status, run = await system.get(f"/algorithm/v1.2/metadata/echo/requests/{request_id}")
            assert status == 200
            assert run["requestId"] == request_id
