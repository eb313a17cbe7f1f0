"""Events: aggregated as client-go does, unique ones written once each, all expired oldest
first by count and by age."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from nexus_dev.cluster import events as events_module
from nexus_dev.cluster.events import EventRecorder
from nexus_dev.cluster.store import ObjectStore, Resource

RESOURCES = [Resource("", "v1", "events", "Event"), Resource("", "v1", "pods", "Pod")]


def pod(name: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "7"},
    }


def stored(store: ObjectStore) -> list[dict[str, Any]]:
    return list(store.collection("events").objects.values())


def test_the_same_happening_again_counts_up_one_event() -> None:
    store = ObjectStore(RESOURCES, history_size=100)
    recorder = EventRecorder(store, ttl=3600, max_events=100)
    for _ in range(3):
        recorder.record(pod("p"), "Warning", "BackOff", "Back-off pulling image", "kubelet")
    [event] = stored(store)
    assert event["count"] == 3 and event["reason"] == "BackOff"


def test_a_unique_event_is_written_whole_and_never_folded() -> None:
    store = ObjectStore(RESOURCES, history_size=100)
    recorder = EventRecorder(store, ttl=3600, max_events=100)
    path = "spec.containers{c}"
    for reason in ("Pulled", "Created", "Started"):
        recorder.record(
            pod("p"), "Normal", reason, f"{reason} c", "kubelet", field_path=path, unique=True
        )
    written = stored(store)
    assert [e["reason"] for e in written] == ["Pulled", "Created", "Started"]
    first = written[0]
    assert first["involvedObject"] == {
        "kind": "Pod",
        "namespace": "ns",
        "name": "p",
        "uid": "uid-p",
        "apiVersion": "v1",
        "resourceVersion": "7",
        "fieldPath": path,
    }
    assert first["count"] == 1 and first["source"] == {
        "component": "kubelet",
        "host": "devcluster-node",
    }
    assert (
        first["firstTimestamp"] == first["lastTimestamp"] == first["metadata"]["creationTimestamp"]
    )
    assert first["metadata"]["name"].startswith("p.")


def test_beyond_the_limit_the_oldest_event_goes_first_unique_or_aggregated() -> None:
    store = ObjectStore(RESOURCES, history_size=100)
    recorder = EventRecorder(store, ttl=3600, max_events=3)
    recorder.record(pod("a"), "Normal", "Scheduled", "to node", "default-scheduler", unique=True)
    recorder.record(pod("b"), "Warning", "BackOff", "Back-off", "kubelet")
    recorder.record(pod("c"), "Normal", "Scheduled", "to node", "default-scheduler", unique=True)
    recorder.record(pod("d"), "Warning", "BackOff", "Back-off", "kubelet")
    assert sorted(e["involvedObject"]["name"] for e in stored(store)) == ["b", "c", "d"]
    recorder.record(pod("e"), "Normal", "Scheduled", "to node", "default-scheduler", unique=True)
    assert sorted(e["involvedObject"]["name"] for e in stored(store)) == ["c", "d", "e"]
    recorder.record(pod("f"), "Warning", "BackOff", "Back-off", "kubelet")
    assert sorted(e["involvedObject"]["name"] for e in stored(store)) == ["d", "e", "f"]


async def test_events_expire_by_age_unique_or_aggregated(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObjectStore(RESOURCES, history_size=100)
    recorder = EventRecorder(store, ttl=60, max_events=100)
    now = [time.time()]
    monkeypatch.setattr(events_module.time, "time", lambda: now[0])
    monkeypatch.setattr(events_module.time, "time_ns", lambda: int(now[0] * 1e9))
    recorder.record(pod("a"), "Normal", "Scheduled", "to node", "default-scheduler", unique=True)
    recorder.record(pod("b"), "Warning", "BackOff", "Back-off", "kubelet")
    now[0] += 30
    recorder.record(pod("c"), "Normal", "Scheduled", "to node", "default-scheduler", unique=True)
    recorder.record(pod("d"), "Warning", "BackOff", "Back-off", "kubelet")
    now[0] += 40  # a and b are 70 s old, c and d 40 s
    recorder.start()
    try:
        recorder._sweep()
        assert sorted(e["involvedObject"]["name"] for e in stored(store)) == ["c", "d"]
        now[0] += 30
        recorder._sweep()
        assert stored(store) == []
    finally:
        recorder.stop()
    await asyncio.sleep(0)


def test_the_kubelets_events_of_one_start_are_written_together_in_order() -> None:
    store = ObjectStore(RESOURCES, history_size=100)
    recorder = EventRecorder(store, ttl=3600, max_events=2)
    happenings = (
        ("Normal", "Pulled", 'Container image "i" already present on machine'),
        ("Normal", "Created", "Created container: c"),
        ("Normal", "Started", "Started container c"),
    )
    recorder.record_unique(pod("p"), "kubelet", happenings, field_path="spec.containers{c}")
    history = [c.obj for c in store.collection("events").history if c.type == "ADDED"]
    assert [(e["type"], e["reason"], e["message"]) for e in history] == list(happenings)
    assert len({e["metadata"]["name"] for e in history}) == 3
    assert all(e["involvedObject"] is history[0]["involvedObject"] for e in history)
    assert all(e["firstTimestamp"] == history[0]["firstTimestamp"] for e in history)
    assert [e["reason"] for e in stored(store)] == ["Created", "Started"]  # at most two kept
    recorder.enabled = False
    recorder.record_unique(pod("q"), "kubelet", happenings)
    assert len(stored(store)) == 2
