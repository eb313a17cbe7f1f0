"""Dispatch against a stand-in shard that answers what each test needs: server errors,
refusals, 429 with its Retry-After, a failed call that made the Job all the same, a run
cancelled while it waits for a creation token or while its Job is created.

The checkpoint store, the queue and the object store are the real local servers; only the
shard's API server is played, by a small HTTP server that records every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yarl
from aiohttp import web
from harness import S3Bucket
from support.proxy import Proxy
from support.standin import refused_address, stand_in_shard, write_kubeconfig
from support.system import template, workgroup

from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, RedisSettings, StorageSettings
from nexus.core.errors import StoreUnavailable
from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import Checkpoint, NewRun, RunKey, Stage, Transition
from nexus.core.shards import ShardClient
from nexus.core.signing import Signer
from nexus.core.storage import PayloadStore
from nexus.core.templates import apply, parse_template, parse_workgroup
from nexus.core.visibility import SYSTEM
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.dispatching import Dispatcher, Outcome
from nexus.scheduler.links import Links
from nexus.scheduler.settings import SchedulerSection
from nexus.scheduler.throttling import ShardThrottle

SHARD = "shard-0"
NAMESPACE = "runs"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    made: bool = False
    """The Job is created although the answer says otherwise (a 5xx after the write)."""


@dataclass
class StandIn:
    """The shard's API server: answers creations from ``answers`` in turn (201 once they
    are used up), keeps the Jobs it made, and records every call."""

    answers: list[Answer] = field(default_factory=list)
    get_answers: list[Answer] = field(default_factory=list)
    """Answers to reads, in turn, before the Jobs it keeps are served."""
    delete_answer: Answer | None = None
    on_create: Callable[[str], Awaitable[None]] | None = None
    created_at: list[tuple[float, str]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "")
        if request.method == "POST":
            job = orjson.loads(await request.read())
            name = job["metadata"]["name"]
            self.created_at.append((time.monotonic(), name))
            if self.on_create is not None:
                await self.on_create(name)
            answer = self.answers.pop(0) if self.answers else Answer(201, made=True)
            if answer.made:
                job["metadata"]["uid"] = f"uid-{name}"
                self.jobs[name] = job
            body = answer.body or orjson.dumps(job)
            return web.Response(status=answer.status, body=body, headers=answer.headers)
        if request.method == "DELETE":
            self.deleted.append(name)
            if self.delete_answer is not None:
                a = self.delete_answer
                return web.Response(status=a.status, body=a.body, headers=a.headers)
            found = self.jobs.pop(name, None)
            return web.json_response(found or _status(404), status=200 if found else 404)
        self.reads.append(name)
        if self.get_answers:
            a = self.get_answers.pop(0)
            return web.Response(status=a.status, body=a.body, headers=a.headers)
        found = self.jobs.get(name)
        return web.json_response(found or _status(404), status=200 if found else 404)

    def creations(self, name: str) -> int:
        return sum(1 for _, n in self.created_at if n == name)


def _status(code: int, message: str = "not found") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "code": code, "message": message}


@dataclass
class Dispatch:
    stand_in: StandIn
    store: CheckpointStore
    backend: QueueBackend
    dispatcher: Dispatcher
    catalog: Catalog
    stopping: asyncio.Event
    task: asyncio.Task[None]

    async def submit(self, config: dict[str, Any] | None = None) -> NewRun:
        config = config or apply(self.catalog.templates["echo"], {}, self.catalog.workgroups)
        run = NewRun(
            algorithm="echo",
            id=uuid.uuid4(),
            stage=Stage.BUFFERED,
            caller="tester",
            received_by_host="test-host",
            applied_configuration=config,
            payload_valid_for=timedelta(hours=1),
            payload_inline=b'{"x": 1}',
        )
        await self.store.insert(run)
        await self.backend.queue("pod-a").push([QueuedRun(SHARD, run.key, time.time() * 1000)])
        self.dispatcher.notify(SHARD)
        return run

    async def checkpoint(self, run: NewRun) -> Checkpoint:
        found = await self.store.get(run.algorithm, run.id, SYSTEM)
        assert found is not None
        return found

    async def settled(self, run: NewRun, stage: Stage, timeout: float = 10.0) -> Checkpoint:
        """The run's checkpoint once it is in ``stage`` and off the in-flight set."""
        deadline = time.monotonic() + timeout
        while True:
            assert not self.task.done(), self.task  # the dispatcher must not have stopped
            found = await self.checkpoint(run)
            off_queue = await self.backend.missing(SHARD, [run.key], ["pod-a"])
            if found.stage == stage and off_queue:  # neither queued nor in flight
                return found
            assert time.monotonic() < deadline, (found.stage, found.failure_details, off_queue)
            await asyncio.sleep(0.05)


