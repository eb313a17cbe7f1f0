"""A batch by its tag: every run listed, paged without loss, summarised; bad cursors refused.

Through a real scheduler, Redis and PostgreSQL: 20,000 runs of one tag, submitted in bulk,
are listed whole (streamed, chunked), page by page along the Link headers, and counted by
status; the listings of another tag and of another algorithm are untouched by them.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest
from harness import Servers
from support.system import OTHER_TOKEN, System, local_system, template

from nexus.core.errors import StoreUnavailable
from nexus.scheduler.batches import LISTINGS
from nexus_dev.cluster.emulators import ShardSpec

TAGGED = 20_000
STAGES = ("COMPLETED", "FAILED", "RUNNING", "SCHEDULING_FAILED", "COMPLETED", "CANCELLED")


async def seed(system: System, algorithm: str, tag: str, count: int) -> list[uuid.UUID]:
    """``count`` runs carrying ``tag``, in stages taken in turn from :data:`STAGES`; groups
    of seven share a received_at, as a group-committed batch does. The ids in the order a
    listing has them: by received_at, then id."""
    ids = [uuid.uuid4() for _ in range(count)]
    connection = await asyncpg.connect(system.postgres_dsn)
    try:
        await connection.execute(
            """
            INSERT INTO runs (algorithm, id, lifecycle_stage, caller, received_by_host,
                              received_at, applied_configuration, payload_valid_for,
                              payload_inline, tag, api_version, result_inline)
            SELECT $1, i.id, ($4::text[])[1 + (i.n - 1) % cardinality($4::text[])],
                   'tester', 'seed', now() - interval '1 hour' + ((i.n - 1) / 7) * interval '1 ms',
                   '{}'::jsonb, interval '1 hour', '{}'::bytea, $2, 'v1.2',
                   CASE WHEN i.n % 2 = 1 THEN '{"r": 1}'::bytea END
            FROM unnest($3::uuid[]) WITH ORDINALITY AS i(id, n)
            """,
            algorithm,
            tag,
            ids,
            list(STAGES),
        )
    finally:
        await connection.close()
    order = sorted(range(count), key=lambda n: (n // 7, ids[n]))
    return [ids[n] for n in order]


async def submitted(system: System, algorithm: str, tag: str, count: int) -> list[uuid.UUID]:
    """``count`` runs submitted with ``tag`` by bulk submit, then moved to the stages of
    :data:`STAGES` in turn (each run by its place in the listing's order, which is that of
    their checkpoints: by received_at, then id), half of the completed ones with an inline
    result. Their ids in the listing's order."""
    for start in range(0, count, 1000):
        runs = [
            {"algorithmParameters": {"n": n}, "tag": tag}
            for n in range(start, min(count, start + 1000))
        ]
        status, body, _ = await system.call(
            "POST", f"/algorithm/v1.2/runs/{algorithm}", json={"runs": runs}
        )
        assert status == 200 and all("requestId" in a for a in body["runs"]), body
    connection = await asyncpg.connect(system.postgres_dsn)
    try:
        ids = await connection.fetch(
            "SELECT id FROM runs WHERE algorithm = $1 AND tag = $2 ORDER BY received_at, id",
            algorithm,
            tag,
        )
        ordered = [row["id"] for row in ids]
        await connection.execute(
            """
            UPDATE runs r SET
                lifecycle_stage = ($2::text[])[1 + (i.n - 1) % cardinality($2::text[])],
                result_inline = CASE WHEN i.n % 2 = 1 THEN '{"r": 1}'::bytea END
            FROM unnest($1::uuid[]) WITH ORDINALITY AS i(id, n)
            WHERE r.id = i.id
            """,
            ordered,
            list(STAGES),
        )
    finally:
        await connection.close()
    assert len(ordered) == count
    return ordered


async def listing(system: System, path: str) -> tuple[int, Any, dict[str, str]]:
    status, body, headers = await system.call("GET", path)
    return status, body, dict(headers)


