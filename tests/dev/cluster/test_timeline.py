"""The Job controller's timeline: timers on one loop timer, in order, cancellable, compacted."""

from __future__ import annotations

import asyncio
from typing import Any

from nexus_dev.cluster import timeline as timeline_module
from nexus_dev.cluster.timeline import Timeline


async def test_timers_run_at_their_time_in_the_order_set() -> None:
    loop = asyncio.get_running_loop()
    timeline = Timeline()
    fired: list[tuple[str, float]] = []
    start = loop.time()
    for name, delay in (("late", 0.06), ("early", 0.02), ("also-early", 0.02), ("now", 0.0)):
        timeline.call_later(delay, lambda n=name: fired.append((n, loop.time() - start)))
    await asyncio.sleep(0.12)
    assert [name for name, _ in fired] == ["now", "early", "also-early", "late"]
    for name, at in fired:
        wanted = {"now": 0.0, "early": 0.02, "also-early": 0.02, "late": 0.06}[name]
        assert at >= wanted - 0.001  # never before its time (the loop's resolution aside)
    assert len(timeline) == 0


async def test_a_cancelled_timer_never_runs_and_its_neighbours_do() -> None:
    timeline = Timeline()
    fired: list[str] = []
    keep = timeline.call_later(0.01, fired.append, "kept")
    drop = timeline.call_later(0.01, fired.append, "dropped")
    drop.cancel()
    drop.cancel()  # twice is once
    assert drop.cancelled() and not keep.cancelled()
    assert len(timeline) == 1
    await asyncio.sleep(0.05)
    assert fired == ["kept"]


async def test_a_timer_set_from_a_callback_does_not_delay_those_already_due_sooner() -> None:
    loop = asyncio.get_running_loop()
    timeline = Timeline()
    fired: list[tuple[str, float]] = []
    start = loop.time()

    def first() -> None:
        fired.append(("first", loop.time() - start))
        timeline.call_later(0.3, lambda: fired.append(("later", loop.time() - start)))

    timeline.call_later(0.0, first)
    timeline.call_later(0.02, lambda: fired.append(("second", loop.time() - start)))
    await asyncio.sleep(0.1)
    assert [name for name, _ in fired] == ["first", "second"]
    assert fired[1][1] < 0.1
    timeline.close()


async def test_a_failing_callback_is_reported_and_the_others_run() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    timeline = Timeline()
    fired: list[str] = []

    def fail() -> None:
        raise RuntimeError("boom")

    timeline.call_later(0.0, fail)
    timeline.call_later(0.0, fired.append, "after")
    await asyncio.sleep(0.03)
    loop.set_exception_handler(None)
    assert fired == ["after"]
    assert [str(context["exception"]) for context in reported] == ["boom"]


async def test_cancelled_timers_are_dropped_once_they_are_most_of_the_heap(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(timeline_module, "_COMPACT_AT", 10)
    timeline = Timeline()
    timers = [timeline.call_later(600, lambda: None) for _ in range(40)]
    for timer in timers[:30]:
        timer.cancel()
    timeline.call_later(600, lambda: None)  # a write finds 30 of 41 cancelled: rebuilt
    assert len(timeline._heap) == 11
    assert len(timeline) == 11
    timeline.close()


async def test_close_forgets_every_timer() -> None:
    timeline = Timeline()
    fired: list[str] = []
    timer = timeline.call_later(0.01, fired.append, "never")
    timeline.close()
    await asyncio.sleep(0.03)
    assert fired == [] and timer.cancelled() and len(timeline) == 0
