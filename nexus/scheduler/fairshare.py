"""Weighted fair share across callers: which share each queued run counts against.

The queues do the accounting (:mod:`nexus.core.queues`, ``push.lua``): each run is queued
with a *tag*, its virtual start time, and every pod dispatches the lowest tags first. A
caller's runs are tagged one after the other, each ``1 / weight`` after the previous, from
the pod's virtual time plus what the caller already has queued anywhere (its lead, kept in
Redis for every pod to see); a caller with nothing queued starts at the pod's virtual time,
i.e. at the front. So while several callers wait, each gets dispatches in proportion to its
weight; a caller alone gets everything (work-conserving); and a caller that floods the
queues only ever waits behind itself. Delayed and recovered runs keep their tags, which
are lower than any newer run's: they still go first.

Costs: a push adds a hash read and write per caller per batch; a pop, one hash write per
batch; each stays O(log n) per run on a queue of n runs.

This module only decides the share of a run: its flow (the caller, or one flow for all
when fair share is off) and its step (``1 / weight``). The weight comes from the ``teams``
settings for that caller, else from its credential, else the default.
"""

from __future__ import annotations

from nexus.core.queues import Share
from nexus.scheduler.authentication import Principal
from nexus.scheduler.teamsettings import MAX_WEIGHT, MIN_WEIGHT, TeamSettings

FIRST_COME = Share("*", 1.0)
"""The share of every run when fair share is off: one flow, first come first served."""


class FairShare:
    """The share each caller's runs are queued with."""

    def __init__(self, settings: TeamSettings) -> None:
        self.settings = settings
        self._shares: dict[tuple[str, float | None], Share] = {}

    def weight(self, principal: Principal) -> float:
        configured = self.settings.policy(principal.caller).weight
        if configured is not None:
            return configured
        if principal.weight is not None:
            return min(MAX_WEIGHT, max(MIN_WEIGHT, principal.weight))
        return self.settings.default_weight

    def share(self, principal: Principal) -> Share:
        if not self.settings.fair_share:
            return FIRST_COME
        cache_key = (principal.caller, principal.weight)
        share = self._shares.get(cache_key)
        if share is None:
            # a caller named "" would be read as "ahead of everyone" by the push script
            share = Share("=" + principal.caller, 1.0 / self.weight(principal))
            if len(self._shares) > 100_000:
                self._shares.clear()
            self._shares[cache_key] = share
        return share
