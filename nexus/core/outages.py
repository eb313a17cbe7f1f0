"""Outages of the real components, as one process sees them: said once when they start,
once when they end.

A store that is down makes every request that needs it fail, and every background loop
that uses it retry; a line for each would bury the one thing an operator needs to read
(what went down, when, and when it came back) under thousands. Each client seam
(:mod:`nexus.core.checkpoints`, :mod:`nexus.core.queues`, :mod:`nexus.core.storage`) keeps
one :class:`Outage` and reports to it what its calls found: :meth:`Outage.down` when a
call failed because the component could not be reached or failed as a whole,
:meth:`Outage.up` when one succeeded.

Guarantees:

* **One line per change of state**: a ``WARNING`` when the component is first found
  down (with the error that showed it), an ``INFO`` when a call succeeds again (with how
  long it was down); nothing for the failures in between, which are counted instead.
* **Free while the component is up**: :meth:`Outage.up` is one attribute test on the
  hot path.
* The gauge ``nexus_dependency_up{dependency}`` and the counter
  ``nexus_dependency_failures_total{dependency}`` say the same to metrics.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

UP = Gauge(
    "nexus_dependency_up",
    "1 while the component's last call succeeded, 0 while it is found unavailable.",
    ["dependency"],
)
FAILURES = Counter(
    "nexus_dependency_failures_total",
    "Calls that failed because the component was unavailable.",
    ["dependency"],
)


class Outage:
    """Whether one component is down, as this process last found it (see module)."""

    def __init__(self, name: str, what: str) -> None:
        self.name = name
        """Short, for metrics: ``postgres``, ``redis``, ``s3``."""
        self.what = what
        """For people: ``the checkpoint store``…"""
        self.down_since: float | None = None
        """Monotonic time of the first failure of this outage; ``None`` while up."""
        self.failures = 0
        """Calls failed during the current (or the last) outage."""
        self._up = UP.labels(name)
        self._failed = FAILURES.labels(name)
        self._up.set(1)

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def down(self, error: BaseException | str) -> None:
        """A call failed because the component is unavailable; said once per outage."""
        self._failed.inc()
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.failures = 0
            self._up.set(0)
            log.warning("%s is unavailable: %s", self.what, error, extra={"dependency": self.name})
        self.failures += 1

    def up(self) -> None:
        """A call succeeded; if the component was down, say that it is back."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        self.down_since = None
        self._up.set(1)
        log.info(
            "%s is back after %.1f s (%d calls failed meanwhile)",
            self.what,
            lasted,
            self.failures,
            extra={"dependency": self.name},
        )
