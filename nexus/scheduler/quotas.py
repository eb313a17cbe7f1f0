"""Quotas: per caller, runs per UTC day and runs not yet finished; over quota → 429.

Checked after every other check of a request and before anything is stored, so a refused
request leaves nothing behind; the answer is ``429`` with a message naming the quota and a
``Retry-After`` (the seconds until the day's quota renews, or a few seconds for the
unfinished-runs quota, which frees as runs finish).

Counted in Redis, exactly across every scheduler pod:

* runs per day — a counter per caller and UTC day (``quota.lua``: taken only while below
  the quota; it expires a day after its day);
* unfinished runs — a slot set per caller (:mod:`nexus.core.slots`, ``unfinished/<caller>``)
  that a run joins when accepted; when it is full, the runs in it that finished (their
  checkpoints say so) are let go before the request is refused, and the maintainer
  reconciles it with the checkpoints.

A request that takes its quota and then stores nothing (the store refused it, or its
``Idempotency-Key`` names an earlier run) gives it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from prometheus_client import Counter

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.httpapi import ApiError
from nexus.core.queues import QueueBackend
from nexus.core.runs import RunKey, Stage
from nexus.core.slots import Limit, Slots
from nexus.core.usage import stages, unfinished
from nexus.scheduler.teamsettings import TeamSettings

log = logging.getLogger(__name__)

REFUSED = Counter("nexus_quota_refused_total", "Runs refused over a quota, by quota.", ["quota"])
UNFINISHED_RETRY_AFTER = 5
"""Seconds a caller over its unfinished-runs quota is told to wait: runs finish all the
time, and a retry costs one Redis call."""


class UsageAnswer(TypedDict):
    """What a caller has used of what it is allowed (``GET /algorithm/v1.2/usage``)."""

    caller: str
    runsToday: int | None
    """Runs submitted this UTC day (counted while a daily quota applies)."""
    runsPerDay: int | None
    resetsAt: str
    """When the daily count starts again (the next UTC midnight)."""
    unfinishedRuns: int
    """Runs accepted and not finished: queued or running."""
    maxUnfinished: int | None
    running: int
    maxRunning: int | None
    weight: float | None
    """The caller's fair-share weight, as dispatch uses it."""


@dataclass(frozen=True, slots=True)
class Taken:
    """What a run took of its caller's quotas (to give back if nothing is stored)."""

    caller: str
    key: RunKey
    day: str | None
    unfinished: Limit | None


def _today(now: datetime) -> tuple[str, datetime]:
    day = now.astimezone(UTC).date()
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    return day.isoformat(), midnight


class Quotas:
    """Takes and gives back callers' quotas."""

    def __init__(self, backend: QueueBackend, store: CheckpointStore, teams: TeamSettings) -> None:
        self.backend = backend
        self.slots = Slots(backend)
        self.store = store
        self.teams = teams
        self._everyone = (
            teams.default_runs_per_day is not None or teams.default_max_unfinished is not None
        )
        """Whether every caller has a quota (a default one)."""
        self._named = frozenset(
            caller
            for caller, policy in teams.callers.items()
            if policy.runs_per_day is not None or policy.max_unfinished is not None
        )
        """The callers given a quota of their own."""

    def apply_to(self, caller: str) -> bool:
        """Whether ``caller`` has a quota (else :meth:`take` takes nothing): known from the
        settings once, not worked out again for every submit."""
        return self._everyone or caller in self._named

    async def take(self, caller: str, key: RunKey) -> Taken | None:
        """Count run ``key`` against ``caller``'s quotas, or raise the 429."""
        per_day, most = self.teams.runs_per_day(caller), self.teams.max_unfinished(caller)
        if per_day is None and most is None:
            return None
        now = datetime.now(UTC)
        day, midnight = _today(now)
        limit = Limit("unfinished", caller, most) if most is not None else None
        if limit is not None and not await self._take_unfinished(key, limit):
            REFUSED.labels("unfinished").inc()
            raise ApiError(
                429,
                "quota_exceeded",
                f"caller {caller!r} has {most} runs not yet finished, its quota of unfinished"
                " runs; retry when some have finished",
                {"Retry-After": str(UNFINISHED_RETRY_AFTER)},
            )
        if per_day is not None:
            expire = int((midnight + timedelta(days=1)).timestamp() * 1000)
            taken, _ = await self.backend.run(
                "quota", [self.backend.keys.quota(caller, day)], [per_day, expire, 1]
            )
            if not int(taken):
                if limit is not None:
                    await self.slots.release([(key, [limit])])
                REFUSED.labels("daily").inc()
                wait = max(1, int((midnight - now).total_seconds()) + 1)
                raise ApiError(
                    429,
                    "quota_exceeded",
                    f"caller {caller!r} has submitted {per_day} runs today, its daily quota;"
                    f" it renews at {midnight.isoformat()}",
                    {"Retry-After": str(wait)},
                )
        return Taken(caller, key, day if per_day is not None else None, limit)

    async def _take_unfinished(self, key: RunKey, limit: Limit) -> bool:
        if await self.slots.reserve([(key, [limit])]) == [None]:
            return True
        # full: let the runs that finished go, then try once more
        holders = await self.slots.holders(limit.label)
        found = await stages(self.store, holders)
        await self.slots.forget(
            limit.label, [k for k in holders if k not in found or found[k].terminal]
        )
        return await self.slots.reserve([(key, [limit])]) == [None]

    async def give_back(self, taken: Taken | None) -> None:
        """Nothing was stored for the run: its quota is the caller's again."""
        if taken is None:
            return
        try:
            if taken.unfinished is not None:
                await self.slots.release([(taken.key, [taken.unfinished])])
            if taken.day is not None:
                key = self.backend.keys.quota(taken.caller, taken.day)
                await self.backend.run("quota", [key], [0, 0, -1])
        except DependencyError as exc:  # counted against the caller until the day ends
            log.warning("cannot give a quota back: %s", exc)

    async def usage(
        self, caller: str, running_limit: int | None, weight: float | None
    ) -> UsageAnswer:
        now = datetime.now(UTC)
        day, midnight = _today(now)
        per_day = self.teams.runs_per_day(caller)
        today = None
        if per_day is not None:
            _, count = await self.backend.run(
                "quota", [self.backend.keys.quota(caller, day)], [0, 0, 0]
            )
            today = int(count)
        counts = await unfinished(self.store, caller)
        return {
            "caller": caller,
            "runsToday": today,
            "runsPerDay": per_day,
            "resetsAt": midnight.isoformat(),
            "unfinishedRuns": sum(counts.values()),
            "maxUnfinished": self.teams.max_unfinished(caller),
            "running": counts.get(Stage.RUNNING, 0),
            "maxRunning": running_limit,
            "weight": weight,
        }
