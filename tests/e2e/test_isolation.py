"""Two tenants on one real local system: neither sees, reads, lists nor cancels the other's
runs; a grant widens what a caller sees; signed links stay capabilities until they expire.

Alice (the test token's caller, ``tester``) and Bob may both run every algorithm. Every client route that names a run is tried by
Bob on Alice's runs (one finished with its input inline, one finished with its input in S3,
one still waiting on a shard whose pods never start), and each refusal is compared with the
answer for a run that does not exist: the same status, code and words. The links Alice was
handed (her input, her result) are then used by Bob, and by nobody at all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
import yarl
from harness import Servers
from support.system import (
    SIGNING_KEY,
    System,
    local_system,
    service_token,
    template,
)

from nexus.core.signing import Signer
from nexus.scheduler.api import SCHEDULER
from nexus_dev.cluster.emulators import ShardSpec

BOB = "bob-token-" + "b" * 24
SUPPORT = "support-token-" + "s" * 20
OPS = "ops-token-" + "o" * 24
ISSUER = "https://issuer.example"
HS_SECRET = "hs256-secret-for-tests-0123456789abcdef"
PARKED = ShardSpec(name="shard-1", mode="off")  # pods stay Pending: runs stay unfinished

ROUTES = {
    "result": ("GET", "/algorithm/v1.2/results/{algorithm}/requests/{id}"),
    "metadata": ("GET", "/algorithm/v1.2/metadata/{algorithm}/requests/{id}"),
    "payload": ("GET", "/algorithm/v1.2/payload/{algorithm}/requests/{id}"),
    "cancel": ("POST", "/algorithm/v1.2/cancel/{algorithm}/requests/{id}"),
    # the Go Nexus v1 routes, over the same store
    "v1 result": ("GET", "/algorithm/v1/results/{algorithm}/requests/{id}"),
    "v1 metadata": ("GET", "/algorithm/v1/metadata/{algorithm}/requests/{id}"),
    "v1 payload": ("GET", "/algorithm/v1/payload/{algorithm}/requests/{id}"),
    "v1 buffer": ("GET", "/algorithm/v1/buffer/{algorithm}/requests/{id}"),
    "v1 cancel": ("POST", "/algorithm/v1/cancel/{algorithm}/requests/{id}"),
}


def _tokens() -> list[Any]:
    return [
        service_token("bob", BOB),
        service_token("support", SUPPORT, grants=("echo",)),
        service_token("ops", OPS, grants=("*",)),
    ]


def _jwt(caller: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "nexus", "sub": caller, "exp": now + 600, "iat": now}
    body["nexus/algorithms"] = ["*"]
    return jwt.encode({**body, **claims}, HS_SECRET, algorithm="HS256")


async def _refusal(
    system: System, route: str, algorithm: str, run_id: str, token: str
) -> tuple[int, Any]:
    """(status, body) of ``route`` for the run, with the run's id made anonymous, so that a
    refusal can be compared with the answer for a run that does not exist."""
    method, path = ROUTES[route]
    status, body, _ = await system.call(
        method, path.format(algorithm=algorithm, id=run_id), token=token, json={}
    )
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        body = {**body, "message": body["message"].replace(run_id, "<id>")}
    return status, body


async def _alices_runs(system: System) -> dict[str, tuple[str, str]]:
    """Alice's three runs: name → (algorithm, request id)."""
    runs = {
        "inline": ("echo", await system.submit("echo", _body({"secret": "alice-inline"}))),
        "stored": (
            "echo-stored",
            await system.submit("echo-stored", _body({"secret": "alice-stored"})),
        ),
        "waiting": ("parked", await system.submit("parked", _body({"secret": "alice-wait"}))),
    }
    for name in ("inline", "stored"):
        algorithm, run_id = runs[name]
        assert (await system.wait_for(algorithm, run_id))["status"] == "COMPLETED"
    await system.wait_for(*runs["waiting"], "RUNNING")
    return runs


