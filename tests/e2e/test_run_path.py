"""From POST to result through real PostgreSQL, Redis, SeaweedFS and the local cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from xml.etree import ElementTree

import asyncpg
import orjson
import pytest
from harness import Servers
from prometheus_client import REGISTRY
from support.proxy import Proxy, proxied_kubeconfigs
from support.system import (
    NAMESPACE,
    OPS_TOKEN,
    OTHER_TOKEN,
    SIGNING_KEY,
    System,
    local_system,
    template,
    workgroup,
)

from nexus.core import sigv4
from nexus.core.labels import PARENT_LABEL
from nexus.core.queues import QueuedRun
from nexus.core.runs import NewRun, Stage
from nexus.core.signing import Signer
from nexus.scheduler.api import SCHEDULER
from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.fairness import Limits
from nexus_dev.cluster.store import Change


@pytest.mark.parametrize("mode", ["simulated", "process"])
async def test_echo_completes_and_its_result_is_its_parameters(servers: Servers, mode: str) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode=mode)],  # type: ignore[arg-type]
        templates=[template("echo")],
    ) as system:
        parameters = {"x": 1, "text": "héllo", "nested": {"list": [1, 2, 3]}}
        request_id = await system.submit("echo", {"algorithmParameters": parameters})
        answer = await system.wait_for("echo", request_id)
        assert answer["status"] == "COMPLETED", answer
        assert answer["runErrorMessage"] is None
        async with system.session.get(answer["resultUri"]) as response:
            assert response.status == 200
            assert await response.json() == parameters


# -- helpers ---------------------------------------------------------------------------------

MAYBE_FAIL = ("python", "-m", "nexus_sdk.examples", "maybe-fail")


def job_of(system: System, shard: str, request_id: str) -> dict[str, Any] | None:
    stored = system.cluster[shard].store.get("jobs", NAMESPACE, request_id)
    return None if stored is None else dict(stored)


def jobs_created(system: System, shard: str) -> list[str]:
    """The name of every Job the shard stores from now on, kept after the Job is deleted: a
    Job created and deleted at once shows here, not in :func:`job_of`."""
    created: list[str] = []

    def added(change: Change) -> None:
        if change.type == "ADDED":
            created.append(change.obj["metadata"]["name"])

    system.cluster[shard].store.subscribe("jobs", added)
    return created


def sample(name: str, **labels: str) -> float:
    """A sample of the scheduler's metrics (shared by every test of the process: compare
    values taken before and after, never an absolute value)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def shard_creations(system: System, shard: str) -> tuple[float, float]:
    """(accepted, refused with 429) Job creations, as the shard's API server counts them."""
    registry = system.cluster[shard].registry
    accepted = registry.get_sample_value(
        "devcluster_requests_accepted_total", {"verb": "create", "resource": "jobs"}
    )
    refused = registry.get_sample_value(
        "devcluster_requests_rejected_total",
        {"verb": "create", "resource": "jobs", "reason": "rate"},
    )
    return accepted or 0.0, refused or 0.0


def env_of(job: dict[str, Any]) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def input_urls_of(job: dict[str, Any]) -> list[str]:
    """The input URLs the Job hands its container (``--sas-uri=``)."""
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a.removeprefix("--sas-uri=") for a in args if a.startswith("--sas-uri=")]


async def payload_redirect(system: System, algorithm: str, request_id: str) -> str:
    """Where the payload route sends a client for the run's input."""
    async with system.session.get(
        f"{system.url}/algorithm/v1.2/payload/{algorithm}/requests/{request_id}",
        headers=system.headers(),
        allow_redirects=False,
    ) as response:
        assert response.status == 302
        return response.headers["Location"]


# -- failures, cancellation ------------------------------------------------------------------


async def test_a_failing_run_reports_its_cause(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="process")],
        templates=[template("maybe-fail", command=MAYBE_FAIL)],
    ) as system:
        request_id = await system.submit(
            "maybe-fail", {"algorithmParameters": {"fail": "x must be positive"}}
        )
        answer = await system.wait_for("maybe-fail", request_id)
        assert answer["status"] == "FAILED"
        assert answer["runErrorMessage"] == "RequestedFailure: x must be positive"
        assert answer["resultUri"] is None


