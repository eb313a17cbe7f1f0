"""Small results kept with their checkpoint, large ones in S3: both readable from resultUri,
and the small ones from a tag's listing too (``?include=result``).

Through the real receiver, scheduler, PostgreSQL, SeaweedFS and the local cluster: the
simulated pods report a small result inside their completion and PUT a large one; the
receiver refuses an inline result over its limit (413) and stores nothing, so the run is
still completed the other way; the scheduler serves an inline result only from a link it
signed, unaltered and unexpired.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
from harness import Servers
from support.system import SIGNING_KEY, System, local_system, template

from nexus.core.signing import Signer
from nexus.scheduler import batches
from nexus_dev.cluster.emulators import ShardSpec
from receiver.settings import ReceiverSection

SIGNER = Signer((SIGNING_KEY,))


async def stored_result(system: System, request_id: str) -> tuple[bytes | None, str | None]:
    """(result_inline, result_uri) of a run, as the checkpoint holds them."""
    connection = await asyncpg.connect(system.postgres_dsn)
    try:
        row = await connection.fetchrow(
            "SELECT result_inline, result_uri FROM runs WHERE id = $1::uuid", request_id
        )
    finally:
        await connection.close()
    assert row is not None
    inline = row["result_inline"]
    return (None if inline is None else bytes(inline)), row["result_uri"]


async def read(system: System, url: str) -> tuple[int, Any]:
    async with system.session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.mark.parametrize("mode", ["simulated", "process"])  # process: the algorithm SDK
async def test_small_results_inline_and_large_ones_in_s3_are_both_readable(
    servers: Servers, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode=mode)],  # type: ignore[arg-type]
        templates=[template("echo")],
    ) as system:
        small = {"score": 0.93, "label": "héllo", "items": list(range(50))}
        large = {"blob": "x" * (300 * 1024)}  # over the 256 KiB kept inline
        small_id = await system.submit("echo", {"algorithmParameters": small, "tag": "mix"})
        large_id = await system.submit("echo", {"algorithmParameters": large, "tag": "mix"})

        answer = await system.wait_for("echo", small_id)
        assert answer["status"] == "COMPLETED", answer
        inline, location = await stored_result(system, small_id)
        assert inline is not None and location is None, (inline, location)
        link = answer["resultUri"]
        assert link.startswith(system.balancer_url), link
        assert f"/results/echo/requests/{small_id}/content?" in link, link
        assert await read(system, link) == (200, small)
        assert not [k for k in system.bucket.keys() if small_id in k and "results" in k]  # type: ignore[union-attr]  # noqa: SIM118

        answer = await system.wait_for("echo", large_id)
        assert answer["status"] == "COMPLETED", answer
        inline, location = await stored_result(system, large_id)
        assert inline is None and location is not None, location
        assert "X-Amz-Signature=" in answer["resultUri"], answer
        assert await read(system, answer["resultUri"]) == (200, large)

        # a listing asked for results carries the inline one itself, the other by its link
        listing = "/algorithm/v1.2/results/echo/tags/mix"
        for query in ("?include=result", "?include=result&limit=10"):  # streamed, and a page
            status, listed, _ = await system.call("GET", listing + query)
            assert status == 200, listed
            by_id = {run["requestId"]: run for run in listed}
            assert by_id[small_id]["result"] == small, query
            assert by_id[small_id]["resultUri"], query
            assert "result" not in by_id[large_id], query
            assert "X-Amz-Signature=" in by_id[large_id]["resultUri"], query
        status, plain, _ = await system.call("GET", listing)
        assert status == 200 and all("result" not in run for run in plain), plain
        # with results, a page holds RESULTS_PAGE runs at most, whatever limit asks, and
        # its Link names the next; a streamed listing is read that many at a time
        monkeypatch.setattr(batches, "RESULTS_PAGE", 1)
        status, first, headers = await system.call("GET", listing + "?include=result&limit=10")
        assert status == 200 and len(first) == 1 and "Link" in headers, first
        following = headers["Link"][1 : headers["Link"].index(">")]
        following = following.removeprefix(system.balancer_url)
        status, second, headers = await system.call("GET", following)
        assert status == 200 and len(second) == 1 and "Link" not in headers, second
        assert {run["requestId"] for run in first + second} == {small_id, large_id}
        status, streamed, _ = await system.call("GET", listing + "?include=result")
        assert status == 200 and [run["requestId"] for run in streamed] == [
            run["requestId"] for run in first + second
        ]
        status, refused, _ = await system.call("GET", listing + "?include=input")
        assert status == 400 and "include" in refused["message"], refused

        # only the link the scheduler signed opens the result: not altered, not expired
        signature = dict(parse_qsl(urlsplit(link).query))["signature"]
        forged = "A" + signature[1:] if signature[0] != "A" else "B" + signature[1:]
        other = link.replace(small_id, large_id)
        path = urlsplit(link).path
        expired = system.balancer_url + SIGNER.sign_path(path, 10, now=time.time() - 60)
        for case, url in (
            ("signature altered", with_query(link, signature=forged)),
            ("expiry moved", with_query(link, expires=str(int(time.time()) + 10**6))),
            ("another run's path", other),
            ("expired", expired),
            ("unsigned", link.split("?")[0]),
        ):
            status, body = await read(system, url)
            assert status == 403 and body["error"] == "forbidden", (case, status, body)
        # a link signed anew by any pod's key works until it expires
        fresh = (await system.result("echo", small_id))["resultUri"]
        assert await read(system, fresh) == (200, small)


@pytest.mark.parametrize("limit", [64])
async def test_a_result_over_the_limit_is_refused_and_the_run_completes_by_the_put(
    servers: Servers, limit: int
) -> None:
    async with local_system(
        servers,
        templates=[template("echo")],
        receiver=ReceiverSection(max_inline_result=limit),
    ) as system:
        parameters = {"text": "y" * 200}  # inline under 256 KiB, over this receiver's 64 B
        request_id = await system.submit("echo", {"algorithmParameters": parameters})
        answer = await system.wait_for("echo", request_id)
        assert answer["status"] == "COMPLETED", answer
        inline, location = await stored_result(system, request_id)
        assert inline is None and location is not None
        assert await read(system, answer["resultUri"]) == (200, parameters)
        logs = str(system.kubernetes_state(request_id))
        assert "refused the result inline as too large" in logs, logs


async def test_inline_results_bad_input_is_refused_and_nothing_is_stored(
    servers: Servers,
) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],  # no pod: completions come from here
        templates=[template("echo")],
    ) as system:
        request_id = await system.submit("echo", {"algorithmParameters": {"n": 1}})
        path = f"/algorithm/v1.2/complete/echo/requests/{request_id}"
        auth = {"Authorization": f"Bearer {SIGNER.run_token('echo', request_id)}"}

        async def post(**options: Any) -> tuple[int, Any]:
            headers = {**auth, **options.pop("headers", {})}
            status, body, _ = await system.call(
                "POST", path, base=system.receiver_url, token=None, headers=headers, **options
            )
            return status, body

        too_large = {"result": {"blob": "z" * (256 * 1024)}}
        not_json = {"data": b'{"result": {"a": 1', "headers": {"Content-Type": "application/json"}}
        located = {"json": {"result": 1, "sasUri": "https://r.example/x"}}
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("over the limit", {"json": too_large}, 413, "262144"),
            ("declared JSON, not JSON", not_json, 400, "not valid JSON"),
            ("with a location", located, 400, "result"),
            ("with a cause", {"json": {"result": 1, "cause": "Broken"}}, 400, "result"),
        ]
        for case, options, status, names in cases:
            got, body = await post(**options)
            assert got == status, (case, got, body)
            assert set(body) == {"error", "message"} and names in body["message"], (case, body)
            assert await stored_result(system, request_id) == (None, None), case
            assert (await system.result("echo", request_id))["status"] in ("BUFFERED", "RUNNING")

        # still completable: by the PUT path (no result, the default location) ...
        got, body = await post(json={"cause": None, "message": None, "sasUri": None})
        assert (got, body["status"]) == (200, "COMPLETED"), body
        inline, location = await stored_result(system, request_id)
        assert inline is None and location is not None and location.endswith(request_id)
        # ... and a late inline result does not change the finished run
        got, body = await post(json={"result": {"late": True}})
        assert (got, body["status"]) == (200, "COMPLETED"), body
        assert (await stored_result(system, request_id))[0] is None

        # a JSON null result is no result; any other JSON value is one
        second = await system.submit("echo", {"algorithmParameters": {"n": 2}})
        auth = {"Authorization": f"Bearer {SIGNER.run_token('echo', second)}"}
        path = f"/algorithm/v1.2/complete/echo/requests/{second}"
        got, body = await post(json={"result": [1, "two", None]})
        assert (got, body["status"]) == (200, "COMPLETED"), body
        assert (await stored_result(system, second))[0] == b'[1,"two",null]'
        link = (await system.result("echo", second))["resultUri"]
        assert await read(system, link) == (200, [1, "two", None])
        status, _ = await system.get("/health/ready")
        assert status == 200
