"""The store: keys in list order however writes interleave, versions of changes and deletions."""

from __future__ import annotations

import random

import orjson
import pytest

from nexus_dev.cluster.store import (
    Collection,
    ObjectStore,
    Resource,
    Watcher,
    derived_spec,
    encoded,
)

PODS = Resource("", "v1", "pods", "Pod")


def pod(namespace: str, name: str) -> dict[str, object]:
    return {"metadata": {"namespace": namespace, "name": name}}


@pytest.mark.parametrize("seed", range(20))
def test_sorted_keys_follow_any_mix_of_writes(seed: int) -> None:
    rng = random.Random(seed)
    store = ObjectStore([PODS], history_size=100)
    collection: Collection = store.collection("pods")
    names = [(ns, f"p-{i}") for ns in ("a", "b", "ab") for i in range(30)]
    for _ in range(600):
        namespace, name = rng.choice(names)
        if (namespace, name) in collection.objects:
            store.delete("pods", namespace, name)
        else:
            store.create("pods", pod(namespace, name))
        if rng.random() < 0.1:  # somebody lists now and then
            assert collection.sorted_keys() == sorted(collection.objects)
            for namespace in ("a", "b", "ab", "c"):
                expected = sorted(k for k in collection.objects if k[0] == namespace)
                assert collection.sorted_keys(namespace) == expected
    assert collection.sorted_keys() == sorted(collection.objects)


def test_key_order_is_dropped_when_nobody_lists() -> None:
    store = ObjectStore([PODS], history_size=10)
    collection = store.collection("pods")
    collection.sorted_keys()
    for i in range(3000):
        store.create("pods", pod("a", f"p-{i}"))
        store.delete("pods", "a", f"p-{i}")
    order = collection.order
    assert order.sorted is None and not order.added and not order.removed
    store.create("pods", pod("a", "last"))
    assert collection.sorted_keys() == [("a", "last")]


def test_replace_keeps_the_previous_version_intact() -> None:
    store = ObjectStore([PODS], history_size=10)
    first = store.create("pods", {**pod("a", "p"), "status": {"phase": "Pending"}})
    second = store.update("pods", "a", "p", status={"phase": "Running"})
    assert second is not None
    assert first["status"] == {"phase": "Pending"}
    assert first["metadata"]["resourceVersion"] == "2"
    assert second["metadata"]["resourceVersion"] == "3"
    history = store.collection("pods").history
    assert [c.type for c in history] == ["ADDED", "MODIFIED"]
    assert history[1].old is first


def test_deletion_carries_its_own_version_to_watchers() -> None:
    store = ObjectStore([PODS], history_size=10)
    watcher = Watcher(None, None, budget=1 << 20)
    store.collection("pods").watchers.add(watcher)
    created = store.create("pods", pod("a", "p"))
    change = store.delete("pods", "a", "p")
    assert change is not None
    assert created["metadata"]["resourceVersion"] == "2"
    assert change.final()["metadata"]["resourceVersion"] == "3"
    assert created["metadata"]["resourceVersion"] == "2"  # the stored version is untouched
    lines = [orjson.loads(line) for line in watcher.take().splitlines()]
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in lines] == [
        ("ADDED", "2"),
        ("DELETED", "3"),
    ]


def test_events_carry_each_version_of_an_object_as_written() -> None:
    """A spec kept serialised from an earlier version is sent byte for byte as the object
    stands: the status writes that share it, and a new spec written in its place."""
    store = ObjectStore([PODS], history_size=10)
    watcher = Watcher(None, None, budget=1 << 20)
    store.collection("pods").watchers.add(watcher)
    spec = {"containers": [{"name": "c", "env": [{"name": "A", "value": 'é"\n'}]}]}
    versions = [store.create("pods", {**pod("a", "p"), "spec": spec, "status": {}})]
    for phase in ("Running", "Succeeded"):
        updated = store.update("pods", "a", "p", status={"phase": phase})
        assert updated is not None
        versions.append(updated)
    replaced = {**versions[-1], "spec": {"containers": [{"name": "d"}]}}
    versions.append(store.replace("pods", replaced))
    change = store.delete("pods", "a", "p")
    assert change is not None
    types = ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    expected = [
        orjson.dumps({"type": kind, "object": obj}) + b"\n"
        for kind, obj in zip(types, [*versions, change.final()], strict=True)
    ]
    assert watcher.take().splitlines(keepends=True) == expected


