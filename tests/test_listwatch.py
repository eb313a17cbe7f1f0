"""follow(): list, watch, resume, relist and reconnect against the Kubernetes API emulator."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import REGISTRY
from support.standin import refused_address, stand_in_shard, write_kubeconfig

from nexus.core.errors import StoreUnavailable
from nexus.core.listwatch import follow
from nexus.core.shards import JOBS, ShardClient, WatchEvent
from nexus_dev.cluster.emulators import DevCluster, Shard, ShardSpec
from nexus_dev.cluster.watchstreams import WatchSettings
from nexus_dev.servers.supervision import free_ports

NS = "nexus"
_NAMES = itertools.count(1)


def spec(**changes: Any) -> ShardSpec:
    """A pure API server (no kubelet), so that only the test changes objects."""
    base = ShardSpec(name="shard", namespace=NS, mode="off", events=False)
    return dataclasses.replace(base, **changes)


def job(name: str, labels: dict[str, str] | None = None) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "algorithms/test:1.0"}],
                    }
                }
            },
        }
    )


class Follower:
    """Runs follow() in a task and records what it was told."""

    def __init__(
        self, client: ShardClient, *, fail_next: set[str] | None = None, **options: Any
    ) -> None:
        self.client = client
        self.options = options
        self.syncs: list[list[str]] = []
        self.events: list[tuple[str, str]] = []
        self.connected: list[bool] = []
        self.stopping = asyncio.Event()
        self.fail_next = set(fail_next or ())  # names whose next event the handler refuses
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def on_sync(self, items: list[dict[str, Any]]) -> None:
        self.syncs.append(sorted(i["metadata"]["name"] for i in items))
        self._changed.set()

    async def on_event(self, event: WatchEvent) -> None:
        name = event.object["metadata"]["name"]
        if name in self.fail_next:
            self.fail_next.discard(name)
            raise StoreUnavailable("the store is down for a moment")
        self.events.append((event.type, name))
        self._changed.set()

    def start(self) -> None:
        options = {"watch_timeout": 300, "max_backoff": 0.2, **self.options}
        self.task = asyncio.create_task(
            follow(
                self.client,
                JOBS,
                on_sync=self.on_sync,
                on_event=self.on_event,
                stopping=self.stopping,
                on_connected=self.connected.append,
                **options,
            )
        )

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not condition():
                assert self.task is not None
                if self.task.done():
                    self.task.result()
                    raise AssertionError("follow() returned")
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

        await asyncio.wait_for(wait(), timeout)

    def added(self, name: str) -> bool:
        return ("ADDED", name) in self.events

    async def stop(self, within: float = 1.0) -> None:
        """Set ``stopping``; follow() must return within ``within`` seconds."""
        self.stopping.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, within)

    async def __aenter__(self) -> Follower:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            self.stopping.set()
            with contextlib.suppress(TimeoutError):  # the test fails on the leak check then
                await asyncio.wait_for(self.task, 5)


def restarts(shard: str, reason: str) -> float:
    labels = {"shard": shard, "resource": "jobs", "reason": reason}
    return REGISTRY.get_sample_value("nexus_watch_restarts_total", labels) or 0.0


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Shard, ShardClient]]:
    """A shard on a fixed port (so that it can be restarted) and a client for it."""
    (port,) = free_ports(1)
    async with DevCluster([spec(port=port)], kubeconfig_dir=tmp_path) as cluster:
        shard = cluster["shard"]
        name = f"shard-{next(_NAMES)}"  # a metrics label of this test's own
        client = await ShardClient.from_kubeconfig(name, shard.kubeconfig, NS, timeout=2)
        try:
            yield shard, client
        finally:
            await client.close()


async def test_sync_then_events(running: tuple[Shard, ShardClient]) -> None:
    _, client = running
    await client.create_job(job("existing"))
    async with Follower(client) as follower:
        await follower.until(lambda: bool(follower.syncs))
        assert follower.syncs == [["existing"]]
        await client.create_job(job("new"))
        await client.delete_job("existing", "Background")
        await follower.until(
            lambda: follower.added("new") and ("DELETED", "existing") in follower.events
        )
        assert ("ADDED", "existing") not in follower.events  # it came with the sync
        assert follower.connected[0] is True
        await follower.stop()
        assert len(follower.syncs) == 1


async def test_resumes_after_the_server_ends_the_watch(running: tuple[Shard, ShardClient]) -> None:
    _, client = running
    async with Follower(client, watch_timeout=1) as follower:
        await follower.until(lambda: bool(follower.syncs))
        await asyncio.sleep(1.3)  # the first watch has ended by now
        await client.create_job(job("later"))
        await follower.until(lambda: follower.added("later"))
        assert restarts(client.name, "resumed") >= 1
        assert restarts(client.name, "expired") == 0
        assert len(follower.syncs) == 1  # resumed, not relisted
        assert follower.events.count(("ADDED", "later")) == 1
        await follower.stop()


async def test_relists_when_the_version_expired(tmp_path: Path) -> None:
    # A watch with a selector sees nothing of other objects, so its version falls behind
    # while they change; a small history then no longer reaches back to it.
    async with DevCluster([spec(history_size=3)], kubeconfig_dir=tmp_path) as cluster:
        client = await ShardClient.from_kubeconfig("shard-410", cluster["shard"].kubeconfig, NS)
        try:
            await client.create_job(job("mine-1", {"pick": "me"}))
            async with Follower(client, watch_timeout=1, label_selector="pick=me") as follower:
                await follower.until(lambda: bool(follower.syncs))
                for i in range(5):
                    await client.create_job(job(f"other-{i}"))
                await client.create_job(job("mine-2", {"pick": "me"}))
                await follower.until(lambda: follower.added("mine-2"))
                for i in range(5, 10):
                    await client.create_job(job(f"other-{i}"))
                before = restarts("shard-410", "expired")
                await follower.until(lambda: len(follower.syncs) == 2, timeout=5)
                assert follower.syncs[1] == ["mine-1", "mine-2"]  # the relist, selector applied
                assert restarts("shard-410", "expired") == before + 1
                await client.create_job(job("mine-3", {"pick": "me"}))
                await follower.until(lambda: follower.added("mine-3"))
                assert all(not name.startswith("other") for _, name in follower.events)
                await follower.stop()
        finally:
            await client.close()


async def test_bookmarks_keep_a_quiet_watch_resumable(tmp_path: Path) -> None:
    fast = spec(history_size=3, watch=WatchSettings(bookmark_interval=0.1))
    async with DevCluster([fast], kubeconfig_dir=tmp_path) as cluster:
        client = await ShardClient.from_kubeconfig("shard-bm", cluster["shard"].kubeconfig, NS)
        try:
            async with Follower(client, watch_timeout=1, label_selector="pick=me") as follower:
                await follower.until(lambda: bool(follower.syncs))
                for i in range(6):
                    await client.create_job(job(f"other-{i}"))
                    await asyncio.sleep(0.06)
                await asyncio.sleep(1.2)  # the watch ends and resumes from the bookmarked version
                await client.create_job(job("mine", {"pick": "me"}))
                await follower.until(lambda: follower.added("mine"))
                assert len(follower.syncs) == 1
                assert restarts("shard-bm", "expired") == 0
                assert {name for _, name in follower.events} == {"mine"}  # bookmarks aren't events
                await follower.stop()
        finally:
            await client.close()


async def test_survives_the_server_going_away_and_coming_back(
    running: tuple[Shard, ShardClient],
) -> None:
    shard, client = running
    async with Follower(client, max_backoff=0.2) as follower:
        await follower.until(lambda: bool(follower.syncs))
        await client.create_job(job("before"))
        await follower.until(lambda: follower.added("before"))
        failed = restarts(client.name, "failed")
        await shard.stop()
        await follower.until(lambda: restarts(client.name, "failed") >= failed + 2)
        assert False in follower.connected
        await shard.start()  # same port, same objects
        await client.create_job(job("after"))
        await follower.until(lambda: follower.added("after"), timeout=5)
        assert follower.connected[-1] is True
        assert len(follower.syncs) == 1  # resumed from where it was
        assert follower.events.count(("ADDED", "before")) == 1
        await follower.stop()


async def test_a_failing_handler_gets_the_event_again(running: tuple[Shard, ShardClient]) -> None:
    _, client = running
    async with Follower(client, fail_next={"flaky"}) as follower:
        await follower.until(lambda: bool(follower.syncs))
        await client.create_job(job("flaky"))
        await follower.until(lambda: follower.added("flaky"))
        assert restarts(client.name, "failed") == 1
        await client.create_job(job("next"))
        await follower.until(lambda: follower.added("next"))
        assert follower.events.count(("ADDED", "flaky")) == 1
        await follower.stop()


async def test_stops_promptly_while_watching_and_while_backing_off(
    running: tuple[Shard, ShardClient],
) -> None:
    shard, client = running
    async with Follower(client) as follower:
        await follower.until(lambda: bool(follower.syncs))
        await asyncio.sleep(0.1)
        await follower.stop(within=1.0)  # in the middle of a 300 s watch

    await shard.stop()
    async with Follower(client, max_backoff=30) as follower:
        await follower.until(lambda: False in follower.connected)
        await asyncio.sleep(0.3)
        await follower.stop(within=1.0)  # in the middle of a backoff


async def test_cancelling_follow_leaves_nothing_running(running: tuple[Shard, ShardClient]) -> None:
    _, client = running
    async with Follower(client) as follower:
        await follower.until(lambda: bool(follower.syncs))
        assert follower.task is not None
        follower.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower.task
        # the leak check of the test harness fails the test if the watch task survived


@contextlib.asynccontextmanager
async def stand_in(
    tmp_path: Path, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[Path]:
    """A server answering every request with ``handler``, and a kubeconfig for it."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    async with stand_in_shard(app, tmp_path) as path:
        yield path