@asynccontextmanager
async def dispatching(
    postgres_dsn: str,
    redis_url: str,
    redis_prefix: str,
    s3: S3Bucket,
    tmp_path: Path,
    stand_in: StandIn,
    *,
    rate: float = 1000.0,
    **section: Any,
) -> AsyncIterator[Dispatch]:
    app = web.Application()
    for path in (JOBS, JOBS + "/{name}"):
        app.router.add_route("*", path, stand_in.handle)
    async with stand_in_shard(app, tmp_path) as kubeconfig:
        catalog = Catalog()
        catalog.templates["echo"] = parse_template(template("echo"))
        catalog.workgroups["default"] = parse_workgroup(workgroup("default", SHARD))
        store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=4))
        backend = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
        payloads = await PayloadStore.open(
            StorageSettings(
                endpoint_url=s3.endpoint_url,
                region=s3.region,
                access_key_id=s3.access_key_id,
                secret_access_key=s3.secret_access_key,
                bucket=s3.bucket,
            )
        )
        shard = await ShardClient.from_kubeconfig(SHARD, kubeconfig, NAMESPACE, timeout=2.0)
        settings = SchedulerSection(
            pod_name="pod-a",
            dispatch_linger=0,
            dispatch_idle_poll=0.05,
            retry_base_delay=0.05,
            **section,
        )
        throttle = ShardThrottle(backend, SHARD, rate, burst_seconds=1 / rate, recovery=0.05)
        dispatcher = Dispatcher(
            queue=backend.queue("pod-a"),
            store=store,
            shards={SHARD: shard},
            throttles={SHARD: throttle},
            links=Links(payloads, Signer(["k" * 32]), settings),
            catalog=catalog,
            settings=settings,
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stopping))
        try:
            yield Dispatch(stand_in, store, backend, dispatcher, catalog, stopping, task)
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.shield(task), 10)
            for close in (shard.close, payloads.close, backend.close, store.close):
                await close()


@pytest.fixture
def options(
    postgres_dsn: str, redis_url: str, redis_prefix: str, s3: S3Bucket, tmp_path: Path
) -> tuple[str, str, str, S3Bucket, Path]:
    return postgres_dsn, redis_url, redis_prefix, s3, tmp_path


Options = tuple[str, str, str, S3Bucket, Path]


async def test_server_errors_and_401_are_retried_until_the_job_is_made(options: Options) -> None:
    stand_in = StandIn(answers=[Answer(503, b'{"message": "etcd timed out"}'), Answer(401, b"{}")])
    async with dispatching(*options, stand_in) as d:
        run = await d.submit()
        stored = await d.settled(run, Stage.RUNNING)
        assert stand_in.creations(str(run.id)) == 3
        assert (stored.attempts, stored.job_uid, stored.shard) == (2, f"uid-{run.id}", SHARD)


