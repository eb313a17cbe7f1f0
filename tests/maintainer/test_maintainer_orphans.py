"""The inputs crawl (maintainer/orphans.py): inputs without a run deleted once old, on the
real stores."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from harness import S3Bucket
from maintaining import wait_until
from prometheus_client import REGISTRY
from support.proxy import Proxy

from maintainer import orphans
from maintainer.orphans import OrphanInputs
from maintainer.settings import MaintainerSection, MaintainerSettings
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import PostgresSettings, StorageSettings, load_settings
from nexus.core.errors import ConfigError
from nexus.core.runs import NewRun, Stage
from nexus.core.storage import PayloadStore
from nexus.core.sweeps import Sweeps

LATER = timedelta(hours=2)
"""Past the default ``orphan_age``: the objects of a test are this old to a clock moved on."""


def storage_settings(s3: S3Bucket, endpoint_url: str | None = None) -> StorageSettings:
    return StorageSettings(
        endpoint_url=endpoint_url or s3.endpoint_url,
        region=s3.region,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        bucket=s3.bucket,
        request_timeout=2.0,
    )


@contextlib.asynccontextmanager
async def stores(
    postgres_dsn: str, settings: StorageSettings
) -> AsyncIterator[tuple[CheckpointStore, PayloadStore]]:
    store = await CheckpointStore.open(PostgresSettings(dsn=postgres_dsn, pool_max_size=2))
    try:
        payloads = await PayloadStore.open(settings)
        try:
            yield store, payloads
        finally:
            await payloads.close()
    finally:
        await store.close()


def crawler(
    store: CheckpointStore,
    payloads: PayloadStore,
    ahead: timedelta = timedelta(0),
    **section: float,
) -> OrphanInputs:
    return OrphanInputs(
        Sweeps(store),
        payloads,
        MaintainerSection(**section),  # type: ignore[arg-type]
        lambda: True,
        clock=lambda: datetime.now(UTC) + ahead,
    )


async def record(
    store: CheckpointStore, payloads: PayloadStore, run_id: uuid.UUID, algorithm: str = "echo"
) -> None:
    key = payloads.input_key(algorithm, str(run_id))
    await store.insert(
        NewRun(
            algorithm=algorithm, id=run_id, stage=Stage.BUFFERED, caller="tester",
            received_by_host="h", applied_configuration={"shard": "shard-0"},
            payload_valid_for=timedelta(hours=1), payload_uri=payloads.uri(key),
        )
    )  # fmt: skip


def deleted_total() -> float:
    return REGISTRY.get_sample_value("nexus_maintainer_orphan_inputs_deleted_total") or 0.0


async def test_an_old_input_without_a_run_is_deleted_and_young_ones_and_runs_inputs_kept(
    postgres_dsn: str, s3: S3Bucket
) -> None:
    async with stores(postgres_dsn, storage_settings(s3)) as (store, payloads):
        orphan, recorded = uuid.uuid4(), uuid.uuid4()
        await record(store, payloads, recorded)
        keys = {
            "orphan": payloads.input_key("echo", str(orphan)),
            "recorded": payloads.input_key("echo", str(recorded)),
            # under the prefix, but not as Nexus names inputs: never touched
            "foreign": f"{payloads.inputs_prefix}notes.txt",
            "not-an-id": payloads.input_key("echo", "not-a-uuid"),
            "upper-case-id": payloads.input_key("echo", str(uuid.uuid4()).upper()),
            "nested": f"{payloads.input_key('echo', str(uuid.uuid4()))}/part",
        }
        for key in keys.values():
            await payloads.put(key, b"{}")
        before = deleted_total()

        # young: the orphan too may still be getting its run written
        assert await crawler(store, payloads).crawl(asyncio.Event()) == 0
        for key in keys.values():
            assert await payloads.exists(key), key

        assert await crawler(store, payloads, LATER).crawl(asyncio.Event()) == 1
        assert not await payloads.exists(keys["orphan"])
        for name, key in keys.items():
            if name != "orphan":
                assert await payloads.exists(key), name
        assert deleted_total() == before + 1


async def test_the_crawl_goes_page_by_page_through_every_input(
    postgres_dsn: str, s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orphans, "PAGE", 3)
    async with stores(postgres_dsn, storage_settings(s3)) as (store, payloads):
        runs = [(f"algo-{n % 2}", uuid.uuid4()) for n in range(8)]
        kept = runs[::3]
        for algorithm, run_id in runs:
            await payloads.put(payloads.input_key(algorithm, str(run_id)), b"{}")
        for algorithm, run_id in kept:
            await record(store, payloads, run_id, algorithm)
        # the same id under another algorithm is another run's input, and it has none
        stray = payloads.input_key("algo-9", str(kept[0][1]))
        await payloads.put(stray, b"{}")
        crawl = crawler(store, payloads, LATER, orphan_page_pause=0)
        assert await crawl.crawl(asyncio.Event()) == len(runs) - len(kept) + 1
        left = await payloads.list_page(payloads.inputs_prefix, "", 100)
        assert sorted(o.key for o in left) == sorted(payloads.input_key(a, str(r)) for a, r in kept)


async def test_object_storage_away_ends_the_pass_and_the_next_interval_tries_again(
    postgres_dsn: str, s3: S3Bucket
) -> None:
    port = int(s3.endpoint_url.rsplit(":", 1)[1].rstrip("/"))
    proxy = Proxy(port)
    await proxy.start()
    try:
        proxied = storage_settings(s3, f"http://127.0.0.1:{proxy.port}")
        async with stores(postgres_dsn, proxied) as (store, payloads):
            orphan = payloads.input_key("echo", str(uuid.uuid4()))
            await payloads.put(orphan, b"{}")
            proxy.cut()
            failures = ("nexus_maintainer_sweep_failures_total", {"sweep": "orphans"})
            before = REGISTRY.get_sample_value(*failures) or 0.0
            stopping = asyncio.Event()
            crawl = crawler(store, payloads, LATER, orphan_interval=0.2)
            task = asyncio.create_task(crawl.run(stopping))
            try:

                def failed_twice() -> bool:
                    assert not task.done()  # the loop lives on
                    return (REGISTRY.get_sample_value(*failures) or 0.0) >= before + 2

                await wait_until(failed_twice, timeout=30, what="two passes cut short")
                proxy.restore()

                async def deleted() -> bool:
                    return not await payloads.exists(orphan)

                await wait_until(deleted, timeout=30, what="the orphan deleted once S3 is back")
            finally:
                stopping.set()
                await task  # ends cleanly, raising nothing
    finally:
        await proxy.stop()


def test_an_orphan_age_shorter_than_a_submission_may_take_is_refused() -> None:
    env = {"NEXUS__MAINTAINER__ORPHAN_AGE": "60"}
    with pytest.raises(ConfigError, match="ORPHAN_AGE: expected a value ≥ 600"):
        load_settings(MaintainerSettings, env=env)
