"""``NexusSchedule`` custom resources: recurring runs of an algorithm.

``spec``: ``schedule`` (a cron expression, five fields), ``timeZone`` (IANA, default UTC),
``algorithm``, ``parameters`` (the runs' ``algorithmParameters``), ``tag``,
``customConfiguration`` (overrides, as a run request's), ``caller`` (whose runs they are:
their fair share, limits and quotas; default ``schedule/<name>``), ``concurrencyPolicy``
(``Allow``: start the tick's run whatever; ``Forbid``: skip the tick while the previous
run is unfinished; ``Replace``: cancel the previous run if unfinished, then start) and
``missedRunPolicy`` (for ticks missed while no scheduler ran: ``RunOnce`` starts the
latest of them, ``RunAll`` each of them, at most 100, ``Skip`` none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from nexus.core.templates import DNS_LABEL, InvalidConfiguration

ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]
MissedRunPolicy = Literal["RunOnce", "RunAll", "Skip"]


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    uid: str
    cron: str
    zone: str
    algorithm: str
    parameters: dict[str, Any]
    tag: str | None
    overrides: dict[str, Any] | None
    caller: str
    concurrency: ConcurrencyPolicy
    missed: MissedRunPolicy
    created: datetime
    """When the resource was made: its first tick is the first after this."""
    extra: dict[str, Any] = field(default_factory=dict)

    def ticks(self, after: datetime) -> CronSim:
        """Its ticks after ``after``, in its time zone."""
        return CronSim(self.cron, after.astimezone(ZoneInfo(self.zone)))


def parse_schedule(obj: dict[str, Any]) -> Schedule:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidConfiguration("schedule metadata.name", "is required")
    where = f"schedule {name}.spec"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise InvalidConfiguration(where, "expected an object")
    cron, zone = spec.get("schedule"), spec.get("timeZone") or "UTC"
    if not isinstance(cron, str):
        raise InvalidConfiguration(f"{where}.schedule", "expected a cron expression")
    try:
        ZoneInfo(zone)
        CronSim(cron, datetime.now(UTC))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidConfiguration(f"{where}.timeZone", f"unknown time zone {zone!r}") from None
    except CronSimError as exc:
        raise InvalidConfiguration(f"{where}.schedule", f"not a cron expression: {exc}") from None
    algorithm = spec.get("algorithm")
    if not isinstance(algorithm, str) or not DNS_LABEL.match(algorithm):
        raise InvalidConfiguration(f"{where}.algorithm", "expected an algorithm name")
    parameters = spec.get("parameters") or {}
    overrides = spec.get("customConfiguration")
    if not isinstance(parameters, dict) or not isinstance(overrides, dict | None):
        raise InvalidConfiguration(f"{where}.parameters", "expected objects")
    concurrency = spec.get("concurrencyPolicy") or "Allow"
    missed = spec.get("missedRunPolicy") or "RunOnce"
    if concurrency not in ("Allow", "Forbid", "Replace"):
        raise InvalidConfiguration(f"{where}.concurrencyPolicy", "Allow, Forbid or Replace")
    if missed not in ("RunOnce", "RunAll", "Skip"):
        raise InvalidConfiguration(f"{where}.missedRunPolicy", "RunOnce, RunAll or Skip")
    created = meta.get("creationTimestamp")
    try:
        made = datetime.fromisoformat(created) if isinstance(created, str) else datetime.now(UTC)
    except ValueError:
        made = datetime.now(UTC)
    tag = spec.get("tag")
    return Schedule(
        name=name,
        uid=str(meta.get("uid") or name),
        cron=cron,
        zone=zone,
        algorithm=algorithm,
        parameters=parameters,
        tag=tag if isinstance(tag, str) else None,
        overrides=overrides,
        caller=str(spec.get("caller") or f"schedule/{name}"),
        concurrency=cast("ConcurrencyPolicy", concurrency),
        missed=cast("MissedRunPolicy", missed),
        created=made,
    )