async def test_cancel_before_dispatch_never_creates_the_job(servers: Servers) -> None:
    # One creation every 2 s: the first run takes the only token; the second is taken off
    # the queue and waits for the next token, and is cancelled while it waits.
    rate = 0.5
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo")],
        create_rate={"shard-0": rate},
    ) as system:
        created = jobs_created(system, "shard-0")
        creates_before = sample("nexus_job_creates_total", shard="shard-0", outcome="created")
        exists_before = sample("nexus_job_creates_total", shard="shard-0", outcome="exists")
        submitted = time.monotonic()  # the first run's token is taken after this...
        first = await system.submit("echo")
        queued = await system.submit("echo")
        await system.wait_for("echo", first, "RUNNING")
        running = time.monotonic()  # ...and before this; the next one 1 / rate later
        status, metadata = await system.get(f"/algorithm/v1.2/metadata/echo/requests/{queued}")
        assert status == 200
        assert metadata["lifecycleStage"] == "BUFFERED"
        async with system.session.post(
            f"{system.url}/algorithm/v1.2/cancel/echo/requests/{queued}",
            json={
                "reason": "changed my mind",
                "initiator": "alice",
                "cancellationPolicy": "Background",
            },
            headers=system.headers(),
        ) as response:
            assert response.status == 200, await response.text()
        assert time.monotonic() - submitted < 1 / rate  # cancelled before the next token
        answer = await system.wait_for("echo", queued)
        assert answer["status"] == "CANCELLED"
        assert "changed my mind (by alice)" in answer["runErrorMessage"]
        # A run submitted now waits behind the cancelled one: once it runs, the dispatcher
        # has had the cancelled run's token and passed it by. Until then, and for a while
        # after that token was due, the cancelled run has no Job.
        later = await system.submit("echo")
        due = running + 1 / rate + 1.0
        while time.monotonic() < due or (await system.result("echo", later))["status"] != "RUNNING":
            assert job_of(system, "shard-0", queued) is None
            assert time.monotonic() < running + 3 / rate + 5, "the later run never ran"
            await asyncio.sleep(0.05)
        # nor had it one for a moment: the shard stored Jobs for the other two runs only
        assert sorted(created) == sorted([first, later])
        assert sample("nexus_job_creates_total", shard="shard-0", outcome="created") == (
            creates_before + 2
        )
        assert sample("nexus_job_creates_total", shard="shard-0", outcome="exists") == (
            exists_before
        )
        assert (await system.result("echo", queued))["status"] == "CANCELLED"
        # cancelling again, or cancelling anything finished, is a conflict that changes nothing
        async with system.session.post(
            f"{system.url}/algorithm/v1.2/cancel/echo/requests/{queued}",
            json={},
            headers=system.headers(),
        ) as response:
            assert response.status == 409
            assert (await response.json())["error"] == "conflict"


async def test_cancel_after_dispatch_deletes_the_job(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="process")],
        templates=[template("maybe-fail", command=MAYBE_FAIL)],
    ) as system:
        request_id = await system.submit(
            "maybe-fail", {"algorithmParameters": {"sleepSeconds": 30}}
        )
        await system.wait_for("maybe-fail", request_id, "RUNNING")
        job = job_of(system, "shard-0", request_id)
        assert job is not None
        env = env_of(job)  # what the container reports its completion with
        assert env["NEXUS__RUN_TOKEN"] == Signer((SIGNING_KEY,)).run_token("maybe-fail", request_id)
        async with system.session.post(
            f"{system.url}/algorithm/v1.2/cancel/maybe-fail/requests/{request_id}",
            json={"reason": "too slow", "initiator": "bob", "cancellationPolicy": "Foreground"},
            headers=system.headers(),
        ) as response:
            assert response.status == 200
        answer = await system.result("maybe-fail", request_id)
        assert answer["status"] == "CANCELLED"
        for _ in range(100):
            if job_of(system, "shard-0", request_id) is None:
                break
            await asyncio.sleep(0.05)
        assert job_of(system, "shard-0", request_id) is None
        # the container's late completion, with its valid run token, cannot move a cancelled
        # run: the receiver answers with the run's status and records nothing
        async with system.session.post(
            f"{env['NEXUS__RECEIVER_URL']}/algorithm/v1.2/complete/maybe-fail/requests/{request_id}",
            json={"cause": None, "message": None, "sasUri": None},
            headers={"Authorization": f"Bearer {env['NEXUS__RUN_TOKEN']}"},
        ) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"requestId": request_id, "status": "CANCELLED"}
        answer = await system.result("maybe-fail", request_id)
        assert answer["status"] == "CANCELLED" and answer["resultUri"] is None, answer
        _, metadata = await system.get(f"/algorithm/v1.2/metadata/maybe-fail/requests/{request_id}")
        assert metadata["lifecycleStage"] == "CANCELLED" and metadata["resultUri"] is None


# -- tags, idempotency, parents ----------------------------------------------------------------


