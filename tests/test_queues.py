"""Virtual queues, pods and leases on a real Redis: order, atomic moves, adoption, failures."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from harness import Servers
from support.system import free_port, local_system, serve_scheduler, template

from nexus.core.config import RedisSettings
from nexus.core.errors import QueueUnavailable
from nexus.core.queues import Pods, QueueBackend, QueuedRun, RunQueue, Share
from nexus.core.runs import RunKey
from nexus_dev.servers.services import LocalRedis

SHARD = "shard-a"
OTHER = "shard-b"
_IDS = itertools.count(1)


def run(priority: float, shard: str = SHARD, algorithm: str = "algo") -> QueuedRun:
    """A queued run with a fresh id (ids sort in creation order, priorities decide)."""
    return QueuedRun(shard, RunKey(algorithm, uuid.UUID(int=next(_IDS))), priority)


@pytest_asyncio.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[QueueBackend]:
    queues = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        yield queues
    finally:
        await queues.close()


async def places(backend: QueueBackend, pod: str, item: QueuedRun) -> list[str]:
    """Where ``item`` is held for ``pod``: any of ready, delayed, inflight."""
    k, client = backend.keys, backend.client
    found = []
    if await client.zscore(k.ready(pod, item.shard), item.member) is not None:
        found.append("ready")
    if await client.zscore(k.delayed(pod, item.shard), item.member) is not None:
        found.append("delayed")
    if await client.zscore(k.inflight(pod), f"{item.shard}/{item.member}") is not None:
        found.append("inflight")
    return found


async def use_every_queue_key(backend: QueueBackend) -> None:
    """Have one pod's queue and one shard's throttle write every kind of key they keep:
    pods, shards, ready (two shards), delayed, in flight, fair shares, clocks and bucket."""
    queue = backend.queue("pod-1")
    await queue.heartbeat(10)
    await queue.push([run(1), replace(run(0, OTHER), share=Share("=caller", 1.0))])
    popped = await queue.pop(SHARD, 1)
    await queue.delay(SHARD, popped, 10)
    await backend.take_tokens(SHARD, 1, 10, 10, 0.1)


async def test_every_key_starts_with_the_prefix(backend: QueueBackend, redis_prefix: str) -> None:
    await use_every_queue_key(backend)
    assert await backend.hold_lease("maintainer", "me", 10)
    keys = [k.decode() async for k in backend.client.scan_iter(match="*", count=1000)]
    mine = [k for k in keys if redis_prefix in k]
    # pods, shards, ready (other shard), delayed, in flight, shares, clocks of both shards,
    # bucket, lease
    assert len(mine) == 10
    assert all(k.startswith(redis_prefix) for k in mine)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes a key by: the text between its first braces, if any."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


async def test_keys_a_script_uses_together_share_a_cluster_slot(
    backend: QueueBackend, redis_prefix: str
) -> None:
    await use_every_queue_key(backend)
    keys = [k.decode() async for k in backend.client.scan_iter(match="*", count=1000)]
    mine = [k for k in keys if k.startswith(redis_prefix)]
    queues = [k for k in mine if ":throttle:" not in k]
    # every queue of every pod: adoption moves runs between pods in one script
    assert len(queues) == 8 and {hash_tag(k) for k in queues} == {"q"}
    (bucket,) = [k for k in mine if ":throttle:" in k]
    assert hash_tag(bucket) == SHARD


async def test_pop_takes_oldest_priority_first(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    runs = [run(p) for p in (300, 100, 200, 50, 400)]
    await queue.push(runs)
    assert await queue.depth(SHARD) == 5
    first = await queue.pop(SHARD, 2)
    assert [r.priority for r in first] == [50, 100]
    rest = await queue.pop(SHARD, 10)
    assert [r.priority for r in rest] == [200, 300, 400]
    assert await queue.pop(SHARD, 10) == []
    # what comes back is what went in
    assert {r.key for r in first + rest} == {r.key for r in runs}
    assert all(r.shard == SHARD for r in first + rest)


async def test_pop_of_nothing_takes_nothing(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    await queue.push([run(1), run(2)])
    assert await queue.pop(SHARD, 0) == []
    assert await queue.pop(SHARD, -1) == []
    assert await queue.depth(SHARD) == 2
    assert await queue.pop("no-such-shard", 5) == []


async def test_priorities_keep_millisecond_precision(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    now_ms = 1_790_000_000_123.0
    items = [run(now_ms + 1), run(now_ms)]
    await queue.push(items)
    popped = await queue.pop(SHARD, 2)
    assert [r.priority for r in popped] == [now_ms, now_ms + 1]


async def test_push_is_idempotent_and_keeps_the_first_place(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    early, late = run(100), run(200)
    await queue.push([early, late])
    await queue.push([QueuedRun(SHARD, early.key, 999)])  # pushed again, later
    assert await queue.depth(SHARD) == 2
    popped = await queue.pop(SHARD, 2)
    assert [(r.key, r.priority) for r in popped] == [(early.key, 100), (late.key, 200)]


async def test_a_large_push_of_one_caller_queues_each_new_run_once_in_fair_share_order(
    backend: QueueBackend,
) -> None:
    queue = backend.queue("pod-1")
    share = Share("caller", 0.5)
    flying, queued = replace(run(0), share=share), run(7)
    await queue.push([flying])
    assert [r.key for r in await queue.pop(SHARD, 1)] == [flying.key]
    await queue.push([queued])
    fresh = [replace(run(0), share=share) for _ in range(2500)]  # several of the script's chunks
    mixed = [*fresh[:1200], flying, fresh[5], queued, *fresh[1200:], fresh[5]]
    plain = run(3)
    await queue.push([*mixed, plain])
    assert await queue.depth(SHARD) == 1 + 2500 + 1
    assert await places(backend, "pod-1", flying) == ["inflight"]
    popped = await queue.pop(SHARD, 2502)
    ours = {r.key for r in fresh}
    caller = [r for r in popped if r.key in ours]
    assert [r.key for r in caller] == [r.key for r in fresh]  # in the order pushed, once each
    steps = {round(b.priority - a.priority, 6) for a, b in itertools.pairwise(caller)}
    assert steps == {0.5}
    assert {(r.key, r.priority) for r in popped if r.key not in ours} == {
        (queued.key, 7),
        (plain.key, 3),
    }


async def test_a_run_in_flight_is_not_queued_twice(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    item = run(100)
    await queue.push([item])
    assert [r.key for r in await queue.pop(SHARD, 1)] == [item.key]
    await queue.push([item])
    assert await places(backend, "pod-1", item) == ["inflight"]
    assert await queue.depth(SHARD) == 0


async def test_pop_moves_runs_in_flight_until_settled(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    a, b = run(1), run(2)
    await queue.push([a, b])
    assert await places(backend, "pod-1", a) == ["ready"]
    popped = await queue.pop(SHARD, 1)
    assert [r.key for r in popped] == [a.key]
    assert await places(backend, "pod-1", a) == ["inflight"]
    assert await places(backend, "pod-1", b) == ["ready"]
    # in flight still counts as queued for the maintainer, but has no queue position
    assert await backend.missing(SHARD, [a.key, b.key], ["pod-1"]) == set()
    assert await queue.position(SHARD, a.key, ["pod-1"]) is None
    await queue.settle(popped)
    assert await places(backend, "pod-1", a) == []
    assert await backend.missing(SHARD, [a.key, b.key], ["pod-1"]) == {a.key}
    await queue.settle([])  # nothing to do


async def test_a_large_pop_and_settle_move_every_run_and_keep_its_priority(
    backend: QueueBackend,
) -> None:
    """More runs than one Redis command of the pop script takes (1,000 per command)."""
    queue = backend.queue("pod-1")
    runs = [run(i + 0.5) for i in range(2500)]
    await queue.push(runs)
    popped = await queue.pop(SHARD, 2400)
    assert [(r.key, r.priority) for r in popped] == [(r.key, r.priority) for r in runs[:2400]]
    assert await places(backend, "pod-1", runs[0]) == ["inflight"]
    assert await places(backend, "pod-1", runs[2399]) == ["inflight"]
    assert await places(backend, "pod-1", runs[2400]) == ["ready"]
    await queue.settle(popped)
    assert await backend.missing(SHARD, [r.key for r in runs[:2400]], ["pod-1"]) == {
        r.key for r in runs[:2400]
    }
    assert [r.key for r in await queue.pop(SHARD, 1000)] == [r.key for r in runs[2400:]]


async def test_delayed_run_comes_back_when_due_ahead_of_newer_ones(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    old = run(100)
    await queue.push([old])
    held = await queue.pop(SHARD, 1)
    await queue.delay(SHARD, held, 0.3)
    assert sorted(await places(backend, "pod-1", old)) == ["delayed", "inflight"]
    newer = [run(200), run(300)]
    await queue.push(newer)
    # not due yet: newer runs go, the delayed one waits (and is not lost)
    (first,) = await queue.pop(SHARD, 1)
    assert first.key == newer[0].key
    assert await backend.missing(SHARD, [old.key], ["pod-1"]) == set()
    await asyncio.sleep(0.35)
    popped = await queue.pop(SHARD, 1)
    assert [(r.key, r.priority) for r in popped] == [(old.key, 100)]
    assert await places(backend, "pod-1", old) == ["inflight"]


async def test_delay_of_zero_is_due_at_once(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    item = run(5)
    await queue.push([item, run(10)])
    held = await queue.pop(SHARD, 1)
    await queue.delay(SHARD, held, 0)
    popped = await queue.pop(SHARD, 1)
    assert [r.key for r in popped] == [item.key]


async def test_a_settled_run_never_comes_back(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    item = run(5)
    await queue.push([item])
    held = await queue.pop(SHARD, 1)
    await queue.delay(SHARD, held, 0)
    await queue.settle(held)  # e.g. cancelled while it waited out its delay
    assert await places(backend, "pod-1", item) == []
    assert await queue.pop(SHARD, 5) == []
    # delaying a run that is not in flight does not queue it either
    await queue.delay(SHARD, held, 0)
    assert await queue.pop(SHARD, 5) == []
    assert await places(backend, "pod-1", item) == []


async def test_a_pop_settles_the_runs_it_is_given_first(backend: QueueBackend) -> None:
    """Runs whose outcome is recorded leave the in-flight set (and their retry delay) in
    the round trip of the next pop, which then takes what is ready."""
    queue = backend.queue("pod-1")
    done, delayed, waiting = run(1), run(2), run(3)
    await queue.push([done, delayed])
    held = await queue.pop(SHARD, 2)
    await queue.delay(SHARD, [held[1]], 60)
    await queue.push([waiting])
    assert await places(backend, "pod-1", delayed) == ["delayed", "inflight"]
    popped = await queue.pop(SHARD, 5, held)
    assert [r.key for r in popped] == [waiting.key]
    assert await places(backend, "pod-1", done) == []
    assert await places(backend, "pod-1", delayed) == []
    assert await places(backend, "pod-1", waiting) == ["inflight"]
    assert await queue.pop(SHARD, 5, popped) == []  # settles, and finds nothing
    assert await places(backend, "pod-1", waiting) == []


async def test_pipelined_push_to_several_shards(backend: QueueBackend) -> None:
    queue = backend.queue("pod-1")
    items = [run(i, shard=f"shard-{i % 3}") for i in range(30)]
    await queue.push(items)
    await queue.push([])
    assert await queue.shards() == {"shard-0", "shard-1", "shard-2"}
    for index in range(3):
        shard = f"shard-{index}"
        assert await queue.depth(shard) == 10
        popped = await queue.pop(shard, 100)
        assert [r.key for r in popped] == [r.key for r in items if r.shard == shard]


async def test_pods_live_and_dead_by_heartbeat(backend: QueueBackend) -> None:
    assert await backend.pods() == Pods(live=[], dead=[])
    await backend.queue("pod-a").heartbeat(30)
    await backend.queue("pod-b").heartbeat(0.05)
    pods = await backend.pods()
    assert sorted(pods.live) == ["pod-a", "pod-b"]
    assert pods.dead == []
    await asyncio.sleep(0.1)
    pods = await backend.pods()
    assert pods.live == ["pod-a"]
    assert pods.dead == ["pod-b"]
    await backend.queue("pod-b").heartbeat(30)  # back from the dead
    assert sorted((await backend.pods()).live) == ["pod-a", "pod-b"]


async def test_adopt_moves_everything_keeping_its_order(backend: QueueBackend) -> None:
    dead, live = backend.queue("pod-dead"), backend.queue("pod-live")
    await dead.heartbeat(0.01)
    await live.heartbeat(30)
    queued_a = [run(10), run(40)]
    queued_b = [run(20, OTHER)]
    flying = run(5)
    delayed = run(8)
    await dead.push([flying, delayed, *queued_a, *queued_b])
    taken = await dead.pop(SHARD, 2)  # flying (5) and delayed (8)
    assert [r.key for r in taken] == [flying.key, delayed.key]
    await dead.delay(SHARD, [taken[1]], 3600)
    own = [run(30), run(1000)]  # the live pod's own runs: newer and older ones
    await live.push(own)
    await asyncio.sleep(0.02)
    assert (await backend.pods()).dead == ["pod-dead"]

    moved = await backend.adopt("pod-dead", "pod-live")

    assert moved == 5
    assert await backend.pods() == Pods(live=["pod-live"], dead=[])
    for item in (flying, delayed, *queued_a, *queued_b):
        assert await places(backend, "pod-dead", item) == []
        assert await places(backend, "pod-live", item) == ["ready"]
    assert await dead.shards() == set()
    assert await live.shards() == {SHARD, OTHER}
    popped = await live.pop(SHARD, 10)
    # in their order, ahead of what the live pod queued before it adopted them
    assert [r.key for r in popped] == [
        flying.key, delayed.key, queued_a[0].key, queued_a[1].key, own[0].key, own[1].key
    ]  # fmt: skip
    assert popped[3].priority - popped[0].priority == 40 - 5  # shifted, not re-ordered
    assert [r.key for r in await live.pop(OTHER, 10)] == [queued_b[0].key]
    # nothing of the dead pod is left in Redis
    k = backend.keys
    for key in (k.inflight("pod-dead"), k.ready("pod-dead", SHARD), k.delayed("pod-dead", SHARD)):
        assert not await backend.client.exists(key)


async def test_adopt_keeps_each_run_in_one_place(backend: QueueBackend) -> None:
    dead, live = backend.queue("pod-dead"), backend.queue("pod-live")
    await live.heartbeat(30)
    shared, only_dead, flying_here = run(50), run(60), run(70)
    await dead.push([shared, only_dead, flying_here])
    await live.push([QueuedRun(SHARD, shared.key, 80), flying_here])
    await live.pop(SHARD, 0)
    taken = await live.pop(SHARD, 2)  # the live pod holds both of its runs in flight
    assert {r.key for r in taken} == {shared.key, flying_here.key}
    await live.settle([r for r in taken if r.key == shared.key])
    await live.push([QueuedRun(SHARD, shared.key, 80)])  # queued on both pods, newer here

    await backend.adopt("pod-dead", "pod-live")

    assert await places(backend, "pod-live", flying_here) == ["inflight"]
    assert await places(backend, "pod-live", shared) == ["ready"]
    assert await places(backend, "pod-live", only_dead) == ["ready"]
    popped = await live.pop(SHARD, 10)
    assert [(r.key, r.priority) for r in popped] == [(shared.key, 50), (only_dead.key, 60)]


async def test_adopt_of_an_empty_or_unknown_pod(backend: QueueBackend) -> None:
    await backend.queue("pod-live").heartbeat(30)
    await backend.queue("pod-gone").heartbeat(0.001)
    await asyncio.sleep(0.01)
    assert await backend.adopt("pod-gone", "pod-live") == 0
    assert await backend.adopt("never-seen", "pod-live") == 0
    assert (await backend.pods()).dead == []
    with pytest.raises(ValueError, match="own queue"):
        await backend.adopt("pod-live", "pod-live")


async def test_adopt_finds_shards_known_only_from_runs_in_flight(backend: QueueBackend) -> None:
    await backend.queue("pod-live").heartbeat(30)
    dead = backend.queue("pod-dead")
    item = run(7, OTHER)
    await dead.push([item])
    await dead.pop(OTHER, 1)
    await backend.client.delete(backend.keys.shards("pod-dead"))  # e.g. lost or edited
    assert await backend.adopt("pod-dead", "pod-live") == 1
    assert await places(backend, "pod-live", item) == ["ready"]


async def test_runs_go_only_to_a_pod_alive_then_from_one_dead_then(
    backend: QueueBackend,
) -> None:
    """Two pods that stop together each hand their queue to the other: the one that goes
    second must not give its runs (the first one's among them) to a pod that has left, where
    no one would ever pop them. Both stay for the maintainer to adopt into a live pod."""
    a, b, c = backend.queue("pod-a"), backend.queue("pod-b"), backend.queue("pod-c")
    for pod in (a, b):
        await pod.heartbeat(30)
    mine, theirs = run(1), run(2)
    await a.push([mine])
    await b.push([theirs])
    # both stop; each read the other as alive before either left (as _hand_over reads)
    assert sorted((await backend.pods()).live) == ["pod-a", "pod-b"]
    await a.leave()
    await b.leave()
    assert await backend.adopt("pod-a", "pod-b") is None  # b has left
    assert await backend.adopt("pod-b", "pod-a") is None
    assert await places(backend, "pod-a", mine) == ["ready"]
    assert await places(backend, "pod-b", theirs) == ["ready"]
    assert await backend.pods() == Pods(live=[], dead=["pod-a", "pod-b"])
    # a pod alive again is not adopted from: it may be dispatching its runs
    await a.heartbeat(30)
    await c.heartbeat(30)
    assert await backend.adopt("pod-a", "pod-c") is None
    assert await places(backend, "pod-a", mine) == ["ready"]
    # a pod that never registered, or whose heartbeat ran out, takes nothing
    assert await backend.adopt("pod-b", "pod-never") is None
    await backend.queue("pod-late").heartbeat(0.001)
    await asyncio.sleep(0.01)
    assert await backend.adopt("pod-b", "pod-late") is None
    # the maintainer's adoption into a live pod moves them
    assert await backend.adopt("pod-b", "pod-c") == 1
    assert await places(backend, "pod-c", theirs) == ["ready"]


async def adopt_script(backend: QueueBackend, dead: str, live: str, shards: list[str]) -> int:
    """adopt.lua itself, told of ``shards`` only (the keys in the order its header gives)."""
    k = backend.keys
    keys = [k.pods, k.shards(dead), k.inflight(dead), k.shards(live), k.inflight(live)]
    for shard in shards:
        keys += [
            k.ready(dead, shard), k.delayed(dead, shard), k.ready(live, shard), k.clocks(shard)
        ]  # fmt: skip
    return int(await backend.run("adopt", keys, [dead, live, *shards]))


async def test_adopt_script_refuses_a_shard_list_missing_a_shard_with_runs(
    backend: QueueBackend,
) -> None:
    dead = backend.queue("pod-dead")
    await dead.heartbeat(30)
    await dead.leave()
    await backend.queue("pod-live").heartbeat(30)
    third = "shard-c"
    queued, queued_other, flying = run(10), run(20, OTHER), run(30, third)
    await dead.push([queued, queued_other, flying])
    await dead.pop(third, 1)
    held = {queued: ["ready"], queued_other: ["ready"], flying: ["inflight"]}
    # a shard the pod has queues for is not listed
    assert await adopt_script(backend, "pod-dead", "pod-live", [SHARD, third]) == -1
    # a shard known only from a run in flight is not listed
    await backend.client.srem(backend.keys.shards("pod-dead"), third)
    assert await adopt_script(backend, "pod-dead", "pod-live", [SHARD, OTHER]) == -1

    for item, where in held.items():  # nothing moved, nothing forgotten
        assert await places(backend, "pod-dead", item) == where
        assert await places(backend, "pod-live", item) == []
    assert await dead.shards() == {SHARD, OTHER}
    assert (await backend.pods()).dead == ["pod-dead"]
    # told of every shard, it moves them all
    assert await adopt_script(backend, "pod-dead", "pod-live", [SHARD, OTHER, third]) == 3


async def test_adopt_reads_the_shards_again_when_one_appears_meanwhile(
    backend: QueueBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = backend.queue("pod-dead")
    first, later = run(10), run(20, OTHER)
    await backend.queue("pod-live").heartbeat(30)
    await dead.push([first])
    told: list[list[str]] = []
    run_script = backend.run

    async def racing(script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script == "adopt":
            told.append(list(args[2:]))
            if len(told) == 1:  # after adopt() read the shards, before its script runs
                await dead.push([later])
        return await run_script(script, keys, args)

    monkeypatch.setattr(backend, "run", racing)
    assert await backend.adopt("pod-dead", "pod-live") == 2
    assert told == [[SHARD], [SHARD, OTHER]]
    for item in (first, later):
        assert await places(backend, "pod-dead", item) == []
        assert await places(backend, "pod-live", item) == ["ready"]


async def test_a_restarted_pod_queues_its_runs_in_flight_again_ahead_of_newer_ones(
    backend: QueueBackend, redis_url: str, redis_prefix: str
) -> None:
    before = backend.queue("pod-1")
    await before.heartbeat(30)
    popped, waiting, delayed, other = run(10), run(20), run(15), run(5, OTHER)
    await before.push([popped, delayed, waiting, other])
    assert [r.key for r in await before.pop(SHARD, 2)] == [popped.key, delayed.key]
    await before.delay(SHARD, [delayed], 3600)  # waiting out a retry delay
    await before.pop(OTHER, 1)
    # the process stops here without settling; the pod restarts under the same name while
    # its heartbeat is still current, so no other pod adopts its queue
    restarted = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        after = restarted.queue("pod-1")
        assert (await restarted.pods()).live == ["pod-1"]
        assert await after.recover() == 2
        assert await places(restarted, "pod-1", popped) == ["ready"]
        assert await places(restarted, "pod-1", other) == ["ready"]
        assert sorted(await places(restarted, "pod-1", delayed)) == ["delayed", "inflight"]
        newer = run(30)
        await after.push([newer])
        taken = await after.pop(SHARD, 10)
        assert [(r.key, r.priority) for r in taken] == [
            (popped.key, 10),
            (waiting.key, 20),
            (newer.key, 30),
        ]
        assert [(r.key, r.priority) for r in await after.pop(OTHER, 10)] == [(other.key, 5)]
        assert await restarted.queue("pod-2").recover() == 0  # nothing in flight
    finally:
        await restarted.close()


async def test_recover_names_every_shard_it_moves_runs_of(backend: QueueBackend) -> None:
    await backend.queue("pod-2").heartbeat(30)
    queue = backend.queue("pod-1")
    item = run(7, OTHER)
    await queue.push([item])
    await queue.pop(OTHER, 1)
    await backend.client.delete(backend.keys.shards("pod-1"))  # e.g. lost or edited
    assert await queue.recover() == 1
    assert await queue.shards() == {OTHER}  # adoption finds the ready queue
    assert await backend.adopt("pod-1", "pod-2") == 1
    assert await places(backend, "pod-2", item) == ["ready"]


async def test_missing_finds_runs_in_no_queue(backend: QueueBackend) -> None:
    a, b = backend.queue("pod-a"), backend.queue("pod-b")
    ready_a, flying_b, delayed_b, nowhere = run(1), run(2), run(3), run(4)
    other_shard = run(5, OTHER)
    await a.push([ready_a])
    await b.push([flying_b, delayed_b, other_shard])
    await b.pop(SHARD, 1)
    (held,) = await b.pop(SHARD, 1)
    await b.delay(SHARD, [held], 3600)
    keys = [r.key for r in (ready_a, flying_b, delayed_b, nowhere)]
    assert await backend.missing(SHARD, keys, ["pod-a", "pod-b"]) == {nowhere.key}
    # only the pods named count
    assert await backend.missing(SHARD, keys, ["pod-a"]) == {
        flying_b.key,
        delayed_b.key,
        nowhere.key,
    }
    assert await backend.missing(SHARD, keys, []) == set(keys)
    assert await backend.missing(SHARD, [], ["pod-a"]) == set()
    # a run queued for another shard is missing for this one
    assert await backend.missing(SHARD, [other_shard.key], ["pod-b"]) == {other_shard.key}


async def test_position_ranks_within_the_pod_that_holds_it(backend: QueueBackend) -> None:
    a, b = backend.queue("pod-a"), backend.queue("pod-b")
    on_a = [run(p) for p in (10, 20, 30)]
    on_b = [run(p) for p in (5, 25)]
    await a.push(on_a)
    await b.push(on_b)
    pods = ["pod-a", "pod-b"]
    assert await a.position(SHARD, on_a[0].key, pods) == ("pod-a", 0)
    assert await a.position(SHARD, on_a[2].key, pods) == ("pod-a", 2)
    assert await a.position(SHARD, on_b[1].key, pods) == ("pod-b", 1)
    assert await a.position(SHARD, run(1).key, pods) is None
    assert await a.position(SHARD, on_a[0].key, ["pod-b"]) is None
    await a.pop(SHARD, 1)
    assert await a.position(SHARD, on_a[2].key, pods) == ("pod-a", 1)


async def test_concurrent_pops_never_hand_out_a_run_twice(
    backend: QueueBackend, redis_url: str, redis_prefix: str
) -> None:
    queue = backend.queue("pod-1")
    items = [run(i) for i in range(600)]
    await queue.push(items)
    # two clients (as if two processes) and many coroutines on each, popping one queue
    other = QueueBackend.connect(RedisSettings(url=redis_url, key_prefix=redis_prefix))
    try:
        queues: list[RunQueue] = [queue, other.queue("pod-1")]

        async def worker(index: int) -> list[QueuedRun]:
            mine: list[QueuedRun] = []
            q = queues[index % 2]
            while batch := await q.pop(SHARD, 1 + index % 7):
                mine += batch
                await asyncio.sleep(0)
            return mine

        results = await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(24))), 20)
    finally:
        await other.close()
    handed = [r.key for batch in results for r in batch]
    assert len(handed) == len(items)
    assert set(handed) == {r.key for r in items}
    assert sum(1 for batch in results if batch) > 1  # really concurrent


async def test_redis_down_is_queue_unavailable_and_recovers(private_redis: LocalRedis) -> None:
    settings = RedisSettings(url=private_redis.info.url, key_prefix="t", socket_timeout=1.0)
    backend = QueueBackend.connect(settings)
    try:
        queue = backend.queue("pod-1")
        await queue.push([run(1)])
        await backend.ping()
        private_redis.kill()
        calls = [
            backend.ping(),
            queue.heartbeat(5),
            queue.push([run(2)]),
            queue.push([run(3), run(4, OTHER)]),
            queue.pop(SHARD, 1),
            queue.settle([run(1)]),
            queue.delay(SHARD, [run(1)], 1),
            queue.recover(),
            queue.depth(SHARD),
            queue.shards(),
            queue.position(SHARD, run(1).key, ["pod-1"]),
            backend.pods(),
            backend.adopt("pod-1", "pod-2"),
            backend.missing(SHARD, [run(1).key], ["pod-1"]),
            backend.take_tokens(SHARD, 1, 10, 10, 0.1),
            backend.back_off(SHARD, 1, 0.1),
            backend.hold_lease("x", "me", 5),
            backend.release_lease("x", "me"),
        ]
        for call in calls:
            with pytest.raises(QueueUnavailable):
                await asyncio.wait_for(call, 10)
        # a restarted Redis is empty: the scripts are loaded again on first use
        await asyncio.to_thread(private_redis.restart)
        await asyncio.wait_for(queue.push([run(7)]), 10)
        assert [r.priority for r in await queue.pop(SHARD, 5)] == [7]
    finally:
        await backend.close()


async def test_leases_are_exclusive_renewable_and_expire(backend: QueueBackend) -> None:
    assert await backend.hold_lease("leader", "a", 0.3)
    assert not await backend.hold_lease("leader", "b", 0.3)
    await asyncio.sleep(0.2)
    assert await backend.hold_lease("leader", "a", 0.3)  # renewed: pushed out again
    await asyncio.sleep(0.2)
    assert not await backend.hold_lease("leader", "b", 0.3)  # a's renewal still holds
    await asyncio.sleep(0.35)
    assert await backend.hold_lease("leader", "b", 5)  # a's lease expired
    assert not await backend.hold_lease("leader", "a", 5)
    assert await backend.hold_lease("other", "a", 5)  # leases are independent


async def test_lease_release_only_by_its_holder(backend: QueueBackend) -> None:
    assert await backend.hold_lease("leader", "a", 30)
    await backend.release_lease("leader", "b")
    assert not await backend.hold_lease("leader", "b", 30)
    await backend.release_lease("leader", "a")
    assert await backend.hold_lease("leader", "b", 30)
    await backend.release_lease("never-held", "a")


async def test_recover_reads_the_shards_again_when_one_appears_meanwhile(
    backend: QueueBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = backend.queue("pod-1")
    first, later = run(10), run(20, OTHER)
    await queue.push([first, later])
    await queue.pop(SHARD, 1)
    told: list[list[str]] = []
    run_script = backend.run

    async def racing(script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script == "recover":
            told.append(list(args))
            if len(told) == 1:  # after recover() read the runs in flight, before its script
                await queue.pop(OTHER, 1)
        return await run_script(script, keys, args)

    monkeypatch.setattr(backend, "run", racing)
    assert await queue.recover() == 2
    assert told == [[SHARD], [SHARD, OTHER]]
    for item in (first, later):
        assert await places(backend, "pod-1", item) == ["ready"]


async def test_a_scheduler_restarted_under_its_pod_name_dispatches_what_it_had_popped(
    servers: Servers,
) -> None:
    async with local_system(servers, templates=[template("echo")]) as system:
        (first,) = system.schedulers
        backend = QueueBackend.connect(
            RedisSettings(url=servers.redis_url, key_prefix=servers.redis_prefix)
        )
        try:
            await backend.back_off("shard-0", 60, 0.05)  # no Job is created meanwhile
            request_id = await system.submit("echo")
            await first.stop()
            # the state a crash right after a pop leaves: the run in flight, not settled,
            # and the pod's heartbeat still current when its container starts again
            queue = backend.queue(first.pod)
            await queue.pop("shard-0", 0)  # a run given back on the way out is due at once
            assert [str(r.key.id) for r in await queue.pop("shard-0", 1)] == [request_id]
            await queue.heartbeat(30)
            await backend.client.delete(backend.keys.throttle("shard-0"))
            settings = first.settings
            restarted = replace(settings, http=replace(settings.http, port=free_port()))
            system.schedulers.append(await serve_scheduler(restarted))
            answer = await system.wait_for("echo", request_id, timeout=10)
            assert answer["status"] == "COMPLETED", answer
        finally:
            await backend.close()


async def test_a_script_call_makes_no_task(backend: QueueBackend) -> None:
    # redis-py bounds each write with asyncio.wait_for, a task per command on Python 3.11;
    # a script call is bounded by one deadline instead, which needs none
    queue = backend.queue("pod-1")
    await queue.heartbeat(5)  # connected, its health check fresh, the scripts loaded
    await queue.pop(SHARD, 1)
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **options)

    previous = loop.get_task_factory()
    loop.set_task_factory(factory)
    try:
        for _ in range(5):
            await queue.heartbeat(5)
            assert await queue.pop(SHARD, 1) == []
    finally:
        loop.set_task_factory(previous)
    assert made == []


class Freezer:
    """A TCP proxy to Redis that stops passing Redis's answers on while frozen."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("redis://").partition("/")[0].partition(":")
        self.upstream = (host, int(port or 6379))
        self.answering = asyncio.Event()
        self.answering.set()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.answering.set()
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers += [writer, up_writer]

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: bool
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if gate:
                        await self.answering.wait()
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))