EMPTY_LIST = {"items": [], "metadata": {"resourceVersion": "1"}}


async def follow_stand_in(
    tmp_path: Path,
    name: str,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    seconds: float = 0.0,
    **options: Any,
) -> Follower:
    """follow() against a server answering with ``handler``, until its first sync and
    ``seconds`` more; the follower, stopped, with what it was told."""
    async with stand_in(tmp_path, handler) as path:
        client = await ShardClient.from_kubeconfig(name, path, NS, timeout=5)
        try:
            async with Follower(client, **options) as follower:
                await follower.until(lambda: bool(follower.syncs))
                await asyncio.sleep(seconds)
                await follower.stop()
        finally:
            await client.close()
    return follower


async def test_stops_promptly_during_a_slow_list(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.json_response(EMPTY_LIST)

    async with stand_in(tmp_path, slow) as path:
        client = await ShardClient.from_kubeconfig("slow", path, NS, timeout=10)
        try:
            async with Follower(client) as follower:
                await asyncio.sleep(0.2)
                assert follower.syncs == []
                await follower.stop(within=1.0)
        finally:
            await client.close()
            release.set()


async def test_watches_ended_at_once_do_not_make_a_busy_loop(tmp_path: Path) -> None:
    watches = 0

    async def hasty(request: web.Request) -> web.Response:
        nonlocal watches
        if request.query.get("watch") == "true":
            watches += 1
            return web.Response(body=b"", content_type="application/json")
        return web.json_response(EMPTY_LIST)

    follower = await follow_stand_in(tmp_path, "hasty", hasty, seconds=1.5, max_backoff=2)
    assert 2 <= watches <= 6  # backing off: 0.5 s, 1 s, 2 s...
    assert len(follower.syncs) == 1


async def test_a_watch_that_keeps_expiring_does_not_relist_in_a_loop(tmp_path: Path) -> None:
    """A list that outlasts the server's history expires its watch at once: after the
    first relist the next ones back off, as for any failure."""
    lists = 0

    async def forgetful(request: web.Request) -> web.Response:
        nonlocal lists
        if request.query.get("watch") == "true":
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            return web.json_response(gone, status=410)
        lists += 1
        return web.json_response(EMPTY_LIST)

    await follow_stand_in(tmp_path, "forgetful", forgetful, seconds=1.5, max_backoff=2)
    assert 2 <= lists <= 5  # relists at once, then after 0.5 s, 1 s, 2 s...


async def test_a_throttled_watch_waits_for_its_retry_after(tmp_path: Path) -> None:
    calls: list[float] = []

    async def busy(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            busy_status = {"kind": "Status", "code": 429, "message": "too many requests"}
            return web.json_response(busy_status, status=429, headers={"Retry-After": "1"})
        return web.json_response(EMPTY_LIST)

    await follow_stand_in(tmp_path, "busy", busy, max_backoff=0.2)
    assert calls[1] - calls[0] >= 0.95  # not the 0.2 s backoff


@pytest.mark.slow
@pytest.mark.looptime
async def test_an_unreachable_shard_is_retried_for_ever_at_the_longest_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, looptime: float
) -> None:
    """Nothing answers at the shard's address: 1,100 failed attempts in a row on a fake
    clock, doubling from 0.5 s to ``max_backoff`` and staying there — also above the
    256 s at which the exponent used to be cut short — and follow() stops when told."""
    caplog.set_level(logging.WARNING, logger="nexus.core.listwatch")
    kubeconfig = write_kubeconfig(f"http://{refused_address()}", tmp_path)
    client = await ShardClient.from_kubeconfig("shard-unreachable", kubeconfig, NS)
    failed = restarts("shard-unreachable", "failed")
    try:
        async with Follower(client, max_backoff=600.0) as follower:
            while restarts("shard-unreachable", "failed") < failed + 1_100:
                assert follower.task is not None and not follower.task.done(), follower.task
                await asyncio.sleep(600)
            waits = [r.args[0] for r in caplog.records if r.getMessage().startswith("watch fail")]
            assert waits[:3] == [0.5, 1.0, 2.0]
            assert set(waits[11:]) == {600.0}  # 0.5 * 2**11 > 600: at the cap from then on
            assert looptime >= sum(waits[:-1])
            await follower.stop()
    finally:
        await client.close()
    assert follower.connected and not any(follower.connected)
