"""The object store of one shard: every object, a cluster-wide resourceVersion, watch history.

The store plays etcd and the API server's watch cache in one. Guarantees:

* **One monotonic ``resourceVersion``** across all resources of the shard; every write
  (create, replace, delete) takes the next one, and a deleted object's last version is
  the deletion's.
* **Stored objects are never mutated.** A write stores a new dict; readers, the watch
  history and answers already being written may keep a reference without copying. Code
  that changes an object builds new dicts for the parts it changes (``{**old, ...}``).
* **Bounded history per resource.** The last ``history_size`` changes of each resource
  are kept for watches that resume from a version; a watch from a version older than the
  oldest kept change gets ``410 Expired``, as from a real server after compaction.
* **Cheap fan-out.** A change is serialised at most once per event type (lazily, only if
  a watcher wants it) and the bytes are appended to each matching watcher's buffer. An
  object's ``spec``, the bulk of a Job or Pod, is the same dict in every version a status
  write makes, so its bytes are kept for a while (:func:`encoded`) and spliced into the
  next event or answer that carries it rather than serialised again. A
  watcher whose buffer exceeds its byte budget is closed, as a real server drops a watcher
  that cannot keep up; the client then resumes from its last version.
* **Selector transitions.** A watcher with a selector sees ``ADDED`` when a modified object
  starts to match and ``DELETED`` when it stops matching, as from the watch cache.

Controllers subscribe to a resource with :meth:`ObjectStore.subscribe`; their callbacks run
synchronously after each change is fanned out and must only note work for later.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from nexus_dev.cluster.selectors import Predicate
from nexus_dev.cluster.statuses import ApiError

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

_dumps: Final = orjson.dumps
"""``orjson.dumps``, and its option below, as names of this module: compiled, a Final
name is a C static, where ``orjson.dumps`` is a module attribute looked up at each call
(a dozen times a run)."""
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True, slots=True)
class Resource:
    """What the API calls a resource: its group, version, plural and kind."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


class _SpecBytes:
    """The serialised ``spec`` of recently written objects, by the spec dict's identity.

    Two generations of at most ``limit`` entries each: a spec asked for again is found in
    either; when the young one is full the old one is dropped. Entries hold their dict, so
    an identity is never reused while it is kept. Safe because stored objects are never
    mutated: a dict that is another object's spec now is the same spec it was.

    A spec with a pod ``template`` (a Job's) is serialised with its template's ``spec``
    kept as an entry of its own, so that the pods made from it can be given their spec's
    bytes without serialising it again (:func:`derived_spec`).
    """

    __slots__ = ("limit", "old", "young")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.young: dict[int, tuple[Obj, orjson.Fragment, bytes]] = {}
        self.old: dict[int, tuple[Obj, orjson.Fragment, bytes]] = {}

    def fragment(self, spec: Obj) -> orjson.Fragment:
        key = id(spec)
        entry = self.young.get(key)
        if entry is not None and entry[0] is spec:
            return entry[1]
        entry = self.old.get(key)
        if entry is None or entry[0] is not spec:
            entry = self._serialised(spec)
        self.keep(key, entry)
        return entry[1]

    def known(self, spec: Obj) -> bytes | None:
        """The bytes kept for ``spec``, if they are."""
        key = id(spec)
        entry = self.young.get(key) or self.old.get(key)
        return entry[2] if entry is not None and entry[0] is spec else None

    def keep(self, key: int, entry: tuple[Obj, orjson.Fragment, bytes]) -> None:
        if len(self.young) >= self.limit:
            self.old, self.young = self.young, {}
        self.young[key] = entry

    def _serialised(self, spec: Obj) -> tuple[Obj, orjson.Fragment, bytes]:
        template = spec.get("template")
        if type(template) is dict and type(template.get("spec")) is dict:
            pod_spec = self.fragment(template["spec"])
            data = orjson.dumps({**spec, "template": {**template, "spec": pod_spec}})
        else:
            data = orjson.dumps(spec)
        return (spec, orjson.Fragment(data), data)


_SPECS = _SpecBytes(2048)
"""Shared by every shard of the process: a spec is the same bytes wherever it is sent."""


