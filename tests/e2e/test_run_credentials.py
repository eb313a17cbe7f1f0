"""A run's credential (``NEXUS__RUN_CREDENTIAL``) against the real local system: it starts
children of its run only while that run is unfinished. A credential that outlives its run
(it is valid until the run's deadline), or one leaked from a pod that a cancellation
orphaned, starts nothing once the run has finished: children started then would escape
the parent's cascading cancel."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import jwt
import pytest
from harness import Servers
from support.system import SIGNING_KEY, local_system, template

from nexus.core.signing import Signer
from nexus_dev.cluster.emulators import ShardSpec

ISSUER = "https://issuer.example"
HS_SECRET = "hs256-secret-for-tests-0123456789abcdef"

PARKED = ShardSpec(name="shard-1", mode="off")  # pods stay Pending: runs stay unfinished
ROUTES = (
    ("/algorithm/v1.2/run/echo", {"algorithmParameters": {}}),
    ("/algorithm/v1/run/echo", {"algorithmParameters": {}}),
)
ROUTES_BY_ID = {
    "result": ("GET", "/algorithm/v1.2/results/{algorithm}/requests/{id}"),
    "wait": ("GET", "/algorithm/v1.2/results/{algorithm}/requests/{id}?wait=1"),
    "metadata": ("GET", "/algorithm/v1.2/metadata/{algorithm}/requests/{id}"),
    "payload": ("GET", "/algorithm/v1.2/payload/{algorithm}/requests/{id}"),
    "cancel": ("POST", "/algorithm/v1.2/cancel/{algorithm}/requests/{id}"),
    "v1 result": ("GET", "/algorithm/v1/results/{algorithm}/requests/{id}"),
    "v1 metadata": ("GET", "/algorithm/v1/metadata/{algorithm}/requests/{id}"),
    "v1 buffer": ("GET", "/algorithm/v1/buffer/{algorithm}/requests/{id}"),
    "v1 cancel": ("POST", "/algorithm/v1/cancel/{algorithm}/requests/{id}"),
}


async def test_a_run_credential_starts_no_children_once_its_run_has_finished(
    servers: Servers,
) -> None:
    signer = Signer([SIGNING_KEY])
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("parked", workgroup="parked")],
    ) as system:
        finished = await system.submit("echo")
        await system.wait_for("echo", finished, "COMPLETED")
        cancelled = await system.submit("parked")
        await system.wait_for("parked", cancelled, "RUNNING")
        status, _, _ = await system.call(
            "POST",
            f"/algorithm/v1.2/cancel/parked/requests/{cancelled}",
            json={"cancellationPolicy": "Orphan"},  # its pod may well go on running
        )
        assert status == 200
        later = int(time.time()) + 600
        before = await system.stored()
        for algorithm, parent in (("echo", finished), ("parked", cancelled)):
            credential = signer.run_credential(algorithm, parent, "tester", later)
            for path, body in ROUTES:
                status, answer, _ = await system.call("POST", path, token=credential, json=body)
                assert status == 403, (path, status, answer)
                assert answer["error"] == "forbidden"
                assert f"run {parent}" in answer["message"] and "finished" in answer["message"]
            status, answer, _ = await system.call(
                "POST",
                "/algorithm/v1.2/runs/echo",
                token=credential,
                json={"runs": [{"algorithmParameters": {}}]},
            )
            assert status == 200, answer
            assert answer["runs"][0]["error"] == "forbidden", answer
        assert await system.stored() == before

        # while its run is unfinished, the same kind of credential starts children
        running = await system.submit("parked")
        await system.wait_for("parked", running, "RUNNING")
        credential = signer.run_credential("parked", running, "tester", later)
        child = await system.submit("echo", token=credential)
        assert (await system.wait_for("echo", child))["status"] == "COMPLETED"


async def test_a_run_credential_reads_and_cancels_the_children_of_its_run_only(
    servers: Servers,
) -> None:
    """A credential can be read by whoever reads the Job: it sees the children of its run,
    and not one other run of its caller — those are as absent as runs that do not exist."""
    signer = Signer([SIGNING_KEY])
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("parked", workgroup="parked")],
    ) as system:
        tagged = {"algorithmParameters": {}, "tag": "nightly"}
        parent = await system.submit("parked", tagged)
        await system.wait_for("parked", parent, "RUNNING")
        others = {
            "finished": ("echo", await system.submit("echo", tagged)),
            "waiting": ("parked", await system.submit("parked", tagged)),
        }
        await system.wait_for(*others["finished"])
        credential = signer.run_credential("parked", parent, "tester", int(time.time()) + 600)
        child = await system.submit("parked", tagged, token=credential)

        for name, (algorithm, run_id) in (*others.items(), ("itself", ("parked", parent))):
            absent = str(uuid.uuid4())
            for route, (method, path) in ROUTES_BY_ID.items():
                answers = []
                for which in (run_id, absent):
                    status, body, _ = await system.call(
                        method, path.format(algorithm=algorithm, id=which), token=credential,
                        json={},
                    )  # fmt: skip
                    answers.append((status, str(body).replace(which, "<id>")))
                assert answers[0][0] == 404 and answers[0] == answers[1], (name, route, answers)
        for path in ("/algorithm/v1.2/results/parked/tags/nightly",):
            status, listed = await system.get(path, credential)
            assert (status, [r["requestId"] for r in listed]) == (200, [child])
        status, summary = await system.get(
            "/algorithm/v1.2/results/parked/tags/nightly/summary", credential
        )
        assert (status, summary["total"]) == (200, 1)
        status, listed = await system.get("/algorithm/v1/results/tags/nightly", credential)
        assert (status, [r["requestId"] for r in listed]) == (200, [child])

        # its own child it reads and cancels; the caller's other runs are untouched
        status, _ = await system.get(
            f"/algorithm/v1.2/metadata/parked/requests/{child}", credential
        )
        assert status == 200
        status, body, _ = await system.call(
            "POST", f"/algorithm/v1.2/cancel/parked/requests/{child}", token=credential, json={}
        )
        assert (status, body["status"]) == (200, "CANCELLED")
        for algorithm, run_id in (*others.values(), ("parked", parent)):
            assert (await system.result(algorithm, run_id))["status"] != "CANCELLED"


@pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])
async def test_a_child_accepted_while_its_parent_is_cancelled_is_cancelled_too(
    servers: Servers, bulk: bool
) -> None:
    """The parent's cancellation and a child's acceptance, interleaved at the worst moment:
    the child passed the check of its parent, then its insert waited (here on a lock, held
    by another transaction that takes its idempotency key), and the parent's cancellation
    looked for children in between and found none. The child must not stay unfinished
    below a cancelled parent, where no cancellation would ever reach it."""
    signer = Signer([SIGNING_KEY])
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("parked", workgroup="parked")],
    ) as system:
        parent = await system.submit("parked")
        await system.wait_for("parked", parent, "RUNNING")
        credential = signer.run_credential("parked", parent, "tester", int(time.time()) + 600)
        holder = await asyncpg.connect(system.postgres_dsn)
        try:
            held = holder.transaction()
            await held.start()
            await holder.execute(
                "CREATE TEMP TABLE held AS SELECT * FROM runs WHERE id = $1", uuid.UUID(parent)
            )
            await holder.execute(  # a row under the child's key, not yet committed
                "UPDATE held SET id = gen_random_uuid(), idempotency_key = 'child-1';"
                " INSERT INTO runs SELECT * FROM held"
            )
            if bulk:
                item = {"algorithmParameters": {}, "idempotencyKey": "child-1"}
                path, options = "/algorithm/v1.2/runs/parked", {"json": {"runs": [item]}}
            else:
                path = "/algorithm/v1.2/run/parked"
                options = {
                    "json": {"algorithmParameters": {}},
                    "headers": {"Idempotency-Key": "child-1"},
                }
            accepting = asyncio.create_task(system.call("POST", path, token=credential, **options))
            await _until_waiting_on_a_lock(system.postgres_dsn)
            status, _, _ = await system.call(
                "POST", f"/algorithm/v1.2/cancel/parked/requests/{parent}", json={}
            )
            assert status == 200
            await held.rollback()  # the insert goes on: the child is stored now
            status, answer, _ = await accepting
        finally:
            await holder.close()
        assert status == (200 if bulk else 202), answer
        child = (answer["runs"][0] if bulk else answer)["requestId"]
        state = await system.result("parked", child)  # settled before the answer
        assert state["status"] == "CANCELLED", state
        assert parent in state["runErrorMessage"]


async def _until_waiting_on_a_lock(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)  # outside the holder's transaction and snapshot
    try:
        for _ in range(100):
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%INSERT INTO runs%'"
            )
            if waiting:
                return
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
    raise AssertionError("the child's insert never waited for the held key")


async def test_a_run_credential_learns_no_id_of_its_callers_other_runs_by_their_keys(
    servers: Servers,
) -> None:
    """An Idempotency-Key the caller gave one of its own runs, reused with a run's
    credential, is refused (422) without naming that run, which the credential may not see;
    the key of a child of its run names that child, as for any caller."""
    signer = Signer([SIGNING_KEY])
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("parked", workgroup="parked")],
    ) as system:
        parent = await system.submit("parked")
        hidden = await system.submit("echo", **{"Idempotency-Key": "nightly-1"})
        credential = signer.run_credential("parked", parent, "tester", int(time.time()) + 600)
        body = {"algorithmParameters": {}}
        for path, options in (
            ("/algorithm/v1.2/run/echo", {"json": body, "headers": {"Idempotency-Key": "nightly-1"}}),
            ("/algorithm/v1.2/runs/echo", {"json": {"runs": [{**body, "idempotencyKey": "nightly-1"}]}}),
        ):  # fmt: skip
            status, answer, _ = await system.call("POST", path, token=credential, **options)
            refusal = answer["runs"][0] if "runs" in answer else answer
            assert refusal.get("error") == "idempotency_conflict", (path, answer)
            assert hidden not in str(answer), (path, answer)
        child = await system.submit("echo", token=credential, **{"Idempotency-Key": "child-1"})
        status, answer, _ = await system.call(
            "POST",
            "/algorithm/v1.2/run/echo",
            token=credential,
            json={"algorithmParameters": {"other": 1}},
            headers={"Idempotency-Key": "child-1"},
        )
        assert (status, answer["error"]) == (422, "idempotency_conflict")
        assert child in answer["message"]


async def test_a_run_of_a_caller_known_only_by_its_jwt_starts_children_with_its_rights(
    servers: Servers,
) -> None:
    """A JWT's rights are in the JWT, which the run's container never sees: the scheduler
    keeps them for the caller, and its runs' credentials start children with them, on any
    pod, as a service token caller's do with the token's."""
    signer = Signer([SIGNING_KEY])
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "nexus", "sub": "jwt-only", "iat": now, "exp": now + 600}
    token = jwt.encode(
        {**claims, "nexus/algorithms": ["parked", "echo"]}, HS_SECRET, algorithm="HS256"
    )
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="simulated"), PARKED],
        workgroups=[("default", "shard-0"), ("parked", "shard-1")],
        templates=[template("echo"), template("parked", workgroup="parked"), template("other")],
        schedulers=2,
        auth={"jwt_hs256_secret": HS_SECRET, "jwt_issuer": ISSUER},
    ) as system:
        first, second = (s.url for s in system.schedulers)
        parent = await system.submit("parked", url=first, token=token)
        await system.wait_for("parked", parent, "RUNNING", token=token)
        credential = signer.run_credential("parked", parent, "jwt-only", now + 600)
        child = await system.submit("echo", url=second, token=credential)  # the other pod
        assert (await system.wait_for("echo", child, token=token))["status"] == "COMPLETED"
        metadata = await system.call("GET", f"/algorithm/v1.2/metadata/echo/requests/{child}", token=token)  # fmt: skip
        assert metadata[1]["parent"] == {"requestId": parent, "algorithmName": "parked"}
        # what its JWT does not allow, its runs may not start either
        status, answer, _ = await system.call(
            "POST", "/algorithm/v1.2/run/other", token=credential, json={"algorithmParameters": {}}
        )
        assert (status, answer["error"]) == (403, "forbidden"), answer
        # and a caller nothing is known of starts nothing
        stranger = signer.run_credential("parked", parent, "nobody-known", now + 600)
        status, answer, _ = await system.call(
            "POST", "/algorithm/v1.2/run/echo", token=stranger, json={"algorithmParameters": {}}
        )
        assert (status, answer["error"]) == (403, "forbidden"), answer
