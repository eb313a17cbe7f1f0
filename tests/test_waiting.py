"""The waiting toolkit on a fake clock (looptime): sleeps, back-off and races take no real time."""

from __future__ import annotations

import asyncio
import math

import pytest

from nexus.core.waiting import MAX_EXPONENT, Backoff, first_of, sleep_or_stop

pytestmark = pytest.mark.looptime


# -- sleep_or_stop -------------------------------------------------------------------------


async def test_a_sleep_nobody_stops_lasts_its_time(looptime: float) -> None:
    stopping = asyncio.Event()
    assert await sleep_or_stop(stopping, 30) is False
    assert looptime == 30


async def test_a_stop_ends_the_sleep_at_once_and_says_so(looptime: float) -> None:
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(7, stopping.set)
    assert await sleep_or_stop(stopping, 3600) is True
    assert looptime == 7


async def test_a_process_already_stopping_does_not_sleep(looptime: float) -> None:
    stopping = asyncio.Event()
    stopping.set()
    assert await sleep_or_stop(stopping, 60) is True
    assert looptime == 0


async def test_a_sleep_until_a_deadline(looptime: float) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    assert await sleep_or_stop(stopping, until=loop.time() + 12.5) is False
    assert looptime == 12.5
    assert await sleep_or_stop(stopping, until=loop.time() - 1) is False  # past: no wait
    assert looptime == 12.5


async def test_a_sleep_needs_a_length_or_a_deadline() -> None:
    with pytest.raises(TypeError):
        await sleep_or_stop(asyncio.Event())


# -- Backoff -------------------------------------------------------------------------------


def test_delays_double_from_the_first_up_to_the_cap() -> None:
    backoff = Backoff(first=0.2, cap=5.0)
    delays = [backoff.failed() for _ in range(8)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert backoff.failures == 8
    assert backoff.delay(0) == 0.0


def test_ten_thousand_consecutive_failures_wait_the_cap_and_never_overflow() -> None:
    """``min(cap, base * 2**n)`` raises OverflowError from n = 1,024 (the int is too large
    for a float): a loop written so stopped after ~1,024 failures of its dependency."""
    backoff = Backoff(first=0.1, cap=5.0)
    delays = [backoff.failed() for _ in range(10_000)]
    assert backoff.failures == 10_000
    assert all(math.isfinite(d) and 0 < d <= 5.0 for d in delays)
    assert delays[-5_000:] == [5.0] * 5_000
    assert backoff.delay(10**12) == 5.0


def test_a_cap_beyond_every_doubling_is_never_reached_and_nothing_overflows() -> None:
    backoff = Backoff(first=1e-300, cap=1e300)
    assert backoff.delay(10_000) == 1e-300 * 2.0**MAX_EXPONENT
    assert all(math.isfinite(backoff.failed()) for _ in range(10_000))


def test_a_success_starts_the_delays_over() -> None:
    backoff = Backoff(first=1.0, cap=60.0)
    for _ in range(20):
        backoff.failed()
    backoff.succeeded()
    assert backoff.failures == 0
    assert backoff.failed() == 1.0


def test_a_cap_below_the_first_delay_is_every_delay() -> None:
    assert [Backoff(first=1.0, cap=0.25).delay(n) for n in (1, 2, 50)] == [0.25] * 3


def test_a_zero_first_delay_retries_at_once_every_time() -> None:
    backoff = Backoff(first=0.0, cap=0.0)
    assert {backoff.failed() for _ in range(2_000)} == {0.0}


def test_jitter_takes_at_most_its_share_off_each_delay() -> None:
    backoff = Backoff(first=1.0, cap=8.0, jitter=0.5)
    exact = Backoff(first=1.0, cap=8.0)
    for _ in range(200):
        want, got = exact.failed(), backoff.failed()
        assert want * 0.5 <= got <= want
    assert len({backoff.delay(10) for _ in range(50)}) > 1  # spread, not one value


@pytest.mark.parametrize(
    ("first", "cap", "jitter"),
    [(-1.0, 5.0, 0.0), (1.0, -0.5, 0.0), (1.0, math.inf, 0.0), (math.nan, 5.0, 0.0), (1, 2, 1.5)],
)
def test_a_backoff_refuses_delays_it_could_not_keep(
    first: float, cap: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match=r"first|cap|jitter"):
        Backoff(first=first, cap=cap, jitter=jitter)


# -- first_of ------------------------------------------------------------------------------


async def test_the_first_event_set_is_answered_and_the_other_wait_is_gone(
    looptime: float,
) -> None:
    wake, stopping = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().call_later(3, stopping.set)
    before = asyncio.all_tasks()
    assert await first_of(wake, stopping) == 1
    assert looptime == 3
    assert asyncio.all_tasks() == before  # the wait for `wake` was cancelled and awaited


async def test_nothing_finishing_within_the_timeout_is_none(looptime: float) -> None:
    assert await first_of(asyncio.Event(), asyncio.Event(), timeout=2.5) is None
    assert looptime == 2.5


async def test_events_set_together_answer_the_earliest_given() -> None:
    one, two = asyncio.Event(), asyncio.Event()
    one.set()
    two.set()
    assert await first_of(two, one) == 0


async def test_what_the_first_to_finish_raised_is_raised(looptime: float) -> None:
    async def fails_soon() -> None:
        await asyncio.sleep(1)
        raise LookupError("gone")

    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(LookupError, match="gone"):
        await first_of(slow(), fails_soon())
    assert cancelled.is_set()
    assert looptime == 1


async def test_a_callers_task_is_never_cancelled(looptime: float) -> None:
    task = asyncio.create_task(asyncio.sleep(50))
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(5, stopping.set)
    assert await first_of(stopping, task) == 0
    assert not task.done()
    assert await first_of(stopping, task) == 0  # still set: answered at once
    assert await first_of(task) == 0  # and the task runs to its end
    assert looptime == 50


async def test_a_cancelled_race_cancels_the_waits_it_started(looptime: float) -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    race = asyncio.create_task(first_of(slow(), asyncio.Event()))
    await asyncio.sleep(1)
    race.cancel()
    with pytest.raises(asyncio.CancelledError):
        await race
    assert cancelled.is_set()
    assert looptime == 1