def encoded(obj: Obj) -> Obj:
    """``obj`` ready for ``orjson.dumps``: its ``spec`` as the bytes kept for it."""
    spec = obj.get("spec")
    if not spec or type(spec) is not dict:
        return obj
    return {**obj, "spec": _SPECS.fragment(spec)}


def derived_spec(spec: Obj, base: Obj, added: bytes) -> None:
    """Note that ``spec`` is ``{**base, <added>}``: ``base`` and then keys ``base`` does not
    have, which serialise as ``added`` (``"key":value,...``). A pod's spec is its Job's
    template spec and its node: when the template's bytes are kept, the pod's are them
    and ``added``, exactly what ``orjson.dumps(spec)`` would give, without serialising."""
    data = _SPECS.known(base)
    if data is not None and len(data) > 2:
        derived = data[:-1] + b"," + added + b"}"
        _SPECS.keep(id(spec), (spec, orjson.Fragment(derived), derived))


_LINE_HEADS = {
    kind: b'{"type":"%b","object":' % kind.encode() for kind in ("ADDED", "MODIFIED", "DELETED")
}
_LINE_TAIL = b"}\n"


class Change:
    """One write, as kept in the history and sent to watchers."""

    __slots__ = ("data", "lines", "obj", "old", "rv", "type")

    def __init__(self, rv: int, type: str, obj: Obj, old: Obj | None = None) -> None:
        self.rv = rv
        self.type = type  # ADDED, MODIFIED, DELETED
        self.obj = obj
        self.old = old
        self.data: bytes | None = None  # the object as written, serialised once if asked
        self.lines: dict[str, bytes] | None = None  # only made if a watcher wants a line

    def encoded(self) -> bytes:
        """The object as this change left it (:meth:`final`), serialised once for every
        watch event and answer that carries it: cut from the change's own watch event
        line when there is one (the history keeps one copy of the bytes, not two)."""
        lines = self.lines
        if lines is not None:
            own = lines.get(self.type)
            if own is not None:
                return own[len(_LINE_HEADS[self.type]) : -len(_LINE_TAIL)]
        data = self.data
        if data is None:
            data = self.data = _dumps(encoded(self.final()))
        return data

    def line(self, event_type: str, obj: Obj | None = None) -> bytes:
        """The watch event line, made once per distinct event type: the object in the
        event's envelope (the bytes :meth:`encoded` cuts an answer from), or ``obj`` when
        the line carries another object (a selector transition's ``DELETED*``)."""
        lines = self.lines
        if lines is None:
            lines = self.lines = {}
        cached = lines.get(event_type)
        if cached is None:
            data = self.data
            if obj is not None:  # a selector transition's DELETED*: another object
                body = {"type": event_type.rstrip("*"), "object": encoded(obj)}
                cached = _dumps(body, option=_NEWLINE)
            elif data is None:  # serialised in its envelope: no copy made
                final = self.obj if self.type != "DELETED" else self.final()
                body = {"type": event_type, "object": encoded(final)}
                cached = _dumps(body, option=_NEWLINE)
            else:  # already serialised for an answer: wrapped
                cached = b"".join((_LINE_HEADS[event_type], data, _LINE_TAIL))
                if event_type == self.type:
                    self.data = None  # the line keeps these bytes from now on
            lines[event_type] = cached
        return cached

    def final(self) -> Obj:
        """The object as this change left it.

        A deletion keeps the last stored version in :attr:`obj` and stamps the deletion's
        ``resourceVersion`` on a copy only when somebody asks (a watcher, the API answer):
        most deletions are never watched, and the copy would be built and freed for nothing.
        """
        obj = self.obj
        if self.type != "DELETED":
            return obj
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}