async def test_results_by_tag_and_idempotency(servers: Servers) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:
        tagged = {
            await system.submit("echo", {"algorithmParameters": {"i": i}, "tag": "batch-7"})
            for i in range(3)
        }
        other = await system.submit("echo", {"algorithmParameters": {}, "tag": "batch-8"})
        for request_id in [*tagged, other]:
            await system.wait_for("echo", request_id)
        status, listed = await system.get("/algorithm/v1.2/results/echo/tags/batch-7")
        assert status == 200
        assert {r["requestId"] for r in listed} == tagged
        assert all(r["status"] == "COMPLETED" and r["resultUri"] for r in listed)
        status, listed = await system.get("/algorithm/v1.2/results/echo/tags/nothing-here")
        assert (status, listed) == (200, [])

        first = await system.submit(
            "echo", {"algorithmParameters": {"n": 1}}, **{"Idempotency-Key": "order-42"}
        )
        before = await system.stored()
        again = await system.submit(
            "echo", {"algorithmParameters": {"n": 1}}, **{"Idempotency-Key": "order-42"}
        )
        assert first == again
        assert await system.stored() == before  # the repeat created nothing
        # a key names a run of one caller: another caller's same key is its own run
        theirs = await system.submit(
            "echo",
            {"algorithmParameters": {"n": 1}},
            token=OTHER_TOKEN,
            **{"Idempotency-Key": "order-42"},
        )
        assert theirs != first
        await system.wait_for("echo", first)
        assert job_of(system, "shard-0", first) is not None
        different = await system.submit(
            "echo", {"algorithmParameters": {"n": 1}}, **{"Idempotency-Key": "order-43"}
        )
        assert different != first


def _child(parent: str, algorithm: str, **parameters: Any) -> dict[str, Any]:
    return {
        "algorithmParameters": parameters,
        "parentRequest": {"requestId": parent, "algorithmName": algorithm},
    }


