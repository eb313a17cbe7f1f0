"""Back-pressure: whether this scheduler pod takes another run now, and the signals for it.

A run is refused before anything is written (see :mod:`nexus.scheduler.submission`) when
one of three signals says this pod could not keep its promises about it:

* **the queue is unreachable** (Redis): 503 with ``Retry-After: 5``. The heartbeat says
  whether Redis answers every ``heartbeat_interval``, and a queue push that fails says so
  at once; the next heartbeat that succeeds says it is back;
* **the shard's queue is full**: more than ``max_queue_depth`` runs wait on this pod's
  queue for the run's shard: 429 with ``Retry-After: 10``. :func:`measure_depth` reads the
  depths once a second, every five while all are empty (and exports them,
  ``nexus_queue_depth{pod,shard}``);
* **the checkpoint store is saturated**: as many writes wait for it as it takes
  (``max_pending``): 503 with ``Retry-After: 2``, read from the store at each request.

:class:`BackPressure` owns these signals: every writer goes through its methods, and the
submitter asks it once per run (:meth:`BackPressure.refuse_if_overloaded`). Each refusal
is counted by reason.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.httpapi import ApiError
from nexus.core.queues import RunQueue
from nexus.core.waiting import sleep_or_stop

REFUSED = Counter(
    "nexus_runs_refused_total", "Runs refused for load (429/503), by reason.", ["reason"]
)
DEPTH = Gauge(
    "nexus_queue_depth",
    "Runs waiting on a scheduler pod's queue for a shard, read every second (5 s while empty).",
    ["pod", "shard"],
)
DEPTH_INTERVAL = 1.0
"""Seconds between two readings of the queue depths while runs wait."""
EMPTY_INTERVAL = 5.0
"""Seconds between two readings while every queue of the pod was empty: a pod at rest
then costs next to nothing, and no queue fills to ``max_queue_depth`` in that time."""


class BackPressure:
    """The load signals of one scheduler pod, and the refusals they call for."""

    def __init__(self, store: CheckpointStore, max_queue_depth: int) -> None:
        self._store = store
        self._max_queue_depth = max_queue_depth
        self._queue_reachable = True
        self._depth: dict[str, int] = {}

    @property
    def queue_reachable(self) -> bool:
        """Whether Redis answered the last time it was asked."""
        return self._queue_reachable

    def queue_answered(self) -> None:
        """Redis answered (a heartbeat was renewed): runs are queued again."""
        self._queue_reachable = True

    def queue_failed(self) -> None:
        """Redis did not answer (a heartbeat or a push failed): refuse runs until it does."""
        self._queue_reachable = False

    def depth_measured(self, shard: str, depth: int) -> None:
        """``depth`` runs wait on this pod's queue for ``shard``."""
        self._depth[shard] = depth

    def refuse_if_overloaded(self, shard: str) -> None:
        """Raise the :class:`ApiError` (429/503) a run for ``shard`` gets now, if any."""
        if not self._queue_reachable:
            REFUSED.labels("queue_unavailable").inc()
            raise ApiError(
                503, "unavailable", "the queue is unavailable; retry later", {"Retry-After": "5"}
            )
        if self._depth.get(shard, 0) >= self._max_queue_depth:
            REFUSED.labels("queue_full").inc()
            raise ApiError(
                429,
                "overloaded",
                f"too many runs are waiting for shard {shard!r}; retry later",
                {"Retry-After": "10"},
            )
        if self._store.pending_writes >= self._store.max_pending_writes:
            REFUSED.labels("store_busy").inc()
            raise ApiError(
                503,
                "overloaded",
                "the checkpoint store is saturated; retry later",
                {"Retry-After": "2"},
            )


async def measure_depth(
    queue: RunQueue, pressure: BackPressure, shards: list[str], stopping: asyncio.Event
) -> None:
    """Read the depth of this pod's queue for each shard, every :data:`DEPTH_INTERVAL`
    (every :data:`EMPTY_INTERVAL` while all are empty), until ``stopping``."""
    while not stopping.is_set():
        waiting = False
        for shard in shards:
            try:
                depth = await queue.depth(shard)
            except DependencyError:
                waiting = True  # the heartbeat reports Redis trouble; look again soon
                break
            pressure.depth_measured(shard, depth)
            DEPTH.labels(queue.pod, shard).set(depth)
            waiting = waiting or depth > 0
        await sleep_or_stop(stopping, DEPTH_INTERVAL if waiting else EMPTY_INTERVAL)
