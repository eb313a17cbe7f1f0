"""Inputs uploaded for a run whose checkpoint write failed after it was sent.

The submitter uploads an input kept in object storage before it writes the run's
checkpoint. When that write fails before it reached the store (refused, never sent), the
input is deleted at once. When it fails after it was sent (a connection lost, a statement
timed out), the run may exist, and its input must then stay: the client heard a 503, but
the run may run. :class:`StrayInputs` settles each such input once the store can tell:
after :data:`SETTLE_AFTER` (a statement in flight has landed or been cancelled by then) it
reads the run, with backoff while the store is down, and deletes the input only when there
is no run. Until :data:`GIVE_UP_AFTER` — then it says so and keeps the input (an unused
object costs less than a lost input).

Guarantees: an input whose run exists is never deleted; the work is in the background,
bounded in time, and ends with the process (:meth:`StrayInputs.close`).
"""

from __future__ import annotations

import asyncio
import logging

from nexus.core.checkpoints import CheckpointStore
from nexus.core.errors import DependencyError
from nexus.core.runs import RunKey
from nexus.core.storage import PayloadStore
from nexus.core.visibility import SYSTEM
from nexus.core.waiting import Backoff

log = logging.getLogger(__name__)

SETTLE_AFTER = 2.0
"""Seconds before the first look: the store's answer to a statement it was sent has been
given, or the statement cancelled, well within this."""
GIVE_UP_AFTER = 600.0
"""Seconds of looking (the store down) before an input is left where it is."""


class StrayInputs:
    """Settles inputs that may have lost their run, in the background."""

    def __init__(self, store: CheckpointStore, payloads: PayloadStore) -> None:
        self.store = store
        self.payloads = payloads
        self._tasks: set[asyncio.Task[None]] = set()

    def settle(self, run: RunKey, key: str) -> None:
        """Delete the input ``key`` once it is known that ``run`` was not stored."""
        task = asyncio.get_running_loop().create_task(self._settle(run, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _settle(self, run: RunKey, key: str) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + GIVE_UP_AFTER
        backoff = Backoff(first=1.0, cap=30.0)
        await asyncio.sleep(SETTLE_AFTER)
        while True:
            try:
                found = await self.store.get(run.algorithm, run.id, SYSTEM)
                if found is not None:
                    return  # the run was stored: its input is its own
                await self.payloads.delete([key])
                log.info("deleted the input of a run that was not stored", extra={"key": key})
                return
            except DependencyError as exc:
                if loop.time() >= give_up:
                    log.warning("an input kept: whether its run exists is unknown: %s", exc)
                    return
                await asyncio.sleep(backoff.failed())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
