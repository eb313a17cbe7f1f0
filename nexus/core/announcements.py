"""Runs that finished, as PostgreSQL announces them: one ``LISTEN`` per process.

Every move of a run to a terminal stage is announced once, by the database itself (the
trigger of migrations 0010, 0012 and 0015 sends ``NOTIFY nexus_finished`` in the transaction
that makes the move, whichever process wrote it), so an announcement arrives when and only
when the move has committed. It carries the run's answer (:func:`answer_of`) whenever that
fits in a notification, so that its waiters need no read of the store.
:class:`FinishedRuns` keeps one dedicated connection listening on the channel and hands
each burst of announcements to a callback, once, in arrival order.

Guarantees:

* **Nothing missed goes unnoticed.** When the connection is lost (a restart, a failover,
  a network cut) announcements sent meanwhile are gone; so every (re)connection, once it
  listens, calls ``on_gap``, and the listener must look again at whatever it waits for.
  A connection that stops answering is found by a ping every ``ping_interval``.
* **Survives any outage.** Connection failures are retried with a capped back-off, for as
  long as they last; each loss and each return is logged once.
* **Cheap per announcement.** Announcements arriving together are handed over as one
  list, on the next turn of the event loop; an announcement is split at its tabs, and its
  answer decoded only for a run that is waited for.

Like :mod:`nexus.core.checkpoints`, it talks to PostgreSQL (asyncpg) directly: LISTEN
needs a connection of its own, outside the store's pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from nexus.core.checkpoints import CONNECTION_ERRORS
from nexus.core.runs import RunKey, RunResult, Stage
from nexus.core.waiting import Backoff, first_of, sleep_or_stop

log = logging.getLogger(__name__)

CHANNEL = "nexus_finished"
"""The channel migration 0010's trigger notifies."""
APPLICATION_NAME = "nexus-announcements"
"""How the listening connection names itself (``pg_stat_activity.application_name``)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A run that reached a terminal stage, as announced.

    ``run`` is the announcement's ``algorithm\\tid`` text, kept as it came: a pod hears
    every run that finishes anywhere, and most have no waiter on it, so an announcement
    is matched against :func:`announced` keys as text, and only a run that is waited for
    here is ever turned into a :class:`RunKey` (:func:`run_key`)."""

    run: str
    tag: str | None
    answer: str | None = None
    """The run's answer as announced (see :func:`answer_of`), or ``None`` when it did not
    fit in the notification: then the run is to be read."""


def announced(key: RunKey) -> str:
    """How announcements name the run ``key`` (``algorithm\\tid``, the id as PostgreSQL
    writes a uuid: lower-case, hyphenated)."""
    return f"{key.algorithm}\t{key.id}"


def run_key(run: str) -> RunKey | None:
    """The run an announcement names, or ``None`` if it names none."""
    algorithm, _, raw_id = run.partition("\t")
    try:
        return RunKey(algorithm, UUID(raw_id))
    except ValueError:
        return None


def parse(payload: str) -> Finished | None:
    """The run a notification names (``algorithm\\tid\\ttag``, then ``\\tanswer`` when
    it fits), or ``None`` if it has not that shape; the id is checked only when the run is
    looked up (:func:`run_key`), the answer decoded only when it is waited for."""
    first = payload.find("\t")
    second = payload.find("\t", first + 1)
    if first < 0 or second < 0:
        return None
    tag, _, answer = payload[second + 1 :].partition("\t")
    return Finished(payload[:second], tag or None, answer or None)


def answer_of(run: str, answer: str) -> RunResult | None:
    """The result of the run ``run`` (``algorithm\\tid``) from its announced answer, a JSON
    array ``[stage, has inline result, result uri, failure cause, failure details]``;
    ``None`` if it is not one (the run is then read)."""
    key = run_key(run)
    if key is None:
        return None
    try:
        stage, inline, uri, cause, details = orjson.loads(answer)
        found = Stage(stage)
    except (ValueError, TypeError):  # not JSON, not five items, not a stage
        return None
    texts = (uri, cause, details)
    if not found.terminal or type(inline) is not bool:
        return None
    if not all(text is None or type(text) is str for text in texts):
        return None
    return RunResult(key.algorithm, key.id, found, uri, cause, details, inline)


class FinishedRuns:
    """Listens for finished runs and calls ``on_finished(runs)`` for each burst of them,
    and ``on_gap()`` each time listening starts (announcements may have been missed)."""

    def __init__(
        self,
        dsn: str,
        on_finished: Callable[[list[Finished]], None],
        on_gap: Callable[[], None],
        *,
        ping_interval: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._dsn = dsn
        self._on_finished = on_finished
        self._on_gap = on_gap
        self._ping_interval = ping_interval
        self._backoff = backoff or Backoff(first=0.1, cap=5.0, jitter=0.5)
        self._burst: list[Finished] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = asyncio.Event()
        """Set while a connection listens (for tests and readiness)."""

    async def run(self, stopping: asyncio.Event) -> None:
        """Listen until ``stopping``, reconnecting for as long as it takes."""
        self._loop = asyncio.get_running_loop()
        lost = False
        while not stopping.is_set():
            try:
                await self._listen(stopping, lost)
                self._backoff.succeeded()
            except CONNECTION_ERRORS as exc:
                if not lost:
                    log.warning("finished runs are not heard: %s; reconnecting", exc)
                lost = True
                if await sleep_or_stop(stopping, self._backoff.failed()):
                    return
            except asyncpg.PostgresError as exc:
                if not lost:
                    log.warning("finished runs are not heard: %s; reconnecting", exc)
                lost = True
                if await sleep_or_stop(stopping, self._backoff.failed()):
                    return

    async def _listen(self, stopping: asyncio.Event, after_loss: bool) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
        )
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _: closed.set())
        try:
            await conn.add_listener(CHANNEL, self._heard)
            self.listening.set()
            if after_loss:
                log.info("finished runs are heard again")
            self._on_gap()  # whatever was announced before this moment was not heard
            while not stopping.is_set():
                if await first_of(stopping, closed, timeout=self._ping_interval) is not None:
                    break
                await conn.fetchval("SELECT 1", timeout=self._ping_interval)
            if closed.is_set() and not stopping.is_set():
                raise ConnectionError("the listening connection was closed")
        finally:
            self.listening.clear()
            if not conn.is_closed():
                conn.terminate()

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        finished = parse(str(payload))
        if finished is None:
            log.warning("an announcement that names no run", extra={"payload": str(payload)[:200]})
            return
        if not self._burst and self._loop is not None:
            self._loop.call_soon(self._hand_over)
        self._burst.append(finished)

    def _hand_over(self) -> None:
        burst, self._burst = self._burst, []
        try:
            self._on_finished(burst)
        except Exception:  # the listener must go on whatever a waiter does
            log.exception("handling finished runs failed")
