"""Bulk submit through the real scheduler, PostgreSQL, Redis, SeaweedFS and local cluster:
each item judged alone, accepted ones durable before the answer and run to the end, bad
ones refused naming the field; whole-request refusals store nothing."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from harness import Servers
from support.system import OTHER_TOKEN, System, local_system, template

from nexus.scheduler.teamsettings import CallerPolicy, TeamSettings

BULK = "/algorithm/v1.2/runs/echo"


async def bulk(system: System, body: Any, **options: Any) -> tuple[int, Any, Any]:
    return await system.call("POST", BULK, json=body, **options)


async def test_bulk_with_good_and_bad_items_answers_each_in_order(servers: Servers) -> None:
    async with local_system(
        servers, templates=[template("echo"), template("stored", inline=False)]
    ) as system:
        good = {"algorithmParameters": {"n": 1}, "tag": "bulk-1"}
        items: list[tuple[dict[str, Any], str | None]] = [
            (good, None),
            ({"algorithmParameters": {"n": 2}, "tag": "bulk-1", "idempotencyKey": "k-2"}, None),
            ({"tag": "bulk-1"}, "algorithmParameters"),
            ({"algorithmParameters": [1, 2]}, "algorithmParameters"),
            ({"algorithmParameters": {}, "idempotencyKey": "k-2"}, "idempotencyKey"),
            ({"algorithmParameters": {}, "idempotencyKey": 7}, "idempotencyKey"),
            ({"algorithmParameters": {}, "tag": "bad\ttag"}, "tag"),
            (
                {"algorithmParameters": {}, "customConfiguration": {"workgroup": "nowhere"}},
                "workgroup",
            ),
            ({"algorithmParameters": {}, "algorithmName": "other"}, "algorithmName"),
            ({"algorithmParameters": {"n": 3}, "tag": "bulk-1", "idempotencyKey": "k-3"}, None),
        ]
        rows_before, _ = await system.stored()
        status, body, _ = await bulk(system, {"runs": [item for item, _ in items]})
        assert status == 200, body
        answers = body["runs"]
        assert len(answers) == len(items)
        accepted = []
        for (item, names), answer in zip(items, answers, strict=True):
            if names is None:
                assert set(answer) == {"requestId"}, (item, answer)
                accepted.append(answer["requestId"])
            else:
                assert set(answer) == {"error", "message"}, (item, answer)
                assert names in answer["message"], (item, answer)
        # durable before the answer: each is read at once, and nothing else was stored
        for request_id in accepted:
            assert (await system.result("echo", request_id))["status"] in (
                "BUFFERED", "RUNNING", "COMPLETED",
            )  # fmt: skip
        rows, _ = await system.stored()
        assert rows - rows_before == 3
        for request_id in accepted:  # queued, dispatched and run to the end
            assert (await system.wait_for("echo", request_id))["status"] == "COMPLETED"

        # the same request again: the keyed runs are the first ones, the unkeyed one new
        status, again, _ = await bulk(system, {"runs": [item for item, _ in items]})
        assert status == 200
        assert again["runs"][1] == answers[1] and again["runs"][9] == answers[9]
        assert again["runs"][0]["requestId"] != answers[0]["requestId"]
        rows, _ = await system.stored()
        assert rows - rows_before == 4
        # a key reused with another body is refused for that item alone
        status, body, _ = await bulk(
            system,
            {"runs": [{"algorithmParameters": {"n": 99}, "idempotencyKey": "k-3"}, good]},
        )
        assert status == 200
        assert body["runs"][0]["error"] == "idempotency_conflict", body
        assert "requestId" in body["runs"][1]

        # inputs kept in S3 are uploaded for the accepted runs only
        status, body, _ = await system.call(
            "POST",
            "/algorithm/v1.2/runs/stored",
            json={"runs": [{"algorithmParameters": {"s": 1}}, {"algorithmParameters": 5}]},
        )
        assert status == 200 and "requestId" in body["runs"][0] and "error" in body["runs"][1]
        _, inputs = await system.stored()
        assert any(body["runs"][0]["requestId"] in key for key in inputs)
        answer = await system.wait_for("stored", body["runs"][0]["requestId"])
        assert answer["status"] == "COMPLETED", answer


async def test_bad_bulk_requests_are_refused_whole_and_store_nothing(servers: Servers) -> None:
    async with local_system(
        servers,
        templates=[template("echo")],
        store={"max_pending": 5},  # as many checkpoint writes as the store takes at once
    ) as system:
        before = await system.stored()
        one = {"algorithmParameters": {}}
        for case, body, status, names in (
            ("not an object", [one], 400, "object"),
            ("no runs", {"run": [one]}, 400, "runs"),
            ("runs not a list", {"runs": {"a": one}}, 400, "runs"),
            ("too many", {"runs": [one] * 1001}, 413, "1000"),
            ("an item not an object", {"runs": [one, "run", one]}, 400, "runs[1]"),
            ("an item a list", {"runs": [[one]]}, 400, "runs[0]"),
            ("more than the store takes", {"runs": [one] * 6}, 503, "saturated"),
        ):
            got, answer, headers = await bulk(system, body)
            assert got == status, (case, got, answer)
            assert set(answer) == {"error", "message"} and names in answer["message"], (case, answer)  # fmt: skip
            if status == 503:
                assert headers.get("Retry-After"), case
            assert await system.stored() == before, case
        got, answer, _ = await bulk(system, {"runs": []})
        assert (got, answer) == (200, {"runs": []})
        got, answer, _ = await bulk(system, {"runs": [one] * 5})
        assert got == 200 and all("requestId" in a for a in answer["runs"]), answer
        status, _ = await system.get("/health/ready")
        assert status == 200


async def test_a_callers_quota_is_taken_run_by_run_and_others_pay_none(servers: Servers) -> None:
    teams = TeamSettings(callers={"limited": CallerPolicy(runs_per_day=3)})
    async with local_system(servers, templates=[template("echo")], teams=teams) as system:
        runs = {"runs": [{"algorithmParameters": {"n": n}} for n in range(5)]}
        status, body, _ = await bulk(system, runs, token=OTHER_TOKEN)
        assert status == 200, body
        assert [set(a) for a in body["runs"]] == [{"requestId"}] * 3 + [{"error", "message"}] * 2
        assert all(a["error"] == "quota_exceeded" for a in body["runs"][3:]), body
        rows, _ = await system.stored()
        assert rows == 3
        status, usage, _ = await system.call("GET", "/algorithm/v1.2/usage", token=OTHER_TOKEN)
        assert (usage["runsToday"], usage["runsPerDay"]) == (3, 3)
        # a caller without a quota is not held back by another's
        status, body, _ = await bulk(system, runs)
        assert status == 200 and all("requestId" in a for a in body["runs"]), body


async def test_items_of_parameters_alone_are_each_judged_and_stored_as_a_single_submit(
    servers: Servers,
) -> None:
    deep: dict[str, Any] = {}
    for _ in range(300):  # parsed, but deeper than JSON is written
        deep = {"a": deep}
    params: list[Any] = [{"n": 1}, {"n": 2}, [1], {"n": 3}, {"n": 4}, "x", {"n": 5}, {"n": 6}]
    big = {"n": 10, "big": "y" * 100_000}  # over the inline limit: kept in S3
    params += [deep, {"n": 7}, {"n": 8}, None, {"n": 9}, big]
    async with local_system(servers, templates=[template("echo")]) as system:
        single = await system.submit("echo", {"algorithmParameters": {"n": 0}})
        status, body, _ = await bulk(system, {"runs": [{"algorithmParameters": p} for p in params]})
        assert status == 200, body
        answers = body["runs"]
        for p, answer in zip(params, answers, strict=True):
            if isinstance(p, dict) and p is not deep:
                assert set(answer) == {"requestId"}, (p, answer)
            else:
                assert answer["error"] == "invalid_request", (p, answer)
                assert "algorithmParameters" in answer["message"], (p, answer)
        assert "cannot be stored" in answers[8]["message"]
        path = "/algorithm/v1.2/metadata/echo/requests/"
        _, expected = await system.get(path + single)
        same = ("caller", "tag", "parent", "apiVersion", "payloadValidFor",
                "appliedConfiguration", "configurationOverrides", "receivedByHost")  # fmt: skip
        for p, answer in zip(params, answers, strict=True):
            if "requestId" not in answer:
                continue
            status, stored = await system.get(path + answer["requestId"])
            assert status == 200, stored
            assert {k: stored[k] for k in same} == {k: expected[k] for k in same}
            assert stored["contentHash"] == hashlib.sha256(orjson.dumps(p)).hexdigest()
            assert stored["payloadInline"] is (p is not big)
        _, inputs = await system.stored()
        assert any(answers[-1]["requestId"] in key for key in inputs)