def test_a_pod_spec_derived_from_its_template_serialises_as_itself() -> None:
    template_spec = {"containers": [{"name": "c", "image": "i", "env": [{"name": "A"}]}]}
    job_spec = {"backoffLimit": 0, "template": {"metadata": {}, "spec": template_spec}}
    assert orjson.dumps(encoded({"spec": job_spec})) == orjson.dumps({"spec": job_spec})
    pod_spec = {**template_spec, "nodeName": "n", "serviceAccountName": "default"}
    derived_spec(pod_spec, template_spec, b'"nodeName":"n","serviceAccountName":"default"')
    assert orjson.dumps(encoded({"spec": pod_spec})) == orjson.dumps({"spec": pod_spec})
    unknown = {"containers": []}  # never serialised: nothing to derive from, serialised anew
    other = {**unknown, "nodeName": "n"}
    derived_spec(other, unknown, b'"nodeName":"wrong"')
    assert orjson.loads(orjson.dumps(encoded({"spec": other})))["spec"]["nodeName"] == "n"


def test_an_answer_carries_the_bytes_its_watch_event_carries() -> None:
    """A write's answer is the object its watch event carries, byte for byte, whether a
    watcher made the event first or the answer is asked before any watcher."""
    store = ObjectStore([PODS], history_size=10)
    spec = {"containers": [{"name": "c", "env": [{"name": "A", "value": "é"}]}]}
    unwatched = store.create("pods", {**pod("a", "quiet"), "spec": spec})
    assert store.serialised("pods", unwatched) == orjson.dumps(unwatched)
    watcher = Watcher(None, None, budget=1 << 20)
    store.collection("pods").watchers.add(watcher)
    created = store.create("pods", {**pod("a", "p"), "spec": spec, "status": {}})
    answer = store.serialised("pods", created)
    assert answer == orjson.dumps(created)
    assert watcher.take() == b'{"type":"ADDED","object":' + answer + b"}\n"
    updated = store.update("pods", "a", "p", status={"phase": "Running"})
    assert updated is not None
    assert store.serialised("pods", updated) == orjson.dumps(updated)
    assert store.serialised("pods", created) == orjson.dumps(created)  # no longer the latest
    assert orjson.loads(watcher.take()) == {"type": "MODIFIED", "object": updated}


def test_a_change_seen_through_a_selector_transition_is_serialised_as_itself() -> None:
    """A status write that makes an object match a watcher's selector reaches it as
    ``ADDED``, one that makes it stop matching as ``DELETED`` with the write's version."""
    store = ObjectStore([PODS], history_size=10)
    watcher = Watcher(None, lambda obj: obj.get("status", {}).get("phase") == "Running", 1 << 20)
    store.collection("pods").watchers.add(watcher)
    store.create("pods", {**pod("a", "p"), "status": {"phase": "Pending"}})
    running = store.update("pods", "a", "p", status={"phase": "Running"})
    done = store.update("pods", "a", "p", status={"phase": "Succeeded"})
    assert running is not None and done is not None
    lines = watcher.take().splitlines(keepends=True)
    assert lines[0] == orjson.dumps({"type": "ADDED", "object": running}) + b"\n"
    gone = orjson.loads(lines[1])
    assert gone["type"] == "DELETED"
    assert gone["object"]["status"] == {"phase": "Running"}
    assert gone["object"]["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"]
    assert store.serialised("pods", done) == orjson.dumps(done)
