"""The ``teams`` settings section: what many teams sharing one Nexus are each allowed.

``NEXUS__TEAMS__CALLERS`` names callers (as their credentials name them: a service token's
``caller``, a JWT's caller claim) with their fair-share weight, their concurrency limit
and their quotas; a caller not named gets the defaults. Weights may also come with the
credential (a service token's ``weight``, a JWT's weight claim): a weight configured here
for the caller wins, being the operator's word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus.core.config import Seconds, at_least, check, positive

MIN_WEIGHT, MAX_WEIGHT = 0.001, 1000.0
"""The range of a fair-share weight: a million to one between callers at most."""


def _weight() -> dict[str, object]:
    return check(
        lambda v: MIN_WEIGHT <= v <= MAX_WEIGHT, f"a weight from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}"
    )


@dataclass(frozen=True)
class CallerPolicy:
    """What one caller is allowed; an unset field takes the section's default."""

    weight: float | None = field(default=None, metadata=_weight())
    """Fair-share weight: while callers wait, each is dispatched in proportion to it."""
    max_running: int | None = field(default=None, metadata=at_least(0))
    """Runs of this caller RUNNING at once, across all scheduler pods; more wait queued."""
    runs_per_day: int | None = field(default=None, metadata=at_least(0))
    """Runs this caller may submit per UTC day; more are refused (429)."""
    max_unfinished: int | None = field(default=None, metadata=at_least(0))
    """Runs of this caller accepted and not yet finished (queued or running) at once; more
    are refused (429)."""


_UNNAMED = CallerPolicy()
"""The policy of a caller the section does not name (frozen: one object serves them all,
not one made per run dispatched and per quota taken)."""


@dataclass(frozen=True)
class TeamSettings:
    """Fair share, concurrency limits and quotas of callers."""

    fair_share: bool = True
    """Dispatch each shard's queue in weighted fair share across callers (start-time fair
    queueing, accounted across all scheduler pods in Redis): a caller's batch of 100,000
    runs does not hold back another caller's single run. Off, every queue is first come,
    first served."""
    default_weight: float = field(default=1.0, metadata=_weight())
    """Weight of a caller that neither this section nor its credential gives one."""
    callers: dict[str, CallerPolicy] = field(default_factory=dict)
    """Per caller, as JSON ``{"team-a": {"weight": 2, "max_running": 50, "runs_per_day":
    100000, "max_unfinished": 20000}}``; every field is optional."""
    default_max_running: int | None = field(default=None, metadata=at_least(0))
    """Concurrency limit of a caller not given one (unset: none)."""
    default_runs_per_day: int | None = field(default=None, metadata=at_least(0))
    """Daily quota of a caller not given one (unset: none)."""
    default_max_unfinished: int | None = field(default=None, metadata=at_least(0))
    """Unfinished-runs quota of a caller not given one (unset: none)."""
    limit_check_interval: Seconds = field(default=0.5, metadata=positive())
    """How often the runs waiting for a full concurrency limit are looked at: how soon
    after a run finishes the next one waiting for its slot starts. A look reads the stages
    of the runs holding the limit's slots in one query, done by one pod at a time."""

    def policy(self, caller: str) -> CallerPolicy:
        return self.callers.get(caller) or _UNNAMED

    def runs_per_day(self, caller: str) -> int | None:
        configured = self.policy(caller).runs_per_day
        return configured if configured is not None else self.default_runs_per_day

    def max_unfinished(self, caller: str) -> int | None:
        configured = self.policy(caller).max_unfinished
        return configured if configured is not None else self.default_max_unfinished