async def test_a_run_whose_workgroup_is_gone_gets_no_job_without_its_placement(
    options: Options,
) -> None:
    """The workgroup's tolerations and affinity place the pods: a run whose workgroup was
    deleted (or became invalid) since it was accepted is tried again, so a workgroup being
    replaced is found, and failed once its attempts are used up."""
    stand_in = StandIn()
    async with dispatching(*options, stand_in, max_dispatch_attempts=4) as d:
        config = apply(d.catalog.templates["echo"], {}, d.catalog.workgroups)
        replaced = workgroup("default", SHARD)
        replaced["spec"]["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
        del d.catalog.workgroups["default"]
        waiting = await d.submit(config)
        for _ in range(250):  # until a first attempt was counted, for 5 s at most
            if (await d.checkpoint(waiting)).attempts >= 1:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the run was never tried")
        assert stand_in.creations(str(waiting.id)) == 0
        d.catalog.workgroups["default"] = parse_workgroup(replaced)  # back, as replaced
        await d.settled(waiting, Stage.RUNNING)
        job = stand_in.jobs[str(waiting.id)]
        assert job["spec"]["template"]["spec"]["tolerations"] == replaced["spec"]["tolerations"]
        del d.catalog.workgroups["default"]
        gone = await d.submit(config)
        failed = await d.settled(gone, Stage.SCHEDULING_FAILED)
        assert failed.failure_details is not None
        assert "workgroup 'default' is gone" in failed.failure_details, failed.failure_details
        assert stand_in.creations(str(gone.id)) == 0


async def test_a_refusal_fails_the_run_with_the_shards_message(options: Options) -> None:
    refusal = orjson.dumps(_status(422, 'Job.batch "x" is invalid: spec.template: Required'))
    stand_in = StandIn(answers=[Answer(422, refusal), Answer(400, b"<html>bad\x00</html>")])
    async with dispatching(*options, stand_in) as d:
        first, second = await d.submit(), await d.submit()
        failed = await d.settled(first, Stage.SCHEDULING_FAILED)
        assert (
            failed.failure_details is not None
            and "spec.template: Required" in failed.failure_details
        )
        # a body that is not a Status, with a NUL PostgreSQL text cannot hold
        failed = await d.settled(second, Stage.SCHEDULING_FAILED)
        assert failed.failure_details is not None and "bad\ufffd" in failed.failure_details
        third = await d.submit()  # and dispatch goes on
        await d.settled(third, Stage.RUNNING)


async def test_the_last_failed_attempt_looks_for_the_job(options: Options) -> None:
    """A create that failed for the last time may have made the Job: then the run runs."""
    stand_in = StandIn(answers=[Answer(504, b"{}", made=True), Answer(504, b"{}")])
    async with dispatching(*options, stand_in, max_dispatch_attempts=1) as d:
        made = await d.submit()
        running = await d.settled(made, Stage.RUNNING)
        assert running.job_uid == f"uid-{made.id}"
        lost = await d.submit()
        failed = await d.settled(lost, Stage.SCHEDULING_FAILED)
        assert failed.failure_details is not None and "after 1 attempts" in failed.failure_details


async def test_a_job_that_cannot_be_looked_up_is_not_failed(options: Options) -> None:
    """The last attempt failed and the shard cannot say whether it made the Job: the run
    is not failed (its Job may be running) but tried again, and a 409 then shows the Job."""
    stand_in = StandIn(
        answers=[Answer(504, b"{}", made=True), Answer(503, b"{}"), Answer(409, b"{}")],
        get_answers=[Answer(503, b"{}"), Answer(503, b"{}")],
    )
    async with dispatching(*options, stand_in, max_dispatch_attempts=1, retry_max_delay=0.2) as d:
        made = await d.submit()
        running = await d.settled(made, Stage.RUNNING)
        assert stand_in.creations(str(made.id)) == 3
        assert stand_in.reads == [str(made.id)] * 2
        assert running.attempts == 2  # two outcomes unknown, then the Job found


async def test_a_429_pauses_creations_for_its_retry_after(options: Options) -> None:
    stand_in = StandIn(answers=[Answer(429, b"{}", {"Retry-After": "2"})])
    async with dispatching(*options, stand_in) as d:
        run = await d.submit()
        stored = await d.settled(run, Stage.RUNNING)
        assert stored.attempts == 0  # a 429 is not a failed attempt
        (first, _), (second, _) = stand_in.created_at
        assert second - first >= 1.9


async def test_a_run_cancelled_while_it_waits_for_a_token_is_never_created(
    options: Options,
) -> None:
    async with dispatching(*options, StandIn(), rate=0.5, dispatch_batch=5) as d:
        runs = [await d.submit() for _ in range(3)]
        await d.settled(runs[0], Stage.RUNNING)  # the burst's one token
        queue = d.backend.queue("pod-a")
        for _ in range(500):  # until the second run is taken, and waits for a token
            if await queue.depth(SHARD) <= 1:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the second run was never taken off the queue")
        for run in runs[1:]:
            cancel = Transition(run.algorithm, run.id, Stage.CANCELLED, cause="cancelled")
            assert await d.store.transition(cancel)
        for run in runs[1:]:
            await d.settled(run, Stage.CANCELLED, timeout=8)
        await asyncio.sleep(0.5)
        assert [name for _, name in d.stand_in.created_at] == [str(runs[0].id)]


async def test_a_job_made_for_a_run_cancelled_meanwhile_is_deleted(options: Options) -> None:
    """The run is cancelled while its Job is created (the RUNNING write is then refused):
    the Job is deleted; a shard refusing the delete does not stop dispatch."""
    stand_in = StandIn()
    async with dispatching(*options, stand_in) as d:

        async def cancel(name: str) -> None:
            run = next(r for r in runs if str(r.id) == name)
            change = Transition(run.algorithm, run.id, Stage.CANCELLED, cause="cancelled")
            assert await d.store.transition(change)

        runs: list[NewRun] = []
        stand_in.on_create = cancel
        runs.append(await d.submit())
        await d.settled(runs[0], Stage.CANCELLED)
        assert stand_in.deleted == [str(runs[0].id)]
        assert str(runs[0].id) not in stand_in.jobs
        stand_in.delete_answer = Answer(429, b"{}", {"Retry-After": "1"})
        runs.append(await d.submit())
        await d.settled(runs[1], Stage.CANCELLED)
        await asyncio.sleep(0.3)
        assert stand_in.deleted == [str(r.id) for r in runs]
        stand_in.on_create = None
        runs.append(await d.submit())
        await d.settled(runs[2], Stage.RUNNING)


async def test_a_run_failed_while_its_job_was_created_keeps_the_jobs_facts(
    options: Options,
) -> None:
    """The maintainer fails the run (say its pod failed at once) while the RUNNING write
    is in flight: the run stays FAILED with its cause, and still names its Job."""
    stand_in = StandIn()
    async with dispatching(*options, stand_in) as d:

        async def failed_meanwhile(name: str) -> None:
            change = Transition(
                "echo", uuid.UUID(name), Stage.FAILED, cause="OOMKilled", details="exit 137"
            )
            assert await d.store.transition(change)

        stand_in.on_create = failed_meanwhile
        reads_after: list[object] = []  # the store's answer says where the run stands
        read = d.store.get_many

        async def counted(keys: Any, **options: Any) -> Any:
            keys = list(keys)
            if stand_in.created_at:
                reads_after.extend(keys)
            return await read(keys, **options)

        d.store.get_many = counted  # type: ignore[method-assign]
        run = await d.submit()
        stored = await d.settled(run, Stage.FAILED)
        for _ in range(50):  # the facts are written right after the refused RUNNING write
            stored = await d.checkpoint(run)
            if stored.job_uid is not None:
                break
            await asyncio.sleep(0.05)
        assert (stored.stage, stored.failure_cause) == (Stage.FAILED, "OOMKilled")
        assert stored.job_uid == f"uid-{run.id}" and stored.shard == SHARD
        assert stored.sent_at is not None
        assert stand_in.deleted == []  # a failed run's Job is kept (its logs say why)
        assert reads_after == []  # nor was the run read again to know it


async def test_a_job_whose_record_failed_is_undone_once_its_run_is_known_cancelled(
    options: Options,
) -> None:
    """The run is cancelled while its Job is created, and the store is cut off (every
    connection closed, none taken) before the RUNNING write: the batch is not recorded and
    the run is passed over when it comes back (it is not BUFFERED). Its Job is deleted
    all the same, once the store answers again; a run that is not cancelled gets its Job
    recorded."""
    postgres_dsn, *rest = options
    target = yarl.URL(postgres_dsn.replace("postgresql://", "http://", 1))
    proxy = Proxy(target.port or 5432)
    await proxy.start()
    proxied = postgres_dsn.replace(f":{target.port}/", f":{proxy.port}/", 1)
    stand_in = StandIn()
    reopening: list[asyncio.Task[None]] = []

    async def reopen() -> None:
        await asyncio.sleep(1.5)  # the store is down for a while
        proxy.restore()

    try:
        async with dispatching(proxied, *rest, stand_in) as d:  # type: ignore[arg-type]

            async def cancel_and_cut(name: str) -> None:
                if name != str(cancelled.id):
                    return
                change = Transition("echo", cancelled.id, Stage.CANCELLED, cause="cancelled")
                assert await d.store.transition(change)
                proxy.cut()
                reopening.append(asyncio.create_task(reopen()))

            stand_in.on_create = cancel_and_cut
            cancelled = await d.submit()
            deadline = time.monotonic() + 15
            while not stand_in.deleted:
                assert time.monotonic() < deadline, "the unrecorded job was never deleted"
                await asyncio.sleep(0.05)
            assert stand_in.deleted == [str(cancelled.id)] and not stand_in.jobs
            await asyncio.gather(*reopening)
            for _ in range(8):  # the pool's closed connections fail once each
                with contextlib.suppress(StoreUnavailable):
                    await d.settled(cancelled, Stage.CANCELLED)
                    break
            stand_in.on_create = None
            kept = await d.submit()
            assert (await d.settled(kept, Stage.RUNNING)).job_uid == f"uid-{kept.id}"
    finally:
        await proxy.stop()


async def test_a_failure_never_overwrites_a_run_another_pod_dispatched(options: Options) -> None:
    """Two pods may hold one run (its queue adopted while the first pod still lived): the
    one whose create is refused must not fail the run the other has started."""
    stand_in = StandIn(answers=[Answer(422, orjson.dumps(_status(422, "invalid")))])
    async with dispatching(*options, stand_in) as d:

        async def dispatched_elsewhere(name: str) -> None:
            change = Transition("echo", uuid.UUID(name), Stage.RUNNING, job_uid="other-pod")
            assert await d.store.transition(change)

        stand_in.on_create = dispatched_elsewhere
        run = await d.submit()
        await d.settled(run, Stage.RUNNING)
        await asyncio.sleep(0.3)  # the refusal's write has been made, or refused
        stored = await d.checkpoint(run)
        assert (stored.stage, stored.job_uid) == (Stage.RUNNING, "other-pod")


@pytest.mark.looptime
async def test_the_pop_loop_outlasts_a_redis_outage_of_any_length(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, looptime: float
) -> None:
    """Nothing answers at any dependency's address (connections are refused at once):
    the dispatch loop fails to pop 1,100 times in a row, more than 90 minutes of outage
    on a fake clock, where a back-off with an uncapped exponent overflowed at 1,024 and
    stopped the process. It waits its back-off every time, keeps at its 5 s cap, and
    stops cleanly when told to."""
    caplog.set_level(logging.WARNING, logger="nexus.scheduler.dispatching")
    down = refused_address()
    store = await CheckpointStore.open(
        PostgresSettings(dsn=f"postgresql://nexus@{down}/nexus", pool_min_size=0)
    )
    backend = QueueBackend.connect(RedisSettings(url=f"redis://{down}/0"))
    payloads = await PayloadStore.open(
        StorageSettings(
            endpoint_url=f"http://{down}", access_key_id="k", secret_access_key="s", bucket="b"
        )
    )
    shard = await ShardClient.from_kubeconfig(
        SHARD, write_kubeconfig(f"http://{down}", tmp_path), NAMESPACE
    )
    settings = SchedulerSection(pod_name="pod-a")
    dispatcher = Dispatcher(
        queue=backend.queue("pod-a"),
        store=store,
        shards={SHARD: shard},
        throttles={SHARD: ShardThrottle(backend, SHARD, 10, burst_seconds=1, recovery=0.05)},
        links=Links(payloads, Signer(["k" * 32]), settings),
        catalog=Catalog(),
        settings=settings,
    )

    def failed_pops() -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith("cannot pop the queue"))

    stopping = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stopping))
    try:
        while failed_pops() < 1_100:
            assert not task.done(), task
            await asyncio.sleep(60)
        assert not task.done(), task
        # 0.2 + 0.4 + 0.8 + 1.6 + 3.2, then 5 s between every two tries: no busy loop
        assert looptime >= 6.2 + 5.0 * (failed_pops() - 6)
    finally:
        stopping.set()
        await task  # returns: no error, however many failures
        for close in (shard.close, payloads.close, backend.close, store.close):
            await close()