async def test_a_childs_job_outlives_its_parents_job(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="process")],
        templates=[template("maybe-fail", command=MAYBE_FAIL), template("echo")],
    ) as system:
        parent = await system.submit("maybe-fail", {"algorithmParameters": {"sleepSeconds": 30}})
        await system.wait_for("maybe-fail", parent, "RUNNING")
        child = await system.submit("maybe-fail", _child(parent, "maybe-fail", sleepSeconds=2))
        await system.wait_for("maybe-fail", child, "RUNNING")
        job = job_of(system, "shard-0", child)
        assert job is not None
        assert not job["metadata"].get("ownerReferences")  # its own: not the parent's
        assert job["metadata"]["labels"][PARENT_LABEL] == parent
        env = {
            e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["NEXUS__PARENT_REQUEST_ID"] == parent
        assert env["NEXUS__PARENT_ALGORITHM_NAME"] == "maybe-fail"
        _status, metadata = await system.get(
            f"/algorithm/v1.2/metadata/maybe-fail/requests/{child}"
        )
        assert metadata["parent"] == {"requestId": parent, "algorithmName": "maybe-fail"}
        # the parent's Job goes (its TTL, kubectl delete) while the child runs: Kubernetes'
        # garbage collector leaves the child's Job alone, and the child completes
        shard = system.cluster["shard-0"]
        async with system.session.delete(
            f"{shard.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{parent}",
            json={"propagationPolicy": "Background"},
            headers={"Authorization": f"Bearer {shard.token}"},
        ) as response:
            assert response.status == 200, await response.text()
        assert (await system.wait_for("maybe-fail", child))["status"] == "COMPLETED"
        assert job_of(system, "shard-0", parent) is None


async def test_cancelling_a_parent_cancels_every_child_queued_running_on_any_shard(
    servers: Servers,
) -> None:
    async with local_system(
        servers,
        shards=[
            ShardSpec(name="shard-0", mode="process"),
            ShardSpec(name="shard-1", mode="off"),  # Jobs made, pods never start
            ShardSpec(name="shard-2", mode="simulated"),
        ],
        workgroups=[("default", "shard-0"), ("far", "shard-1"), ("slow", "shard-2")],
        templates=[
            template("maybe-fail", command=MAYBE_FAIL),
            template("far", workgroup="far"),
            template("slow", workgroup="slow"),
        ],
        create_rate={"shard-2": 0.001},  # a Job a quarter of an hour: runs there stay queued
    ) as system:
        parent = await system.submit("maybe-fail", {"algorithmParameters": {"sleepSeconds": 30}})
        unrelated = await system.submit("maybe-fail", {"algorithmParameters": {"sleepSeconds": 30}})
        blocker = await system.submit("slow")  # takes shard-2's one token
        await system.wait_for("maybe-fail", parent, "RUNNING")
        await system.wait_for("slow", blocker, "RUNNING", "COMPLETED")
        running = await system.submit("maybe-fail", _child(parent, "maybe-fail", sleepSeconds=30))
        elsewhere = await system.submit("far", _child(parent, "maybe-fail"))
        queued = await system.submit("slow", _child(parent, "maybe-fail"))
        await system.wait_for("maybe-fail", running, "RUNNING")
        await system.wait_for("far", elsewhere, "RUNNING")
        # a grandchild, queued, below the running child
        grandchild = await system.submit("slow", _child(running, "maybe-fail"))
        for algorithm, request_id in (("slow", queued), ("slow", grandchild)):
            assert (await system.result(algorithm, request_id))["status"] == "BUFFERED"
        assert job_of(system, "shard-0", running) is not None
        assert job_of(system, "shard-1", elsewhere) is not None

        status, body, _ = await system.call(
            "POST",
            f"/algorithm/v1.2/cancel/maybe-fail/requests/{parent}",
            json={"reason": "wrong input", "initiator": "planner"},
        )
        assert status == 200, body
        for algorithm, request_id in (
            ("maybe-fail", running), ("far", elsewhere), ("slow", queued), ("slow", grandchild),
        ):  # fmt: skip
            answer = await system.result(algorithm, request_id)
            assert answer["status"] == "CANCELLED", (algorithm, answer)
            message = answer["runErrorMessage"]
            assert f"parent run {parent}" in message and "wrong input (by planner)" in message
        assert job_of(system, "shard-0", running) is None
        assert job_of(system, "shard-1", elsewhere) is None
        assert job_of(system, "shard-2", queued) is None  # never made
        assert (await system.result("maybe-fail", unrelated))["status"] == "RUNNING"


# -- shards, throttling, scheduler pods --------------------------------------------------------


async def test_runs_land_on_the_shard_of_their_workgroup(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-a"), ShardSpec(name="shard-b")],
        workgroups=[("group-a", "shard-a"), ("group-b", "shard-b")],
        templates=[
            template("echo-a", workgroup="group-a"),
            template("echo-b", workgroup="group-b"),
        ],
    ) as system:
        on_a = await system.submit("echo-a")
        on_b = await system.submit("echo-b")
        moved = await system.submit(
            "echo-a", {"algorithmParameters": {}, "customConfiguration": {"workgroup": "group-b"}}
        )
        for algorithm, request_id in (("echo-a", on_a), ("echo-b", on_b), ("echo-a", moved)):
            assert (await system.wait_for(algorithm, request_id))["status"] == "COMPLETED"
        assert job_of(system, "shard-a", on_a) and not job_of(system, "shard-b", on_a)
        assert job_of(system, "shard-b", on_b) and not job_of(system, "shard-a", on_b)
        assert job_of(system, "shard-b", moved) and not job_of(system, "shard-a", moved)
        _, metadata = await system.get(f"/algorithm/v1.2/metadata/echo-a/requests/{moved}")
        assert metadata["shard"] == "shard-b"
        assert metadata["appliedConfiguration"]["workgroup"] == "group-b"


@pytest.mark.slow
async def test_a_throttled_shard_slows_down_and_every_run_completes(servers: Servers) -> None:
    # The API server takes 20 creations a second (5 at once); the scheduler was told 200
    # (20 at once): it meets 429s, and must slow down to what the shard takes.
    limit, shard_burst, told, told_burst = 20, 5, 200, 20
    limited = ShardSpec(
        name="shard-0", limits=Limits(mutating_rate=limit, mutating_burst=shard_burst)
    )
    async with local_system(
        servers,
        shards=[limited],
        templates=[template("echo")],
        create_rate={"shard-0": told},
        section={"throttle_burst": told_burst / told},
    ) as system:
        throttled_before = sample("nexus_job_creates_total", shard="shard-0", outcome="throttled")
        factors: list[float] = []

        async def watch_the_rate_factor() -> None:
            while True:
                factors.append(sample("nexus_throttle_rate_factor", shard="shard-0"))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_the_rate_factor())
        started = time.monotonic()
        try:
            ids = await asyncio.gather(
                *(system.submit("echo", {"algorithmParameters": {"i": i}}) for i in range(60))
            )
            for request_id in ids:
                answer = await system.wait_for("echo", request_id, timeout=60)
                assert answer["status"] == "COMPLETED", answer
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        elapsed = time.monotonic() - started
        assert all(job_of(system, "shard-0", i) for i in ids)
        accepted, refused = shard_creations(system, "shard-0")
        assert accepted == len(ids)
        # every 429 reached the dispatcher, which put the run back (none retried blindly)
        throttled = sample("nexus_job_creates_total", shard="shard-0", outcome="throttled")
        assert refused >= 1 and throttled - throttled_before == refused
        # the throttle slowed every pod down...
        assert factors and min(factors) < 1, factors[:5]
        # ...so the shard saw creations at about its own rate: its limit over the test, its
        # burst, and the one burst the scheduler sends before any 429 can reach it
        allowed = limit * elapsed + shard_burst + told_burst
        assert accepted + refused <= allowed, (accepted, refused, elapsed)


