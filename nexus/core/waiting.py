"""Waiting, written once: sleeping until a stop, backing off after failures, racing waits.

Every background loop of Nexus waits in one of three ways, and each is here so that no
loop carries its own copy:

* :func:`sleep_or_stop` — sleep for a while (or until a deadline), waking at once when the
  process is stopping; it says which of the two ended the sleep.
* :class:`Backoff` — how long to wait after the n-th consecutive failure: doubling from a
  first delay up to a cap, optionally with jitter. The exponent is capped, so the delay
  is the cap however many failures there were: a dependency that stays down for days
  never makes the arithmetic overflow and stop the loop (DESIGN §7, invariant 5).
* :func:`first_of` — wait for the first of several awaitables or events to finish; the
  waits this function started are cancelled and awaited, so none is left behind.

All of them use the event loop's clock (``loop.time()``), so tests run them on a fake one.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

MAX_EXPONENT = 62
"""The largest number of doublings a :class:`Backoff` applies, whatever its cap: past
it a delay is ``first * 2**62`` (a 0.1 s first delay is then 14 billion years), so a
cap can never be out of reach of the float arithmetic, and no count of failures can
overflow it."""


async def sleep_or_stop(
    stopping: asyncio.Event, seconds: float | None = None, *, until: float | None = None
) -> bool:
    """Sleep ``seconds``, or until the loop time ``until``, or until ``stopping`` is set,
    whichever comes first; ``True`` if it was ``stopping``.

    Returns at once (``True``) when ``stopping`` is already set, and after a yield to the
    loop (``False``) when the time is up already.
    """
    if stopping.is_set():
        return True
    if until is None:
        if seconds is None:
            raise TypeError("sleep_or_stop() needs seconds or until")
        until = asyncio.get_running_loop().time() + seconds
    try:
        async with asyncio.timeout_at(until):
            await stopping.wait()
    except TimeoutError:
        return stopping.is_set()
    return True


@dataclass
class Backoff:
    """Delays after consecutive failures: ``first``, then doubling, never above ``cap``.

    Use one per loop: :meth:`failed` counts a failure and says how long to wait before the
    next try; :meth:`succeeded` starts over. :meth:`delay` gives the delay after a given
    number of consecutive failures without counting anything (for attempt counts kept
    elsewhere, e.g. in a checkpoint).

    ``jitter`` (0 to 1) takes up to that share off each delay at random, so that many
    processes failing together do not all retry in the same instant; 0 (the default)
    keeps delays exact.
    """

    first: float
    """Seconds to wait after the first failure; 0 retries at once every time."""
    cap: float
    """The longest wait, reached after enough failures and kept from then on (below
    ``first``, every wait is ``cap``)."""
    jitter: float = 0.0
    failures: int = field(default=0, init=False)
    """Consecutive failures counted since the last success."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.first) and self.first >= 0):
            raise ValueError(f"first must be a finite delay >= 0, not {self.first!r}")
        if not (math.isfinite(self.cap) and self.cap >= 0):
            raise ValueError(f"cap must be a finite delay >= 0, not {self.cap!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (0 after none)."""
        if failures <= 0:
            return 0.0
        exact = min(self.cap, self.first * 2.0 ** min(failures - 1, MAX_EXPONENT))
        if self.jitter:
            exact *= 1.0 - self.jitter * random.random()
        return exact

    def failed(self) -> float:
        """Count one more consecutive failure; seconds to wait before trying again."""
        self.failures += 1
        return self.delay(self.failures)

    def succeeded(self) -> None:
        """The dependency answered: the next failure waits ``first`` again."""
        self.failures = 0


async def first_of(
    *waits: Awaitable[Any] | asyncio.Event, timeout: float | None = None
) -> int | None:
    """Wait until the first of ``waits`` finishes; its position, or ``None`` after
    ``timeout`` seconds.

    An :class:`asyncio.Event` counts as finished when it is set. If the first to finish
    raised, so does this call. Coroutines and events are waited for in tasks of this
    call, which are cancelled and awaited before it returns (or raises, or is itself
    cancelled). Tasks and futures passed in are the caller's: they are never cancelled,
    only no longer waited for.

    When several finish together, the earliest in ``waits`` is the one answered.
    """
    owned: list[asyncio.Future[Any]] = []
    futures: list[asyncio.Future[Any]] = []
    try:
        for wait in waits:
            if isinstance(wait, asyncio.Event):
                future: asyncio.Future[Any] = asyncio.ensure_future(wait.wait())
                owned.append(future)
            elif isinstance(wait, asyncio.Future):
                future = wait
            else:
                future = asyncio.ensure_future(wait)
                owned.append(future)
            futures.append(future)
        done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in owned:
            future.cancel()
        # wait for the cancelled ones to finish, and retrieve whatever they raised
        await asyncio.gather(*owned, return_exceptions=True)
    if not done:
        return None
    index = next(i for i, future in enumerate(futures) if future in done)
    futures[index].result()  # what the first to finish raised, raised here
    return index