class CountingQueue:
    """A queue that hands out ``runs`` (all at the first pop, or ``per_pop`` a pop), then
    nothing; it notes each pop (when, and the runs it settled) and each settle of its own."""

    def __init__(self, runs: list[QueuedRun], per_pop: int | None = None) -> None:
        self.runs = runs
        self.per_pop = per_pop
        self.pops: list[tuple[float, list[str]]] = []
        self.settles: list[list[str]] = []

    async def pop(self, shard: str, count: int, settle: Any = ()) -> list[QueuedRun]:
        self.pops.append((asyncio.get_running_loop().time(), [r.member for r in settle]))
        taken = len(self.runs) if self.per_pop is None else self.per_pop
        runs, self.runs = self.runs[:taken], self.runs[taken:]
        return runs

    async def settle(self, runs: Any) -> None:
        if runs:
            self.settles.append([r.member for r in runs])


class OneRunStore:
    """A store holding one BUFFERED run, which it takes 50 ms to read; every change applies."""

    def __init__(self, run: QueuedRun) -> None:
        now = datetime.now(UTC)
        self.checkpoint = Checkpoint(
            algorithm=run.key.algorithm, id=run.key.id, stage=Stage.BUFFERED, caller="tests",
            received_by_host="pod-a", received_at=now, last_modified=now,
            applied_configuration={}, payload_valid_for=timedelta(hours=1), payload_uri=None,
            has_inline_payload=True, result_uri=None, failure_cause=None, failure_details=None,
            sent_at=None, configuration_overrides=None, content_hash=None, tag=None,
            api_version="v1.2", job_uid=None, parent=None, shard=None, attempts=0,
            idempotency_key=None,
        )  # fmt: skip

    async def get_many(self, keys: Any, shared: bool = False) -> dict[Any, Any]:
        await asyncio.sleep(0.05)
        return {self.checkpoint.key: self.checkpoint}

    async def transition_many(self, changes: Any) -> list[Any]:
        return [True] * len(changes)