async def test_a_scheduler_stopped_mid_load_hands_its_queue_over(servers: Servers) -> None:
    async with local_system(
        servers,
        schedulers=2,
        templates=[template("echo")],
        create_rate={"shard-0": 40},
    ) as system:
        first, second = system.schedulers
        ids = await asyncio.gather(
            *(
                system.submit("echo", {"algorithmParameters": {"i": i}}, url=first.url)
                for i in range(80)
            )
        )
        # 80 runs at 40 a second: most are still waiting on the first pod's queue when it
        # stops, and only the hand-over can get them to the second
        queues = second.app[SCHEDULER].queues  # the first pod's client closes when it stops
        first_queue, second_queue = queues.queue(first.pod), queues.queue(second.pod)
        # a run is answered once durable and pushed within queue_push_delay after
        for _ in range(100):
            if await first_queue.depth("shard-0") > 0:
                break
            await asyncio.sleep(0.02)
        assert await first_queue.depth("shard-0") > 0
        await first.stop()
        assert await first_queue.depth("shard-0") == 0
        assert await second_queue.depth("shard-0") > 0
        for request_id in ids:
            answer = await system.wait_for("echo", request_id, timeout=60)
            assert answer["status"] == "COMPLETED", answer
        pods = await second.app[SCHEDULER].queues.pods()
        assert first.pod not in pods.live + pods.dead


# -- links -------------------------------------------------------------------------------------


async def test_input_links_are_refused_once_altered_or_expired(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("inline"), template("stored", inline=False)],
    ) as system:
        parameters = {"secret": 42}
        for algorithm in ("inline", "stored"):
            # valid for 2 h, where the template says 1 h: the request's validity is the one
            asked = time.time()
            request_id = await system.submit(
                algorithm, {"algorithmParameters": parameters, "payloadValidFor": "2h"}
            )
            url = await payload_redirect(system, algorithm, request_id)
            await system.wait_for(algorithm, request_id, "RUNNING")
            job = job_of(system, "shard-0", request_id)
            assert job is not None
            handed = input_urls_of(job)
            assert len(handed) == 1, handed
            for link in (url, *handed):  # to the client, and to the algorithm's container
                _assert_valid_for(link, 7200, asked, time.time())
            async with system.session.get(url) as response:
                assert response.status == 200, algorithm
                assert orjson.loads(await response.read()) == parameters
            altered_urls = _altered(url)
            assert len(altered_urls) == 2, url  # its signature changed, its expiry pushed out
            for altered in altered_urls:
                async with system.session.get(altered) as response:
                    assert response.status == 403, (algorithm, altered)
        # an expired link, signed by the scheduler's own key an hour ago
        request_id = await system.submit("inline", {"algorithmParameters": parameters})
        path = f"/algorithm/v1.2/payload/inline/requests/{request_id}/content"
        old = Signer((SIGNING_KEY,)).sign_path(path, 60, now=time.time() - 3600)
        async with system.session.get(system.url + old) as response:
            assert response.status == 403
            assert "expired" in (await response.json())["message"]
        # a presigned S3 URL signed an hour ago for a minute is refused for its age; the
        # same URL signed now is taken
        stored = await system.submit("stored", {"algorithmParameters": parameters})
        key = f"inputs/algorithm=stored/{stored}"
        signer = sigv4.Signer(
            servers.s3.access_key_id, servers.s3.secret_access_key, servers.s3.region
        )
        expired = signer.presign(
            "GET", servers.s3.url(key), expires_in=60, now=datetime.now(UTC) - timedelta(hours=1)
        )
        async with system.session.get(expired) as response:
            assert response.status == 403
            error = ElementTree.fromstring(await response.read())
            assert error.findtext("Code") == "AccessDenied", await response.text()
            assert error.findtext("Message") == "Request has expired", await response.text()
        fresh = signer.presign("GET", servers.s3.url(key), expires_in=60)
        async with system.session.get(fresh) as response:
            assert response.status == 200, await response.text()
            assert orjson.loads(await response.read()) == parameters


