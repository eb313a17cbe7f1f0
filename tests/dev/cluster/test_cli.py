"""The ``nexus devcluster`` command: options reach the shards, the heap policy is undone."""

from __future__ import annotations

import asyncio
import gc

from nexus_dev.cluster.cli import build_parser, shard_specs
from nexus_dev.cluster.heap import HeapPolicy, HeapSettings


def test_options_reach_every_shard() -> None:
    options = "--shards 2 --no-events --mode off --start-delay 0.5 --watch-coalesce 0"
    options += " --watch-buffer 1000 --bookmark-interval 5"
    args = build_parser().parse_args(options.split())
    specs = shard_specs(args)
    assert [s.name for s in specs] == ["shard-0", "shard-1"]
    assert all(not s.events and s.mode == "off" for s in specs)
    assert specs[0].kubelet.start_delay == 0.5
    watch = specs[1].watch
    assert (watch.coalesce, watch.buffer_budget, watch.bookmark_interval) == (0, 1000, 5)
    defaults = shard_specs(build_parser().parse_args([]))[0]
    assert defaults.events


def test_events_per_shard() -> None:
    args = build_parser().parse_args(["--shard", "a:events=false", "--shard", "b"])
    assert [(s.name, s.events) for s in shard_specs(args)] == [("a", False), ("b", True)]
    quiet = build_parser().parse_args(["--no-events", "--shard", "c:events=true"])
    assert shard_specs(quiet)[0].events


def test_heap_options() -> None:
    assert build_parser().parse_args(["--gc-interval", "0"]).gc_interval == 0.0


async def test_heap_policy_collects_on_a_timer_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    policy = HeapPolicy(HeapSettings(full_interval=0.1))
    policy.start()
    try:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
        await asyncio.sleep(0.35)
        assert policy.full_collections >= 2
    finally:
        policy.stop()
    assert gc.isenabled()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_heap_policy_off_changes_nothing() -> None:
    before = gc.get_threshold()
    policy = HeapPolicy(HeapSettings(full_interval=0))
    policy.start()
    assert gc.isenabled()
    assert gc.get_threshold() == before
    policy.stop()