class FreeThrottle:
    burst = 100.0

    async def acquire(self, want: int, stopping: asyncio.Event) -> int:
        return want


def creating_dispatcher(
    queue: CountingQueue,
    store: OneRunStore,
    throttle: Any,
    settings: SchedulerSection,
    *,
    taking: float = 0.0,
) -> Dispatcher:
    """A dispatcher on these stand-ins whose every Job is created after ``taking`` s."""
    dispatcher = Dispatcher(
        queue=queue,  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        shards={SHARD: None},  # type: ignore[dict-item]
        throttles={SHARD: throttle},
        links=None,  # type: ignore[arg-type]
        catalog=Catalog(),
        settings=settings,
    )

    async def created(shard: str, run: QueuedRun, checkpoint: Checkpoint) -> Any:
        if taking:
            await asyncio.sleep(taking)
        dispatcher._creating[shard].release()
        return Outcome(run, checkpoint, "created", uid="uid-1")

    dispatcher._call_create = created  # type: ignore[method-assign]
    return dispatcher


@pytest.mark.looptime
async def test_a_dispatcher_pops_when_there_is_work_and_settles_with_its_pops(
    looptime: float,
) -> None:
    """After a batch that emptied the queue, the next pop waits until there is work: runs
    queued here (notify), runs of its batches to settle, or the idle poll; it never pops
    an empty queue only because the linger is over. Settled runs leave the in-flight set
    with a pop, in its round trip, not a call of their own (unless a batch waits for
    creation tokens: no pop comes meanwhile); a stopping loop settles what is left."""
    run = QueuedRun(SHARD, RunKey("echo", uuid.uuid4()), 1.0)
    queue = CountingQueue([run])
    settings = SchedulerSection(pod_name="pod-a", dispatch_linger=0.03, dispatch_idle_poll=0.25)
    dispatcher = creating_dispatcher(queue, OneRunStore(run), FreeThrottle(), settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stopping))
    try:
        await asyncio.sleep(0.2)
        # not again at 0.03, after the linger: nothing was queued, nothing was recorded;
        # at 0.05 its run is recorded RUNNING, and settled by the pop it brings about
        assert queue.pops == [(0, []), (pytest.approx(0.05), [run.member])]
        dispatcher.notify(SHARD)  # runs queued here: popped at once
        await asyncio.sleep(0.01)
        assert queue.pops[2] == (pytest.approx(0.2), [])
        await asyncio.sleep(0.6)  # others' runs (adopted, queued again) are looked for
        assert len(queue.pops) == 4 and queue.pops[3][0] == pytest.approx(0.7)
        assert queue.settles == []
        left = QueuedRun(SHARD, RunKey("echo", uuid.uuid4()), 2.0)
        dispatcher._settled[SHARD].append(left)  # recorded just as the loop stops
    finally:
        stopping.set()
        await task
    assert queue.settles == [[left.member]]


