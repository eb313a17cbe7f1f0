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
* **Bounded:** an Event is deleted ``ttl`` seconds after its last update (the API server's
  ``--event-ttl``, one hour by default), and beyond ``max_events`` the oldest go first,
  so a long benchmark does not grow without limit. Expiry is one timer per shard that
  re-arms itself, never a task per event.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from nexus_dev.cluster.statuses import iso, new_uid
from nexus_dev.cluster.store import Obj, ObjectStore

NODE_NAME = "devcluster-node"
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
        self._sequence = 0
        self._sources: dict[str, dict[str, str]] = {}
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
    ) -> None:
        """Record that ``reason`` happened to ``involved`` (a Job or Pod as stored)."""
        if not self.enabled:
            return
        metadata = involved["metadata"]
        namespace = metadata["namespace"]
        uid = metadata.get("uid", "")
        key = (uid, reason, message, component, field_path or "")
        now = time.time()
        stamp = iso(now)
        existing = self._live.get(key)
        if existing is not None:
            current = self.store.get("events", existing[0], existing[1])
            if current is not None:
                self.store.replace(
                    "events",
                    {**current, "count": int(current.get("count", 1)) + 1, "lastTimestamp": stamp},
                )
                self._live[key] = (existing[0], existing[1], now)
                self._live.move_to_end(key)
                return
        self._sequence += 1
        name = f"{metadata['name']}.{time.time_ns() + self._sequence:x}"
        involved_object: dict[str, Any] = {
            "kind": involved.get("kind", ""),
            "namespace": namespace,
            "name": metadata["name"],
            "uid": uid,
            "apiVersion": involved.get("apiVersion", ""),
            "resourceVersion": metadata.get("resourceVersion", ""),
        }
        if field_path:
            involved_object["fieldPath"] = field_path
        source = self._sources.get(component)
        if source is None:  # one per component, shared by its Events (never mutated)
            source = {"component": component}
            if component == "kubelet":
                source["host"] = NODE_NAME
            self._sources[component] = source
        event = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": new_uid(),
                "creationTimestamp": stamp,
            },
            "involvedObject": involved_object,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": event_type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": NODE_NAME if component == "kubelet" else "",
        }
        self.store.create("events", event)
        self._live[key] = (namespace, name, now)
        if len(self._live) > self.max_events:
            self._expire_oldest()

    def track(self, event: Obj) -> None:
        """Expire an Event created through the API like the recorder's own."""
        metadata = event["metadata"]
        key = ("api", metadata["namespace"], metadata["name"])
        self._live[key] = (metadata["namespace"], metadata["name"], time.time())
        if len(self._live) > self.max_events:
            self._expire_oldest()

    def _expire_oldest(self) -> None:
        _, (namespace, name, _) = self._live.popitem(last=False)
        self.store.delete("events", namespace, name)

    def _sweep(self) -> None:
        deadline = time.time() - self.ttl
        while self._live:
            _, (_, _, updated) = next(iter(self._live.items()))
            if updated > deadline and len(self._live) <= self.max_events:
                break
            self._expire_oldest()
        self._timer = asyncio.get_running_loop().call_later(
            min(_SWEEP_INTERVAL, max(0.05, self.ttl / 4)), self._sweep
        )