async def test_clients_and_containers_get_urls_of_their_own_address_of_storage(
    servers: Servers,
) -> None:
    """Clients outside the containers' network reach storage by another address: each is
    handed URLs signed for its own, and each URL works there."""
    public = servers.s3.endpoint_url.replace("127.0.0.1", "localhost")
    async with local_system(
        servers,
        templates=[template("stored", inline=False)],
        storage={"client_presign_endpoint_url": public},
    ) as system:
        # a result too large to be reported inline: it is PUT to storage too
        parameters = {"where": "in storage", "padding": "x" * (300 * 1024)}
        request_id = await system.submit("stored", {"algorithmParameters": parameters})
        answer = await system.wait_for("stored", request_id)  # the pod used its own URLs
        assert answer["status"] == "COMPLETED", answer
        job = job_of(system, "shard-0", request_id)
        assert job is not None
        upload = env_of(job)["NEXUS__RESULT_UPLOAD_URL"]
        for url in (*input_urls_of(job), upload):
            assert url.startswith(servers.s3.endpoint_url + "/"), url
        redirect = await payload_redirect(system, "stored", request_id)
        for url, expected in ((redirect, parameters), (answer["resultUri"], parameters)):
            assert url.startswith(public + "/"), url
            async with system.session.get(url) as response:
                assert response.status == 200, await response.text()
                assert orjson.loads(await response.read()) == expected


def _assert_valid_for(url: str, seconds: int, before: float, after: float) -> None:
    """``url`` was made between ``before`` and ``after`` (epoch seconds) to be valid for
    ``seconds``: an S3 URL by its X-Amz-Date and X-Amz-Expires, a scheduler's link by its
    ``expires`` (the time it expires)."""
    query = dict(parse_qsl(urlsplit(url).query))
    if "X-Amz-Expires" in query:
        assert query["X-Amz-Expires"] == str(seconds), url
        signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert int(before) <= signed.timestamp() <= after, url
    else:
        assert int(before) + seconds <= int(query["expires"]) <= after + seconds, url