class SecondBatchWaits:
    """A throttle that gives the first batch its token and holds the second's until
    ``opened``."""

    burst = 1.0

    def __init__(self) -> None:
        self.asked = 0
        self.opened = asyncio.Event()

    async def acquire(self, want: int, stopping: asyncio.Event) -> int:
        self.asked += 1
        if self.asked > 1:
            await self.opened.wait()
        return want


class EveryRunStore(OneRunStore):
    async def get_many(self, keys: Any, shared: bool = False) -> dict[Any, Any]:
        return {k: dataclasses.replace(self.checkpoint, id=k.id) for k in keys}


@pytest.mark.looptime
async def test_runs_recorded_while_a_batch_waits_for_tokens_are_settled_at_once(
    looptime: float,
) -> None:
    """A batch waiting for creation tokens holds its shard's gate, so no pop comes to carry
    the settling of runs recorded meanwhile: they are settled on their own, at once."""
    runs = [QueuedRun(SHARD, RunKey("echo", uuid.uuid4()), float(i)) for i in range(2)]
    queue = CountingQueue(list(runs), per_pop=1)
    throttle = SecondBatchWaits()
    settings = SchedulerSection(pod_name="pod-a", dispatch_linger=0, dispatch_idle_poll=0.25)
    dispatcher = creating_dispatcher(queue, EveryRunStore(runs[0]), throttle, settings, taking=0.1)
    stopping = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stopping))
    try:
        await asyncio.sleep(1)
        assert queue.settles == [[runs[0].member]]
    finally:
        throttle.opened.set()
        stopping.set()
        await task