async def follow(system: System, path: str | None) -> list[list[dict[str, Any]]]:
    """The pages of a listing, from ``path`` along its Link rel="next" headers."""
    pages = []
    while path is not None:
        status, body, headers = await listing(system, path)
        assert status == 200, body
        pages.append(body)
        link = headers.get("Link")
        if link is None:
            return pages
        assert link.endswith('>; rel="next"') and link.startswith(f"<{system.balancer_url}/")
        path = link[1 : link.index(">")].removeprefix(system.balancer_url)
    return pages


@pytest.mark.slow
async def test_a_20000_run_batch_is_listed_whole_paged_and_summarised(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo"), template("other")],
        create_rate={"shard-0": 0.001},  # the runs stay queued: no 20,000 Jobs meanwhile
        section={"max_queue_depth": 10 * TAGGED},
    ) as system:
        ids = await submitted(system, "echo", "big-batch", TAGGED)
        others = await seed(system, "echo", "small-batch", 5)
        await seed(system, "other", "big-batch", 3)  # the same tag, another algorithm
        base = "/algorithm/v1.2/results/echo/tags/big-batch"

        # the whole listing, streamed: every run once, in order of arrival
        async with system.session.get(system.url + base, headers=system.headers()) as response:
            assert response.status == 200
            assert response.headers.get("Transfer-Encoding") == "chunked"
            assert "Content-Length" not in response.headers
            whole = await response.json()
        assert [uuid.UUID(run["requestId"]) for run in whole] == ids
        expected = {"SCHEDULING_FAILED": "SCHEDULING_TIMEOUT"}
        assert {run["status"] for run in whole} == {expected.get(s, s) for s in STAGES}
        completed = [run for run in whole if run["status"] == "COMPLETED"]
        assert len(completed) == 2 * (TAGGED // len(STAGES)) + 1  # 20000 = 6 * 3333 + 2
        assert all("/content?" in run["resultUri"] for run in completed)

        # pages along Link rel="next": the same runs in the same order, none twice
        pages = await follow(system, f"{base}?limit=3000")
        assert [len(page) for page in pages] == [3000] * 6 + [2000]
        paged = [run for page in pages for run in page]
        fresh = ("requestId", "status", "runErrorMessage")  # a resultUri is signed anew
        assert [[run[k] for k in fresh] for run in paged] == [[r[k] for k in fresh] for r in whole]
        # a page ending exactly at the end has no Link
        assert [len(page) for page in await follow(system, f"{base}?limit=5000")] == [5000] * 4
        status, body, _ = await listing(system, "/algorithm/v1.2/results/echo/tags/small-batch")
        assert [uuid.UUID(run["requestId"]) for run in body] == others
        status, body, _ = await listing(system, "/algorithm/v1.2/results/echo/tags/none-such")
        assert (status, body) == (200, [])

        # the summary: every status named, the counts of the stages, not finished
        status, summary, _ = await listing(system, f"{base}/summary")
        assert status == 200, summary
        per_stage = TAGGED // len(STAGES)
        assert summary["total"] == TAGGED and summary["finished"] is False
        assert summary["byStatus"]["COMPLETED"] == 2 * per_stage + 1  # 20000 = 6 * 3333 + 2
        assert summary["byStatus"]["RUNNING"] == per_stage
        assert summary["byStatus"]["SCHEDULING_TIMEOUT"] == per_stage
        assert (
            summary["byStatus"]["BUFFERED"] == 0 and "SCHEDULING_FAILED" not in summary["byStatus"]
        )
        assert sum(summary["byStatus"].values()) == TAGGED
        connection = await asyncpg.connect(system.postgres_dsn)
        try:
            await connection.execute(
                "UPDATE runs SET lifecycle_stage = 'CANCELLED' WHERE lifecycle_stage = 'RUNNING'"
            )
        finally:
            await connection.close()
        status, summary, _ = await listing(system, f"{base}/summary")
        assert (summary["total"], summary["finished"]) == (TAGGED, True)
        status, summary, _ = await listing(system, "/algorithm/v1.2/results/echo/tags/x/summary")
        assert (summary["total"], summary["finished"]) == (0, False)


async def test_bad_paging_is_refused_naming_the_problem(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo")],
    ) as system:
        await seed(system, "echo", "one", 5)
        await seed(system, "echo", "two", 5)
        base = "/algorithm/v1.2/results/echo/tags"
        _, _, headers = await listing(system, f"{base}/one?limit=2")
        cursor = headers["Link"].split("after=")[1].split(">")[0]
        status, body, _ = await listing(system, f"{base}/one?limit=2&after={cursor}")
        assert status == 200 and len(body) == 2
        value, _, mac = cursor.rpartition(".")
        micros, _, run = value.partition(".")
        altered = f"{int(micros) - 1}.{run}.{mac}"
        for case, query, names in (
            ("limit 0", "limit=0", "limit"),
            ("limit not a number", "limit=ten", "limit"),
            ("limit negative", "limit=-5", "limit"),
            ("limit over the most", "limit=10001", "limit"),
            ("cursor forged", "limit=2&after=123.abc.def", "after"),
            ("cursor altered", f"limit=2&after={altered}", "after"),
            ("cursor without its seal", f"limit=2&after={value}", "after"),
        ):
            status, body, _ = await listing(system, f"{base}/one?{query}")
            assert status == 400, (case, status, body)
            assert set(body) == {"error", "message"} and names in body["message"], (case, body)
        # a cursor of one tag is no cursor of another, nor of another algorithm's tag
        status, body, _ = await listing(system, f"{base}/two?limit=2&after={cursor}")
        assert status == 400 and "after" in body["message"], body
        status, body, _ = await listing(
            system, f"/algorithm/v1.2/results/other/tags/one?limit=2&after={cursor}"
        )
        assert status == 400, body
        # tags are per caller: another caller's listing, summary, cursor and wait
        status, body = await system.get(f"{base}/one", token=OTHER_TOKEN)
        assert (status, body) == (200, [])
        status, body = await system.get(f"{base}/one/summary?wait=1", token=OTHER_TOKEN)
        assert (status, body["total"], body["finished"]) == (200, 0, False)
        status, body = await system.get(f"{base}/one?limit=2&after={cursor}", token=OTHER_TOKEN)
        assert status == 400, body
        theirs = (await listing(system, f"{base}/one"))[1][0]["requestId"]
        status, body = await system.get(
            f"/algorithm/v1.2/results/echo/requests/{theirs}?wait=1", token=OTHER_TOKEN
        )
        assert status == 404, body
        status, _ = await system.get("/health/ready")
        assert status == 200


async def test_a_listing_the_store_fails_in_the_middle_of_is_never_taken_for_a_whole_one(
    servers: Servers,
) -> None:
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[template("echo")]
    ) as system:
        await seed(system, "echo", "long", 1500)  # two pages of the stream
        listings = system.schedulers[0].app[LISTINGS]
        pages = 0
        real_page = listings.page

        async def failing_page(*args: Any, **options: Any) -> Any:
            nonlocal pages
            pages += 1
            if pages == 2:
                raise StoreUnavailable("the store went away")
            return await real_page(*args, **options)

        listings.page = failing_page  # type: ignore[method-assign]
        url = f"{system.schedulers[0].url}/algorithm/v1.2/results/echo/tags/long"
        async with system.session.get(url, headers=system.headers()) as response:
            assert response.status == 200  # sent before the second page was read
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        listings.page = real_page  # type: ignore[method-assign]
        status, body = await system.get("/algorithm/v1.2/results/echo/tags/long")
        assert status == 200 and len(body) == 1500