def _altered(url: str) -> list[str]:
    """The URL with its signature changed, and with its expiry pushed out."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    changed = []
    for index, (name, value) in enumerate(query):
        if name.lower() in ("signature", "x-amz-signature"):
            flipped = ("0" if value[0] != "0" else "1") + value[1:]
            changed.append([*query[:index], (name, flipped), *query[index + 1 :]])
        if name.lower() in ("expires", "x-amz-expires"):
            changed.append([*query[:index], (name, str(int(value) + 1000)), *query[index + 1 :]])
    return [urlunsplit(parts._replace(query=urlencode(q))) for q in changed]


async def test_metadata_shows_the_queue_position_while_queued(servers: Servers) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo")],
        create_rate={"shard-0": 0.1},
    ) as system:
        first = await system.submit("echo")
        await system.wait_for("echo", first, "RUNNING")
        waiting = [await system.submit("echo") for _ in range(3)]
        await asyncio.sleep(0.2)  # the dispatcher has taken what it could
        positions = []
        for request_id in waiting:
            status, metadata = await system.get(
                f"/algorithm/v1.2/metadata/echo/requests/{request_id}"
            )
            assert status == 200
            positions.append(metadata["queuePosition"])
        # the oldest may be in flight, waiting for a token; the others queue in order, at
        # consecutive positions from the head of the queue
        ranked = [p for p in positions if p is not None]
        assert positions[len(waiting) - len(ranked) :] == ranked, positions
        assert ranked == list(range(len(ranked))) and len(ranked) >= 2, positions


async def test_a_full_queue_answers_429_with_retry_after_and_stores_nothing(
    servers: Servers,
) -> None:
    # one creation every 10 s and room for two waiting runs: the queue fills at once
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo", inline=False)],  # a refusal must not leave an input behind
        create_rate={"shard-0": 0.1},
        section={"max_queue_depth": 2},
    ) as system:
        first = await system.submit("echo")
        await system.wait_for("echo", first, "RUNNING")
        accepted = [first]
        body = {"algorithmParameters": {"late": True}}
        deadline = time.monotonic() + 15
        while True:  # the depth the limit is held to is measured once a second
            before = await system.stored()
            status, answer, headers = await system.call(
                "POST", "/algorithm/v1.2/run/echo", json=body
            )
            if status != 202 or time.monotonic() > deadline:
                break
            accepted.append(answer["requestId"])
            await asyncio.sleep(0.2)
        assert status == 429, answer
        assert answer["error"] == "overloaded" and "shard-0" in answer["message"]
        assert headers["Retry-After"] == "10"
        assert await system.stored() == before
        assert len(accepted) >= 3
        for request_id in accepted:  # what was accepted stays, waiting its turn
            assert (await system.result("echo", request_id))["status"] in ("BUFFERED", "RUNNING")
        status, _ = await system.get("/health/ready")
        assert status == 200


async def test_a_saturated_store_answers_503_with_retry_after_and_stores_nothing(
    servers: Servers,
) -> None:
    # one checkpoint write may wait at a time, and each waits 50 ms for company; one
    # creation every 10 s keeps the dispatcher's own writes out of the way
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo", inline=False)],
        create_rate={"shard-0": 0.1},
        store={"max_pending": 1, "batch_max_delay": 0.05},
    ) as system:
        answers = await asyncio.gather(
            *(
                system.call("POST", "/algorithm/v1.2/run/echo", json={"algorithmParameters": {}})
                for _ in range(20)
            )
        )
        accepted = [body["requestId"] for status, body, _ in answers if status == 202]
        refused = [(body, headers) for status, body, headers in answers if status != 202]
        assert accepted and refused
        for body, headers in refused:
            assert body["error"] in ("overloaded", "unavailable"), body
            assert "checkpoint store" in body["message"]
            assert int(headers["Retry-After"]) > 0
        rows, inputs = await system.stored()
        assert rows == len(accepted)  # only what was acknowledged is stored, inputs included
        assert sorted(key.rsplit("/", 1)[-1] for key in inputs) == sorted(accepted)


async def test_an_input_stays_when_its_runs_write_may_have_landed(servers: Servers) -> None:
    """A checkpoint write that fails after it was sent (here: it times out behind a lock)
    may have landed, so the run's input is kept: a run that exists never loses its input.
    The client is told 503 all the same."""
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo", inline=False)],
        store={"command_timeout": 1.0},
    ) as system:
        rows, inputs = await system.stored()
        holder = await asyncpg.connect(servers.postgres_dsn)
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
                status, body, _ = await system.call(
                    "POST", "/algorithm/v1.2/run/echo", json={"algorithmParameters": {}}
                )
        finally:
            await holder.close()
        assert (status, body["error"]) == (503, "unavailable"), (status, body)
        after_rows, after_inputs = await system.stored()
        assert after_rows == rows and len(after_inputs) == len(inputs) + 1


async def test_templates_and_workgroups_are_followed_while_the_scheduler_runs(
    servers: Servers,
) -> None:
    async def status_of_a_submit(algorithm: str, body: dict[str, Any]) -> tuple[int, Any]:
        status, answer, _ = await system.call("POST", f"/algorithm/v1.2/run/{algorithm}", json=body)
        return status, answer

    async def eventually(algorithm: str, body: dict[str, Any], status: int) -> Any:
        deadline = time.monotonic() + 10
        while True:  # the scheduler learns of the change through its watch
            seen, answer = await status_of_a_submit(algorithm, body)
            if seen == status or time.monotonic() > deadline:
                assert seen == status, answer
                return answer
            await asyncio.sleep(0.1)

    async with local_system(servers, templates=[]) as system:
        plain = {"algorithmParameters": {"x": 1}}
        answer = await eventually("echo", plain, 404)
        assert answer["error"] == "unknown_algorithm"
        await system.apply("shard-0", template("echo"))
        request_id = (await eventually("echo", plain, 202))["requestId"]
        assert (await system.wait_for("echo", request_id))["status"] == "COMPLETED"
        # a workgroup added later can be chosen as soon as it is seen
        moved = {"algorithmParameters": {}, "customConfiguration": {"workgroup": "late"}}
        assert (await eventually("echo", moved, 400))["error"] == "invalid_configuration"
        await system.apply("shard-0", workgroup("late", "shard-0"))
        request_id = (await eventually("echo", moved, 202))["requestId"]
        _, metadata = await system.get(f"/algorithm/v1.2/metadata/echo/requests/{request_id}")
        assert metadata["appliedConfiguration"]["workgroup"] == "late"
        await system.remove("shard-0", "NexusAlgorithmTemplate", "echo")
        assert (await eventually("echo", plain, 404))["error"] == "unknown_algorithm"


async def test_runs_wait_for_a_shard_that_cannot_be_reached(servers: Servers) -> None:
    """A shard that cannot be reached cannot say whether a failed call made the Job, so
    its runs are tried again past ``max_dispatch_attempts``, not failed, and complete once
    it is back. (A shard that answers, and has no Job, fails them: test_dispatching.py.)"""
    async with local_system(servers, templates=[template("echo")], schedulers=0) as system:
        proxy = Proxy(system.cluster["shard-0"].port)
        await proxy.start()
        try:
            through = proxied_kubeconfigs(
                system, servers.tmp_path / "through-proxy", {"shard-0": proxy}
            )
            await system.start_scheduler(
                kubeconfig_dir=through,
                retry_base_delay=0.1,
                retry_max_delay=0.3,
                max_dispatch_attempts=2,
            )
            proxy.cut()  # the shard's API server cannot be reached
            waiting = [await system.submit("echo") for _ in range(2)]
            deadline = time.monotonic() + 15
            while True:  # until both have failed more often than their last attempt
                stages = []
                for request_id in waiting:
                    path = f"/algorithm/v1.2/metadata/echo/requests/{request_id}"
                    _, metadata = await system.get(path)
                    stages.append((metadata["lifecycleStage"], metadata["attempts"]))
                if all(a > 3 for _, a in stages) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert all(stage == "BUFFERED" and a > 3 for stage, a in stages), stages
            proxy.restore()
            for request_id in waiting:
                answer = await system.wait_for("echo", request_id, timeout=15)
                assert answer["status"] == "COMPLETED", answer
        finally:
            await proxy.stop()


async def test_a_job_the_shard_refuses_fails_its_run_with_the_shards_message(
    servers: Servers,
) -> None:
    # Nexus passes the template's environment on as it is; the API server wants names
    refused = template(
        "echo",
        runtimeEnvironment={
            "deadlineSeconds": 60,
            "maximumRetries": 0,
            "environmentVariables": [{"name": "", "value": "x"}],
        },
    )
    async with local_system(servers, templates=[refused]) as system:
        request_id = await system.submit("echo")
        answer = await system.wait_for("echo", request_id)
        assert answer["status"] == "SCHEDULING_TIMEOUT", answer
        message = answer["runErrorMessage"]
        assert "refused the job: 422" in message and "env[0].name" in message, message
        _, metadata = await system.get(f"/algorithm/v1.2/metadata/echo/requests/{request_id}")
        assert metadata["attempts"] == 0  # not tried again: it would be refused again
        assert job_of(system, "shard-0", request_id) is None


async def test_a_run_whose_configuration_cannot_make_a_job_fails_alone(servers: Servers) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:
        scheduler = system.schedulers[0]
        state = scheduler.app[SCHEDULER]
        broken = NewRun(
            algorithm="echo",
            id=uuid.uuid4(),
            stage=Stage.BUFFERED,
            caller="someone",
            received_by_host=scheduler.pod,
            applied_configuration={"shard": "shard-0", "workgroup": "default"},  # no image
            payload_valid_for=timedelta(hours=1),
            payload_inline=b"{}",
        )
        await state.store.insert(broken)
        await state.queues.queue(scheduler.pod).push([QueuedRun("shard-0", broken.key, 0.0)])
        healthy = await system.submit("echo")
        answer = await system.wait_for("echo", str(broken.id), token=OPS_TOKEN)
        assert answer["status"] == "SCHEDULING_TIMEOUT"
        assert "cannot make a Job" in answer["runErrorMessage"]
        assert (await system.wait_for("echo", healthy))["status"] == "COMPLETED"


async def test_an_input_whose_run_was_not_stored_after_all_is_deleted(servers: Servers) -> None:
    """The checkpoint write is sent and times out (the runs table is locked for longer
    than the store's command timeout): the client hears 503, and the input uploaded for
    it stays while the run may exist. Once the store answers, there is no run, and the
    input goes; a run that was stored keeps its input."""
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo-stored", inline=False)],
        store={"command_timeout": 1.0},
    ) as system:
        kept = await system.submit("echo-stored", {"algorithmParameters": {"n": 1}})
        before = await system.stored()
        assert before[0] == 1 and len(before[1]) == 1
        locker = await asyncpg.connect(system.postgres_dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
                status, body, _ = await system.call(
                    "POST",
                    "/algorithm/v1.2/run/echo-stored",
                    json={"algorithmParameters": {"n": 2}},
                )
                assert (status, body["error"]) == (503, "unavailable"), body
                assert system.bucket is not None
                inputs = {k for k in system.bucket.keys() if "inputs/" in k}  # noqa: SIM118
                assert len(inputs) == 2  # kept for now: the run may have been stored
                await asyncio.sleep(3)  # the store stays locked past the first look
        finally:
            await locker.close()
        for _ in range(100):  # the next look, after its backoff
            stored = await system.stored()
            if stored == before:
                break
            await asyncio.sleep(0.2)
        assert stored == before
        assert (await system.result("echo-stored", kept))["status"] in ("BUFFERED", "RUNNING")
