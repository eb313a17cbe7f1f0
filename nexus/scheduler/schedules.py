"""Schedules: each tick of a ``NexusSchedule`` starts exactly one run.

One scheduler pod at a time ticks (a Redis lease, ``schedules``), every second: for each
schedule in the catalog, the ticks due since its last claimed tick (or since it was made)
are worked out with ``cronsim`` in the schedule's time zone, the missed-run policy picks
those to start, and each is **claimed** in the store (:mod:`nexus.core.ticks`: one row per
schedule uid and tick, naming the run's request id) before its run is submitted with that
request id, through the same path as any run (validation, fair share, limits, quotas).
A tick claimed twice — another pod that briefly held the lease too, a pod restarted after
the claim — gets the first claim's request id, and a run whose id exists is not created
again: exactly one run per tick. A claim whose submission was never answered (the pod
died) is submitted again at the next check; one refused (a quota, an unknown algorithm)
is recorded as such and not tried again.

``GET /algorithm/v1.2/schedules`` lists the schedules with their last and next ticks. A
tick's run is a run like any other (:mod:`nexus.core.visibility`): the listing names it,
and says why a tick started none, only to a caller who may see the schedule's runs; to
others it says when the last tick was and what kind of outcome it had, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from aiohttp import web
from prometheus_client import Counter

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.httpapi import ApiError, json_errors, json_response
from nexus.core.queues import QueueBackend
from nexus.core.runs import RunKey
from nexus.core.ticks import Tick, claim, last_ticks, record
from nexus.core.visibility import SYSTEM, Viewer
from nexus.core.waiting import sleep_or_stop
from nexus.scheduler.authentication import Authenticator, Principal
from nexus.scheduler.cancelling import Cancellation, Canceller
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.schedulespec import Schedule
from nexus.scheduler.submission import Submitter

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0
"""Seconds between looks at the schedules: a tick's run starts within about a second."""
ON_TIME = timedelta(seconds=60)
"""A tick older than this when it is looked at was missed (no scheduler ran)."""
MAX_MISSED = 100
"""``RunAll`` starts at most this many missed ticks, the latest ones."""

TICKS = Counter("nexus_schedule_ticks_total", "Schedule ticks, by outcome.", ["outcome"])


class ScheduleAnswer(TypedDict):
    """A schedule as ``GET /algorithm/v1.2/schedules`` lists it."""

    name: str
    schedule: str
    timeZone: str
    algorithm: str
    caller: str
    concurrencyPolicy: str
    missedRunPolicy: str
    lastTick: str | None
    lastRequestId: str | None
    lastOutcome: str | None
    nextTick: str | None


