"""How fast this pod may create Jobs on a shard: a token bucket shared by all pods.

Each shard has a configured creation rate (``NEXUS__SHARDS__CREATE_RATE``). The bucket lives
in Redis (:meth:`QueueBackend.take_tokens`), so the *aggregate* rate of every scheduler pod
stays under it (DESIGN §7, invariant 3). Tokens are taken a few at a time — at most a burst's
worth — so Redis sees one call per handful of creations, not one per Job.

When the shard answers 429 anyway (its own limits are lower, or shared with others), the
bucket is paused for the ``Retry-After`` the shard gave and its rate halves for everyone;
it then recovers gradually. A rejected creation is put back in the queue, never retried
blindly.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge

from nexus.core.queues import QueueBackend
from nexus.core.waiting import sleep_or_stop

log = logging.getLogger(__name__)

RATE_FACTOR = Gauge(
    "nexus_throttle_rate_factor",
    "Share of a shard's configured creation rate in force (1 = full rate).",
    ["shard"],
)
THROTTLED = Counter(
    "nexus_throttle_rejections_total", "429 answers from a shard's API server.", ["shard"]
)

_MIN_WAIT = 0.002
_RATE_FLOOR = 0.05  # a 429 storm never slows a shard below 5 % of its configured rate


class ShardThrottle:
    """The creation budget of one shard."""

    def __init__(
        self,
        backend: QueueBackend,
        shard: str,
        rate: float,
        *,
        burst_seconds: float,
        recovery: float,
    ) -> None:
        self.shard = shard
        self.rate = rate
        self.burst = max(1.0, rate * burst_seconds)
        self.recovery = recovery
        self._backend = backend
        self._factor = RATE_FACTOR.labels(shard)
        self._factor.set(1)
        self._throttled = THROTTLED.labels(shard)

    async def acquire(self, want: int, stopping: asyncio.Event) -> int:
        """Wait until at least one creation may go; return how many (≤ ``want``).

        Returns 0 only when ``stopping`` is set first.
        """
        want = max(1, min(want, int(self.burst)))
        while not stopping.is_set():
            granted, wait, factor = await self._backend.take_tokens(
                self.shard, want, self.rate, self.burst, self.recovery
            )
            self._factor.set(factor)
            if granted:
                return granted
            await sleep_or_stop(stopping, max(_MIN_WAIT, wait))
        return 0

    async def rejected(self, retry_after: float) -> None:
        """The shard answered 429: pause everyone for ``retry_after`` and halve the rate."""
        self._throttled.inc()
        factor = await self._backend.back_off(self.shard, max(retry_after, 0.1), _RATE_FLOOR)
        self._factor.set(factor)
        log.warning(
            "shard throttled creations; slowing down",
            extra={"shard": self.shard, "retryAfter": retry_after, "rateFactor": factor},
        )