class Watcher:
    """One open watch: what it selects and the bytes waiting to be written to it."""

    __slots__ = ("budget", "buffered", "closed", "lines", "namespace", "predicate", "waiter")

    def __init__(self, namespace: str | None, predicate: Predicate | None, budget: int) -> None:
        self.namespace = namespace
        self.predicate = predicate
        self.budget = budget
        self.lines: list[bytes] = []
        self.buffered = 0
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def push(self, line: bytes) -> None:
        if self.closed:
            return
        self.lines.append(line)
        self.buffered += len(line)
        if self.buffered > self.budget:  # too slow: drop it like a real server
            self.lines.clear()
            self.buffered = 0
            self.closed = True
        waiter = self.waiter  # _wake, inline: once per line of every watch
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> bytes:
        """Everything buffered, joined."""
        return b"".join(self.take_lines())

    def take_lines(self) -> list[bytes]:
        """Everything buffered, line by line, for one write (the caller's from now on)."""
        lines = self.lines
        self.lines = []
        self.buffered = 0
        return lines

    def offer(self, change: Change) -> None:
        """Push ``change`` if this watcher selects it, with selector transitions applied."""
        obj = change.obj
        if self.namespace is not None:
            metadata: Obj = obj["metadata"]  # typed: a dict's own lookup when compiled
            if metadata.get("namespace") != self.namespace:
                return
        predicate = self.predicate
        if predicate is None:
            self.push(change.line(change.type))
            return
        now = predicate(obj)
        if change.type != "MODIFIED" or change.old is None:
            if now:
                self.push(change.line(change.type))
            return
        before = predicate(change.old)
        if now and before:
            self.push(change.line("MODIFIED"))
        elif now:
            self.push(change.line("ADDED"))
        elif before:
            old = change.old
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(change.rv)}}
            self.push(change.line("DELETED*", gone))


class KeyOrder:
    """The keys of a collection in ``(namespace, name)`` order, as etcd lists them.

    Kept only while somebody lists: a write costs a set or list operation then, and
    nothing at all when nobody has listed since the keys last changed a lot. A list after
    writes merges the new keys into the sorted ones (two sorted runs: linear), so paging
    through a collection that is being written to costs O(n) per page, not a sort.
    """

    __slots__ = ("added", "removed", "sorted")

    def __init__(self) -> None:
        self.sorted: list[Key] | None = None  # None: not kept (nobody listed lately)
        self.added: list[Key] = []
        self.removed: set[Key] = set()

    def add(self, key: Key) -> None:
        if self.sorted is None:
            return
        if key in self.removed:
            self.removed.discard(key)  # deleted and created again: still where it was
        else:
            self.added.append(key)
            if len(self.added) > len(self.sorted) + 1024:
                self.sorted = None  # cheaper to sort afresh at the next list
                self.added.clear()
                self.removed.clear()

    def discard(self, key: Key) -> None:
        if self.sorted is None:
            return
        self.removed.add(key)
        if len(self.removed) > len(self.sorted) + 1024:
            self.sorted = None
            self.added.clear()
            self.removed.clear()

    def keys(self, objects: dict[Key, Obj]) -> list[Key]:
        """Every key of ``objects``, sorted; the list must not be changed by the caller."""
        keys = self.sorted
        if keys is None:
            keys = sorted(objects)
        elif self.added or self.removed:
            removed = self.removed
            if removed:
                keys = [k for k in keys if k not in removed]
                added = [k for k in self.added if k not in removed]
            else:
                keys, added = list(keys), self.added
            keys += added
            keys.sort()  # one long sorted run and a few new keys: timsort merges in linear time
        self.sorted = keys
        self.added = []
        self.removed = set()
        return keys


class Collection:
    """The objects of one resource, their recent changes and their watchers."""

    def __init__(self, resource: Resource, history_size: int) -> None:
        self.resource = resource
        self.objects: dict[Key, Obj] = {}
        self.order = KeyOrder()
        self.history: deque[Change] = deque()
        self.history_size = history_size
        self.evicted_rv = 0
        """Highest version no longer in :attr:`history`; watches from before it get 410."""
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[Change], None]] = []

    def record(self, change: Change) -> None:
        history = self.history
        if len(history) >= self.history_size:
            self.evicted_rv = history.popleft().rv
        history.append(change)
        if self.watchers:
            for watcher in self.watchers:
                watcher.offer(change)
        for listener in self.listeners:
            listener(change)

    def sorted_keys(self, namespace: str | None = None) -> list[Key]:
        """Keys in list order, of one namespace or all (a new list only for a namespace)."""
        keys = self.order.keys(self.objects)
        if namespace is None:
            return keys
        # (ns,) sorts before every (ns, name); (ns + "\0",) after them and before any other
        return keys[bisect_left(keys, (namespace,)) : bisect_left(keys, (namespace + "\0",))]

    def changes_since(self, rv: int) -> list[Change]:
        """Changes after ``rv``; ``410 Expired`` when some of them are no longer kept."""
        if rv < self.evicted_rv:
            raise ApiError.expired(f"too old resource version: {rv} ({self.evicted_rv + 1})")
        newer: list[Change] = []
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            newer.append(change)
        newer.reverse()
        return newer