class Ticker:
    """Starts the runs of schedules' ticks, on the pod that holds the lease."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: CheckpointStore,
        queues: QueueBackend,
        submitter: Submitter,
        canceller: Canceller,
        authenticator: Authenticator,
        pod: str,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.queues = queues
        self.submitter = submitter
        self.canceller = canceller
        self.authenticator = authenticator
        self.pod = pod
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                if await self.queues.hold_lease("schedules", self.pod, 5 * CHECK_INTERVAL):
                    await self.check()
            except DependencyError as exc:
                log.warning("cannot look at the schedules now: %s", exc)
            await sleep_or_stop(stopping, CHECK_INTERVAL)

    async def check(self) -> None:
        """Start the runs of every tick due now."""
        schedules = list(self.catalog.schedules.values())
        last = await last_ticks(self.store, [s.uid for s in schedules])
        now = self.clock()
        for schedule in schedules:
            previous = last.get(schedule.uid)
            if previous is not None and previous.outcome is None:
                await self._start(schedule, previous.tick, previous)  # never answered
            for tick, starts in self.due(schedule, previous, now):
                await self._start(schedule, tick, previous, starts)

    def due(
        self, schedule: Schedule, previous: Tick | None, now: datetime
    ) -> list[tuple[datetime, bool]]:
        """The ticks due now, each with whether its run starts (by the missed-run policy);
        a missed tick that starts none is still claimed, so the next look counts from it."""
        after = previous.tick if previous is not None else schedule.created
        ticks: list[datetime] = []
        for tick in schedule.ticks(after):
            if tick > now:
                break
            ticks.append(tick.astimezone(UTC))
            del ticks[:-MAX_MISSED]
        on_time = [(t, True) for t in ticks if now - t <= ON_TIME]
        missed = [t for t in ticks if now - t > ON_TIME]
        match schedule.missed:
            case "RunAll":
                return [(t, True) for t in missed] + on_time
            case "RunOnce":
                return on_time or [(t, True) for t in missed[-1:]]
            case "Skip":
                return [(t, False) for t in missed[-1:]] + on_time

    async def _start(
        self, schedule: Schedule, tick: datetime, previous: Tick | None, starts: bool = True
    ) -> None:
        claimed = await claim(self.store, schedule.uid, tick, schedule.algorithm, uuid.uuid4())
        if claimed.outcome is not None:
            return
        outcome = None if starts else "skipped: missed while no scheduler ran"
        if outcome is None:
            outcome = await self._concurrency(schedule, previous)
        if outcome is None:
            body: dict[str, Any] = {"algorithmParameters": schedule.parameters}
            if schedule.tag:
                body["tag"] = schedule.tag
            if schedule.overrides:
                body["customConfiguration"] = schedule.overrides
            principal = Principal(schedule.caller, frozenset({schedule.algorithm}))
            try:
                await self.submitter.submit(
                    principal, schedule.algorithm, body, None, run_id=claimed.request_id
                )
                outcome = "started"
            except ApiError as exc:
                outcome = f"refused: {exc.status} {exc.message}"
        TICKS.labels(outcome.partition(":")[0]).inc()
        log.info(
            "schedule ticked",
            extra={
                "schedule": schedule.name, "tick": tick.isoformat(), "outcome": outcome,
                "requestId": str(claimed.request_id),
            },
        )  # fmt: skip
        await record(self.store, schedule.uid, tick, outcome)

    async def _concurrency(self, schedule: Schedule, previous: Tick | None) -> str | None:
        """Why the tick starts no run (``Forbid``), or ``None``; ``Replace`` cancels."""
        if schedule.concurrency == "Allow" or previous is None:
            return None
        run = await self.store.get(previous.algorithm, previous.request_id, SYSTEM)
        if run is None or run.stage.terminal:
            return None
        if schedule.concurrency == "Forbid":
            return f"skipped: the previous run {run.id} has not finished"
        cancellation = Cancellation.from_body(
            {"reason": f"replaced by the next tick of schedule {schedule.name}"}, schedule.caller
        )
        with contextlib.suppress(ApiError):  # it finished meanwhile
            await self.canceller.cancel(run.algorithm, run.id, cancellation, SYSTEM)
        return None

    async def listing(self, viewer: Viewer) -> list[ScheduleAnswer]:
        """The schedules, each with its last tick's run as far as ``viewer`` may see it."""
        schedules = sorted(self.catalog.schedules.values(), key=lambda s: s.name)
        last = await last_ticks(self.store, [s.uid for s in schedules])
        shown = await self._visible([(s, last[s.uid]) for s in schedules if s.uid in last], viewer)
        now = self.clock()
        answers: list[ScheduleAnswer] = []
        for s in schedules:
            previous = last.get(s.uid)
            outcome = previous.outcome if previous else None
            if previous is not None and previous.request_id not in shown:
                outcome = outcome.partition(":")[0] if outcome else None
            upcoming = next(iter(s.ticks(max(now, previous.tick if previous else now))), None)
            answers.append(
                {
                    "name": s.name,
                    "schedule": s.cron,
                    "timeZone": s.zone,
                    "algorithm": s.algorithm,
                    "caller": s.caller,
                    "concurrencyPolicy": s.concurrency,
                    "missedRunPolicy": s.missed,
                    "lastTick": previous.tick.isoformat() if previous else None,
                    "lastRequestId": (
                        str(previous.request_id)
                        if previous and previous.request_id in shown
                        else None
                    ),
                    "lastOutcome": outcome,
                    "nextTick": upcoming.astimezone(UTC).isoformat() if upcoming else None,
                }
            )
        return answers

    async def _visible(self, ticks: list[tuple[Schedule, Tick]], viewer: Viewer) -> set[uuid.UUID]:
        """The request ids of ``ticks`` whose run ``viewer`` may see: the store decides for
        runs that exist; a tick whose run was never made (refused) is the schedule's
        caller's, as its run would have been."""
        if (viewer.sees_everything and viewer.below is None) or not ticks:
            return {tick.request_id for _, tick in ticks}
        keys = [RunKey(tick.algorithm, tick.request_id) for _, tick in ticks]
        seen = await self.store.results_seen(
            [(key, viewer.owner(key.algorithm), viewer.parent) for key in keys]
        )
        hidden = {key for key, result in zip(keys, seen, strict=True) if result is None}
        existing = await self.store.results_many(list(hidden))
        return {
            key.id
            for (schedule, _), key in zip(ticks, keys, strict=True)
            if key not in hidden
            or (key not in existing and viewer.may_see(key.algorithm, schedule.caller))
        }


TICKER = web.AppKey("nexus.schedules", Ticker)


async def list_schedules(request: web.Request) -> web.Response:
    ticker = request.app[TICKER]
    principal = await ticker.authenticator.authenticate(request.headers.get("Authorization"))
    return json_response(await ticker.listing(principal.viewer))


def add_schedule_routes(app: web.Application) -> None:
    app.router.add_get("/algorithm/v1.2/schedules", json_errors(list_schedules))