async def test_a_redis_that_stops_answering_mid_call_is_unavailable_within_the_deadline(
    redis_url: str, redis_prefix: str
) -> None:
    freezer = Freezer(redis_url)
    async with freezer as url:
        settings = RedisSettings(url=url, key_prefix=redis_prefix, socket_timeout=0.5)
        backend = QueueBackend.connect(settings)
        try:
            queue = backend.queue("pod-1")
            await queue.heartbeat(5)
            freezer.answering.clear()
            with pytest.raises(QueueUnavailable, match="redis unavailable"):
                await asyncio.wait_for(queue.pop(SHARD, 1), 10)
            assert backend.outage.is_down
            pool: Any = backend.client.connection_pool
            assert not pool._in_use_connections  # the connection went back to the pool
            freezer.answering.set()
            assert await asyncio.wait_for(queue.pop(SHARD, 1), 10) == []
            assert pool._in_use_connections == set(backend._spare)  # kept for the next
        finally:
            await backend.close()


async def test_a_connection_redis_closed_while_idle_is_not_used_again(
    backend: QueueBackend,
) -> None:
    queue = backend.queue("pod-1")
    await queue.heartbeat(5)
    [kept] = backend._spare  # its connection, kept for the next script
    host, port = kept._writer.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
    assert await backend.client.client_kill_filter(addr=f"{host}:{port}") == 1
    for _ in range(100):  # until this process has seen it closed
        if await kept.can_read():
            break
        await asyncio.sleep(0.01)
    # on a new connection: the pool (with maintenance notifications on, as with RESP3)
    # hands out a connection Redis closed as it is, and its first command fails
    await asyncio.wait_for(queue.heartbeat(5), 10)
    assert (await backend.pods()).live == ["pod-1"]