class ObjectStore:
    """All collections of one shard and the version counter they share."""

    def __init__(self, resources: list[Resource], history_size: int) -> None:
        self.rv = 1
        self.collections = {r.plural: Collection(r, history_size) for r in resources}

    def collection(self, plural: str) -> Collection:
        return self.collections[plural]

    def subscribe(self, plural: str, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every change of ``plural`` (synchronously; keep it cheap)."""
        self.collections[plural].listeners.append(listener)

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self.collections[plural].objects.get((namespace, name))

    def require(self, plural: str, namespace: str, name: str) -> Obj:
        obj = self.collections[plural].objects.get((namespace, name))
        if obj is None:
            resource = self.collections[plural].resource
            raise ApiError.not_found(resource.group, plural, name)
        return obj

    def create(self, plural: str, obj: Obj) -> Obj:
        """Store a new object (its metadata already complete but for the version)."""
        collection = self.collections[plural]
        metadata: Obj = obj["metadata"]  # typed: compiled, the dict's own item access
        key = (metadata["namespace"], metadata["name"])
        objects = collection.objects
        if key in objects:
            raise ApiError.already_exists(collection.resource.group, plural, metadata["name"])
        self.rv = rv = self.rv + 1
        metadata["resourceVersion"] = str(rv)
        objects[key] = obj
        if collection.order.sorted is not None:  # kept only while somebody lists
            collection.order.add(key)
        collection.record(Change(rv, "ADDED", obj))
        return obj

    def replace(self, plural: str, obj: Obj, *, bump_generation: bool = False) -> Obj:
        """Store a new version of an existing object.

        ``obj`` must be a new dict (the caller's ``{**old, ...}``): it is stored as it is,
        with its ``metadata`` replaced by a copy that carries the new version.
        """
        collection = self.collections[plural]
        metadata: Obj = obj["metadata"]
        key = (metadata["namespace"], metadata["name"])
        old = collection.objects.get(key)
        if old is None:
            raise ApiError.not_found(collection.resource.group, plural, metadata["name"])
        rv = self._next_rv()
        metadata = {**metadata, "resourceVersion": str(rv)}
        if bump_generation:
            metadata["generation"] = int(old["metadata"].get("generation", 1)) + 1
        obj["metadata"] = metadata  # obj is the caller's new dict; its metadata may be shared
        collection.objects[key] = obj
        collection.record(Change(rv, "MODIFIED", obj, old))
        return obj

    def update(self, plural: str, namespace: str, name: str, **sections: Any) -> Obj | None:
        """Replace top-level sections (``status=...``) of an object; ``None`` if it is gone."""
        old = self.collections[plural].objects.get((namespace, name))
        if old is None:
            return None
        return self.replace(plural, {**old, **sections})

    def delete(self, plural: str, namespace: str, name: str) -> Change | None:
        """Remove an object; ``None`` if there was none.

        The change's :meth:`~Change.final` object — what the ``DELETED`` event carries —
        has the deletion's version.
        """
        collection = self.collections[plural]
        key = (namespace, name)
        old = collection.objects.pop(key, None)
        if old is None:
            return None
        collection.order.discard(key)
        rv = self._next_rv()
        change = Change(rv, "DELETED", old)
        collection.record(change)
        return change

    def serialised(self, plural: str, obj: Obj) -> bytes:
        """``obj`` (as stored) as JSON: the bytes its watch events carry when it is the
        latest write of ``plural`` (an answer to that write), else serialised now."""
        history = self.collections[plural].history
        if history:
            change = history[-1]
            if change.obj is obj and change.type != "DELETED":
                return change.encoded()
        return _dumps(encoded(obj))

    def items(
        self, plural: str, namespace: str | None, predicate: Predicate | None = None
    ) -> Iterator[Obj]:
        """Objects of ``plural`` in ``namespace`` (all when ``None``) that match, unsorted."""
        for (ns, _), obj in self.collections[plural].objects.items():
            if namespace is not None and ns != namespace:
                continue
            if predicate is None or predicate(obj):
                yield obj

    def count(self, plural: str) -> int:
        return len(self.collections[plural].objects)