def _body(parameters: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"algorithmParameters": parameters, "tag": "nightly", **fields}


async def test_another_caller_finds_nothing_of_a_callers_runs(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[
            template("echo"),
            template("echo-stored", inline=False),
            template("parked", workgroup="parked"),
        ],
        tokens=_tokens(),
        auth={"jwt_hs256_secret": HS_SECRET, "jwt_issuer": ISSUER},
    ) as system:
        runs = await _alices_runs(system)
        bobs = await system.submit("echo", _body({"secret": "bob"}), token=BOB)
        await system.wait_for("echo", bobs, token=BOB)
        carol = _jwt("carol")  # a JWT caller without grants is a tenant like Bob

        for name, (algorithm, run_id) in runs.items():
            absent = str(uuid.uuid4())
            for route in ROUTES:
                for other in (BOB, carol):
                    refused = await _refusal(system, route, algorithm, run_id, other)
                    missing = await _refusal(system, route, algorithm, absent, other)
                    assert refused[0] == 404, (name, route, refused)
                    assert refused == missing, (name, route, refused, missing)
            # Alice herself still sees it, unchanged by the attempted cancel
            status, mine = await system.get(
                f"/algorithm/v1.2/metadata/{algorithm}/requests/{run_id}"
            )
            assert status == 200 and mine["caller"] == "tester"
            assert mine["lifecycleStage"] != "CANCELLED", name

        # tags are per caller: the same tag, each sees only its own runs
        status, listed = await system.get("/algorithm/v1.2/results/echo/tags/nightly", BOB)
        assert (status, [r["requestId"] for r in listed]) == (200, [bobs])
        status, listed = await system.get("/algorithm/v1.2/results/echo/tags/nightly")
        assert (status, [r["requestId"] for r in listed]) == (200, [runs["inline"][1]])
        status, listed = await system.get("/algorithm/v1.2/results/parked/tags/nightly", carol)
        assert (status, listed) == (200, [])
        status, listed = await system.get("/algorithm/v1/results/tags/nightly", BOB)
        assert (status, [r["requestId"] for r in listed]) == (200, [bobs])

        # a parent must be a run the caller may see: refused exactly as one that is not
        def child(parent: str) -> dict[str, Any]:
            return _body({}, parentRequest={"requestId": parent, "algorithmName": "echo"})

        before = await system.stored()
        answers = []
        for parent in (runs["inline"][1], str(uuid.uuid4())):
            status, body, _ = await system.call(
                "POST", "/algorithm/v1.2/run/echo", token=BOB, json=child(parent)
            )
            answers.append((status, body["error"], body["message"].replace(parent, "<id>")))
        assert answers[0] == answers[1] and answers[0][0] == 400, answers
        assert await system.stored() == before
        assert await system.submit("echo", child(bobs), token=BOB)  # its own parent: fine


