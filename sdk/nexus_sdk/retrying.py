"""When to try a call again, and how long to wait first: written once for the whole SDK.

Clients and algorithm containers call Nexus (and object storage) over networks that fail
for a while: a scheduler restarting in a rolling update, a receiver answering 503 while its
store is down, S3 slowing down. Such failures are *transient* and retried; everything else
is final at once.

Guarantees:

* **Bounded.** A :class:`RetryPolicy` caps both the number of attempts and the time from
  the first one; when either is spent, the last failure is what the caller sees.
* **The server's word first.** A ``Retry-After`` (seconds or an HTTP date) is the delay
  (never below ``first_delay``, so that ``Retry-After: 0`` cannot make a busy loop),
  unless it would end past the budget: then the retries stop at once rather than sleep
  only to fail.
* **No thundering herd.** Our own delays double from ``first_delay`` up to ``max_delay``
  and lose up to ``jitter`` of themselves at random, so many clients failing together do
  not come back in the same instant.
* **Safe to repeat.** Only calls that are idempotent are retried: reads, PUTs, cancels,
  completions (a finished run is not changed) and submits, which always carry an
  ``Idempotency-Key``.

:class:`LongPoll` is the other half of waiting: it asks the server to hold a read
(``?wait=S``) and, with a server that answers at once instead, falls back to polling at a
growing interval, so neither kind of server gets a storm of requests.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers that say "not now" rather than "no": timeouts, overload, a restarting server."""
MAX_WAIT = 60.0
"""The longest ``?wait`` a Nexus server holds a read (DESIGN §2)."""
RETRY_SECONDS_ENV = "NEXUS__SDK_RETRY_SECONDS"
"""Overrides an algorithm container's retry budget (a template's env can set it)."""

Clock = Callable[[], float]


def transient(status: int, retry_after: str | None) -> bool:
    """Whether an answer says "not now": a retryable status, or a 409 that names a time to
    come back (an idempotency key whose first request is still being accepted)."""
    return status in RETRYABLE_STATUSES or (status == 409 and retry_after is not None)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds from now (``None`` when absent or unreadable)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long transient failures are retried (see the module docstring)."""

    total: float = 120.0
    """Seconds from the first attempt after which no new attempt starts."""
    attempts: int | None = 10
    """At most this many attempts in all (``None``: as many as ``total`` allows)."""
    first_delay: float = 0.5
    """Seconds before the second attempt (doubling from there)."""
    max_delay: float = 30.0
    """The longest delay of our own choosing (a ``Retry-After`` may be longer)."""
    jitter: float = 0.2
    """Up to this share of each delay of our own is taken off at random."""

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(total=0.0, attempts=1)

    @classmethod
    def for_algorithm(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        """An algorithm container's: minutes, not seconds, since giving up turns work that
        was done into a failed run. 10 minutes by default (``NEXUS__SDK_RETRY_SECONDS``),
        longer than a rolling update of the receiver or a store's restart."""
        raw = (os.environ if env is None else env).get(RETRY_SECONDS_ENV, "")
        try:
            total = float(raw) if raw else 600.0
        except ValueError:
            total = 600.0
        return cls(total=max(0.0, total), attempts=None, first_delay=0.5, max_delay=30.0)

    def start(self, clock: Clock = time.monotonic) -> Attempts:
        return Attempts(self, clock)


class Attempts:
    """The attempts of one call under a :class:`RetryPolicy`."""

    def __init__(self, policy: RetryPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._started = clock()
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Count a transient failure: the seconds to wait before trying again, or ``None``
        when the budget is spent (then the failure is final)."""
        self.failures += 1
        policy = self.policy
        if policy.attempts is not None and self.failures >= policy.attempts:
            return None
        if retry_after is not None:
            delay = max(retry_after, policy.first_delay)
        else:
            delay = min(policy.max_delay, policy.first_delay * 2 ** min(self.failures - 1, 30))
            delay -= delay * policy.jitter * random.random()
        if self._clock() - self._started + delay > policy.total:
            return None
        return delay


class LongPoll:
    """The waits of one long wait: how long to ask the server to hold each read, and how
    long to pause between reads when the server does not hold them."""

    FIRST_PAUSE = 0.25
    MAX_PAUSE = 5.0

    def __init__(
        self, timeout: float | None, longest: float = MAX_WAIT, clock: Clock = time.monotonic
    ) -> None:
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._longest = min(longest, MAX_WAIT)
        self._pause = 0.0

    def remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self._clock())

    def next_wait(self) -> float | None:
        """Seconds for the next ``?wait`` (whole, ≥ 0), or ``None`` once the time is up."""
        remaining = self.remaining()
        if remaining is None:
            return float(int(self._longest))
        if remaining <= 0:
            return None
        return float(int(min(self._longest, remaining)))

    def pause_after(self, asked: float, took: float) -> float:
        """Seconds to pause after a read asked to wait ``asked`` answered, not finished,
        after ``took``: none when the server held it, else a growing polling interval."""
        if asked <= 0 or took >= asked * 0.5:
            self._pause = 0.0
            return 0.0 if asked > 0 else self.FIRST_PAUSE
        self._pause = min(self.MAX_PAUSE, self._pause * 2 if self._pause else self.FIRST_PAUSE)
        remaining = self.remaining()
        return self._pause if remaining is None else min(self._pause, remaining)
