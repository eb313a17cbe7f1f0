"""Kubernetes ``Event`` objects written by the emulated controllers and kubelet.

Events are how a real cluster explains itself (``SuccessfulCreate``, ``BackOff``,
``DeadlineExceeded`` ...), and Nexus's maintainer reads them to tell a user why a run
failed, so they carry the fields a real ``v1 Event`` has: ``involvedObject`` (kind, name,
namespace, uid, apiVersion, fieldPath), ``reason``, ``message``, ``type``, ``count``,
``firstTimestamp``/``lastTimestamp``, ``source`` and ``reportingComponent``.

Guarantees:

* **Aggregation as the client-go recorder does it:** the same object, reason, message and
  component within the TTL update one Event (``count`` + 1, new ``lastTimestamp``) instead
  of writing a new one — a pod stuck in image-pull back-off has one ``BackOff`` event that
  counts up.
* **Written at once, one per happening:** a run's six Events (``SuccessfulCreate`` and
  ``Completed`` on its Job, ``Scheduled``, ``Pulled``, ``Created``, ``Started`` on its
  pod) are the six a real cluster writes, each on its own object version, so none of them
  folds into another by the rule above (nor by client-go's similar-event aggregation,
  which needs ten of one reason on one object). They cost a sixth of the emulator's
  instructions, so each is built cheaply: a copy of its reason's shape with its own
  fields set, timestamps formatted once a second, one ``involvedObject`` shared by the
  Events about one version of one object (the kubelet's three). Leaving them unwritten
  while nobody watches was weighed and refused: ``kubectl describe`` and ``get events``
  list them later, and a watch resumed from an older version must find them in the
  history.
* **Bounded:** an Event is deleted ``ttl`` seconds after its last update (the API server's
  ``--event-ttl``, one hour by default), and beyond ``max_events`` the oldest go first,
  so a long benchmark does not grow without limit. Expiry is one timer per shard that
  re-arms itself, never a task per event.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Any, Final

from nexus_dev.cluster.statuses import iso, new_uid
from nexus_dev.cluster.store import Obj, ObjectStore

NODE_NAME = "devcluster-node"
_hex: Final = hex
"""The builtin as a name of this module: compiled, a C static rather than a lookup in the
builtins module at every Event."""
_SWEEP_INTERVAL = 1.0


class EventRecorder:
    """Writes, aggregates and expires the Events of one shard."""

    def __init__(self, store: ObjectStore, *, ttl: float, max_events: int) -> None:
        self.store = store
        self.ttl = ttl
        self.max_events = max_events
        self.enabled = True
        # aggregation key -> (namespace, name); ordered by last update, oldest first
        self._live: OrderedDict[tuple[str, ...], tuple[str, str, float]] = OrderedDict()
        self._once: deque[tuple[str, str, float]] = deque()
        """Unique Events (see :meth:`record`) as (namespace, name, time), oldest first."""
        self._sequence = 0
        self._second = -1
        self._stamp = ""
        self._sources: dict[str, dict[str, str]] = {}
        self._shapes: dict[tuple[str, str, str], Obj] = {}
        self._involved: tuple[Obj | None, str | None, dict[str, Any]] = (None, None, {})
        """The last Event's object, field path and ``involvedObject``, which the next
        Event about the same version of the same object shares (never changed)."""
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(_SWEEP_INTERVAL, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def record(
        self,
        involved: Obj,
        event_type: str,
        reason: str,
        message: str,
        component: str,
        *,
        field_path: str | None = None,
        unique: bool = False,
    ) -> None:
        """Record that ``reason`` happened to ``involved`` (a Job or Pod as stored).

        ``unique``: the caller knows it cannot happen again to the same object (a pod's
        ``Scheduled``, its container's ``Pulled``, ``Created`` and ``Started`` — a Job's
        pods are never restarted —, a Job's ``Completed``, a ``SuccessfulCreate`` naming
        its new pod), so there is nothing to aggregate it with: no aggregation key is
        made for it, and it expires by age and count like every other Event."""
        if not self.enabled:
            return
        if unique:
            self.record_unique(
                involved, component, ((event_type, reason, message),), field_path=field_path
            )
            return
        metadata = involved["metadata"]
        now_ns = time.time_ns()
        now = now_ns / 1e9
        key = (metadata.get("uid", ""), reason, message, component, field_path or "")
        existing = self._live.get(key)
        if existing is not None and self._count_again(key, existing, now):
            return
        namespace, name = self._write(
            involved, component, event_type, reason, message, field_path, now_ns
        )
        self._live[key] = (namespace, name, now)
        if len(self._live) + len(self._once) > self.max_events:
            self._expire_oldest()

    def record_unique(
        self,
        involved: Obj,
        component: str,
        happenings: tuple[tuple[str, str, str], ...],
        *,
        field_path: str | None = None,
    ) -> None:
        """Record ``happenings`` — ``(type, reason, message)``, in order, none of which can
        happen again to ``involved`` (see :meth:`record`) — at once: the kubelet's
        ``Pulled``, ``Created`` and ``Started`` share their object, time and source."""
        if not self.enabled:
            return
        now_ns = time.time_ns()
        now = now_ns / 1e9
        once = self._once
        for event_type, reason, message in happenings:
            namespace, name = self._write(
                involved, component, event_type, reason, message, field_path, now_ns
            )
            once.append((namespace, name, now))
        while len(once) + len(self._live) > self.max_events:
            self._expire_oldest()

    def _write(
        self,
        involved: Obj,
        component: str,
        event_type: str,
        reason: str,
        message: str,
        field_path: str | None,
        now_ns: int,
    ) -> tuple[str, str]:
        """Create one new Event; its namespace and name."""
        metadata: Obj = involved["metadata"]  # typed: compiled, the dict's own item access
        second = now_ns // 1_000_000_000
        if second != self._second:
            self._second, self._stamp = second, iso(now_ns / 1e9)
        stamp = self._stamp
        self._sequence += 1
        # hex() rather than a format spec: the same digits, a third of the cost compiled
        name = metadata["name"] + "." + _hex(now_ns + self._sequence)[2:]
        namespace = metadata["namespace"]
        last = self._involved
        if last[0] is involved and last[1] == field_path:
            involved_object = last[2]  # the kubelet's Pulled, Created, Started: one pod version
        else:
            involved_object = {
                "kind": involved.get("kind", ""),
                "namespace": namespace,
                "name": metadata["name"],
                "uid": metadata.get("uid", ""),
                "apiVersion": involved.get("apiVersion", ""),
                "resourceVersion": metadata.get("resourceVersion", ""),
            }
            if field_path:
                involved_object["fieldPath"] = field_path
            self._involved = (involved, field_path, involved_object)
        shape = self._shapes.get((reason, component, event_type))
        if shape is None:
            shape = self._shape(reason, component, event_type)
        event = shape.copy()  # a copy of a dict of these keys: cheaper than building it
        event["metadata"] = {
            "name": name,
            "namespace": namespace,
            "uid": new_uid(),
            "creationTimestamp": stamp,
        }
        event["involvedObject"] = involved_object
        event["message"] = message
        event["firstTimestamp"] = event["lastTimestamp"] = stamp
        self.store.create("events", event)
        return namespace, name

    def _count_again(
        self, key: tuple[str, ...], existing: tuple[str, str, float], now: float
    ) -> bool:
        """Count one more occurrence on the Event ``key`` already wrote, if it still exists."""
        current = self.store.get("events", existing[0], existing[1])
        if current is None:
            return False
        self.store.replace(
            "events",
            {**current, "count": int(current.get("count", 1)) + 1, "lastTimestamp": iso(now)},
        )
        self._live[key] = (existing[0], existing[1], now)
        self._live.move_to_end(key)
        return True

    def _shape(self, reason: str, component: str, event_type: str) -> Obj:
        """The fields every new Event of ``reason`` from ``component`` has, in their order;
        ``None`` where each has its own. Its ``source`` is shared by all of them (stored
        objects are never changed)."""
        source = self._sources.get(component)
        if source is None:
            source = self._sources[component] = {"component": component}
            if component == "kubelet":
                source["host"] = NODE_NAME
        shape = self._shapes[(reason, component, event_type)] = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": None,
            "involvedObject": None,
            "reason": reason,
            "message": None,
            "source": source,
            "firstTimestamp": None,
            "lastTimestamp": None,
            "count": 1,
            "type": event_type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": NODE_NAME if component == "kubelet" else "",
        }
        return shape

    def track(self, event: Obj) -> None:
        """Expire an Event created through the API like the recorder's own."""
        metadata = event["metadata"]
        key = ("api", metadata["namespace"], metadata["name"])
        self._live[key] = (metadata["namespace"], metadata["name"], time.time())
        if len(self._live) + len(self._once) > self.max_events:
            self._expire_oldest()

    def _expire_oldest(self) -> None:
        """Delete the Event updated longest ago, aggregated or unique."""
        live, once = self._live, self._once
        if once and (not live or once[0][2] <= next(iter(live.values()))[2]):
            namespace, name, _ = once.popleft()
        else:
            _, (namespace, name, _) = live.popitem(last=False)
        self.store.delete("events", namespace, name)

    def _oldest(self) -> float | None:
        """When the Event updated longest ago was last updated (``None``: there is none)."""
        live, once = self._live, self._once
        oldest = once[0][2] if once else None
        if live:
            updated = next(iter(live.values()))[2]
            if oldest is None or updated < oldest:
                oldest = updated
        return oldest

    def _sweep(self) -> None:
        deadline = time.time() - self.ttl
        while True:
            oldest = self._oldest()
            if oldest is None:
                break
            if oldest > deadline and len(self._live) + len(self._once) <= self.max_events:
                break
            self._expire_oldest()
        self._timer = asyncio.get_running_loop().call_later(
            min(_SWEEP_INTERVAL, max(0.05, self.ttl / 4)), self._sweep
        )