async def test_links_handed_out_stay_capabilities_until_they_expire(servers: Servers) -> None:
    async with local_system(
        servers,
        templates=[template("echo"), template("echo-stored", inline=False)],
        tokens=_tokens(),
    ) as system:
        inline = await system.submit("echo", _body({"secret": "alice-inline"}))
        stored = await system.submit("echo-stored", _body({"secret": "alice-stored"}))
        bobs = await system.submit("echo", _body({"secret": "bob"}), token=BOB)
        links: list[str] = []
        for algorithm, run_id in (("echo", inline), ("echo-stored", stored)):
            answer = await system.wait_for(algorithm, run_id)
            links.append(answer["resultUri"])
            status, _, headers = await system.call(
                "GET", f"/algorithm/v1.2/payload/{algorithm}/requests/{run_id}"
            )
            assert status == 302
            links.append(headers["Location"])
        await system.wait_for("echo", bobs, token=BOB)
        # whoever holds a link Alice was handed may use it, with any token or none
        for link in links:
            for token in (None, BOB):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with system.session.get(link, headers=headers) as response:
                    assert response.status == 200, (link, response.status)
                    assert b"alice-" in await response.read()

        # but a link is for its run only: Bob's own input link, pointed at Alice's run
        status, _, headers = await system.call(
            "GET", f"/algorithm/v1.2/payload/echo/requests/{bobs}", token=BOB
        )
        forged = yarl.URL(headers["Location"])
        forged = forged.with_path(forged.path.replace(bobs, inline))
        async with system.session.get(forged) as response:
            assert response.status == 403
            assert b"alice-" not in await response.read()
        # and only until it expires
        path = f"/algorithm/v1.2/payload/echo/requests/{inline}/content"
        expired = Signer([SIGNING_KEY]).sign_path(path, 60, now=time.time() - 120)
        status, body, _ = await system.call("GET", expired, token=None)
        assert (status, body["message"]) == (403, "the link has expired")
        # a presigned S3 link too (made here by the running scheduler, valid for a second)
        payloads = system.schedulers[0].app[SCHEDULER].links.payloads
        key = payloads.input_key("echo-stored", stored)
        short = payloads.presign_get(key, 1, for_client=True)
        async with system.session.get(short) as response:
            assert response.status == 200
        await asyncio.sleep(2.5)
        async with system.session.get(short) as response:
            assert response.status == 403, response.status


async def test_a_grant_widens_what_a_caller_sees(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[
            template("echo"),
            template("echo-stored", inline=False),
            template("parked", workgroup="parked"),
        ],
        tokens=_tokens(),
        auth={"jwt_hs256_secret": HS_SECRET, "jwt_issuer": ISSUER},
    ) as system:
        runs = await _alices_runs(system)
        inline, stored, waiting = runs["inline"][1], runs["stored"][1], runs["waiting"][1]
        support_jwt = _jwt("helpdesk", **{"nexus/grants": ["echo"]})
        for support in (SUPPORT, support_jwt):  # a grant of echo: every caller's echo runs
            for route in ("result", "metadata", "payload", "v1 result", "v1 buffer"):
                status, _ = await _refusal(system, route, "echo", inline, support)
                assert status in (200, 302), (route, status)
            status, listed = await system.get("/algorithm/v1.2/results/echo/tags/nightly", support)
            assert [r["requestId"] for r in listed] == [inline]
            status, listed = await system.get("/algorithm/v1/results/tags/nightly", support)
            assert [r["requestId"] for r in listed] == [inline]  # not the other algorithms'
            # and only those: Alice's other algorithms stay hers
            assert (await _refusal(system, "metadata", "echo-stored", stored, support))[0] == 404
            assert (await _refusal(system, "cancel", "parked", waiting, support))[0] == 404
        status, listed = await system.get("/algorithm/v1/results/tags/nightly", OPS)
        assert {r["requestId"] for r in listed} == {inline, stored, waiting}
        # a grant of everything: operators read and cancel any run
        ops_jwt = _jwt("operator", **{"nexus/grants": "*"})
        assert (await _refusal(system, "metadata", "echo-stored", stored, ops_jwt))[0] == 200
        status, body, _ = await system.call(
            "POST",
            f"/algorithm/v1.2/cancel/parked/requests/{waiting}",
            token=OPS,
            json={"reason": "stuck"},
        )
        assert (status, body["status"]) == (200, "CANCELLED")
        answer = await system.wait_for("parked", waiting)
        assert answer["status"] == "CANCELLED"
        assert "stuck (by ops)" in answer["runErrorMessage"]
        # a grant's claim that is not a list of names is no credential
        bad = _jwt("helpdesk", **{"nexus/grants": {"echo": True}})
        status, body, _ = await system.call(
            "GET", f"/algorithm/v1.2/results/echo/requests/{inline}", token=bad
        )
        assert status == 401 and "nexus/grants" in body["message"]
