"""Bulk submit's per-item idempotency keys through the real scheduler and PostgreSQL, as
clients spell them: a run body's fields are read in any letter case (PascalCase from .NET
serialisers), so its ``idempotencyKey`` is too — a key that were silently dropped would turn
a client's retry into a second run."""

from __future__ import annotations

from harness import Servers
from support.system import local_system, template

BULK = "/algorithm/v1.2/runs/echo"


async def test_an_items_idempotency_key_is_read_in_any_letter_case(servers: Servers) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:
        runs = [
            {"AlgorithmParameters": {"n": 1}, "IdempotencyKey": "pascal-1"},
            {"algorithmParameters": {"n": 2}, "idempotencykey": "lower-2"},
        ]
        first: list[str] = []
        for attempt in range(2):  # the client's retry after a lost answer
            status, body, _ = await system.call("POST", BULK, json={"runs": runs})
            assert status == 200, body
            ids = [answer.get("requestId") for answer in body["runs"]]
            assert all(ids), body
            if attempt == 0:
                first = ids
        assert ids == first
        rows, _ = await system.stored()
        assert rows == 2
        # one key given twice in one item, in two spellings: which one was meant?
        twice = {"algorithmParameters": {}, "idempotencyKey": "a", "IdempotencyKey": "b"}
        status, body, _ = await system.call("POST", BULK, json={"runs": [twice]})
        assert status == 200, body
        (answer,) = body["runs"]
        assert answer.get("error") == "invalid_request", answer
        assert "idempotencyKey" in answer["message"] and "IdempotencyKey" in answer["message"]
        assert (await system.stored())[0] == 2
