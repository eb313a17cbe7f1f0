"""The inputs crawl: stored inputs whose run was never recorded, deleted.

A scheduler uploads a run's input (``inputs/algorithm=<name>/<request id>``) before it
writes the run's checkpoint, and deletes the input when that write is refused or never
sent, or, when the write's fate is unknown, once the store says the run is not there
(:mod:`nexus.scheduler.strayinputs`). Inputs outlive that clean-up when the scheduler dies
between the upload and the checkpoint, or before its delayed look; when the look gives up
with the store down; when the delete fails; and when an upload the scheduler gave up on
(answered ``503``) lands in object storage afterwards. Nothing else would ever delete them:
retention deletes the inputs of the runs it deletes, and these have none.

Every ``orphan_interval`` the leader pages through the inputs prefix in key order
(``ListObjectsV2``, 1,000 keys a page, ``orphan_page_pause`` between pages). Of each page,
the objects older than ``orphan_age`` (by their ``LastModified``) are looked up in the
checkpoint store in one statement, and those without a run are deleted in one
``DeleteObjects`` call. The pass, the count of what it deleted and what it looked at, is
logged once.

Guarantees:

* **An input whose run exists is never deleted**: a run's input goes with its run, by
  retention. Only the store knows which runs exist, so a page it cannot be asked about
  deletes nothing.
* **No submission in progress loses its input**: ``orphan_age`` is far longer than a
  submission can take between its upload and its checkpoint (at least 10 minutes, the
  scheduler's own look included); an upload landing late is young when it lands.
* Only keys laid out as Nexus writes inputs are touched (the request id a UUID as Nexus
  writes it); anything else under the prefix is left alone.
* **Next to free at rest**: one list call per page, paced; the pass stops when this
  process stops leading or is stopping. A failing dependency ends the pass (one line,
  ``nexus_maintainer_sweep_failures_total{sweep="orphans"}``); the next interval starts
  again from the first key.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from maintainer.settings import MaintainerSection
from maintainer.sweeping import SWEEP_FAILURES
from nexus.core.errors import DependencyError
from nexus.core.runs import RunKey
from nexus.core.storage import PayloadStore, StoredObject
from nexus.core.sweeps import Sweeps
from nexus.core.waiting import sleep_or_stop

log = logging.getLogger(__name__)

PAGE = 1000
"""Keys per list call: the most S3 returns, and the most one ``DeleteObjects`` takes."""

DELETED = Counter(
    "nexus_maintainer_orphan_inputs_deleted_total",
    "Stored inputs deleted because no run of theirs was ever recorded.",
)


class OrphanInputs:
    """Crawls the stored inputs for the leader (see the module docstring)."""

    def __init__(
        self,
        sweeps: Sweeps,
        payloads: PayloadStore,
        section: MaintainerSection,
        leading: Callable[[], bool],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sweeps = sweeps
        self.payloads = payloads
        self.section = section
        self._leading = leading
        self._clock = clock

    async def run(self, stopping: asyncio.Event) -> None:
        interval = self.section.orphan_interval
        if not interval:
            return
        while not stopping.is_set():
            if self._leading():
                try:
                    await self.crawl(stopping)
                except DependencyError as exc:
                    SWEEP_FAILURES.labels("orphans").inc()
                    log.warning("crawl of stored inputs cut short: %s", exc)
            await sleep_or_stop(stopping, interval)

    async def crawl(self, stopping: asyncio.Event) -> int:
        """One pass over the inputs prefix; how many inputs it deleted."""
        seen = deleted = 0
        after = ""
        while self._leading():
            page = await self.payloads.list_page(self.payloads.inputs_prefix, after, PAGE)
            seen += len(page)
            deleted += await self._delete_orphans(page)
            if len(page) < PAGE:
                break
            after = page[-1].key
            if await sleep_or_stop(stopping, self.section.orphan_page_pause):
                break
        log.info(
            "crawled the stored inputs for ones without a run",
            extra={"inputs": seen, "deleted": deleted},
        )
        return deleted

    async def _delete_orphans(self, page: list[StoredObject]) -> int:
        cutoff = self._clock() - timedelta(seconds=self.section.orphan_age)
        old: dict[RunKey, str] = {}
        for found in page:
            run = self._run_of(found.key) if found.last_modified < cutoff else None
            if run is not None:
                old[run] = found.key
        if not old:
            return 0
        recorded = await self.sweeps.existing(list(old))
        orphans = [key for run, key in old.items() if run not in recorded]
        if orphans:
            await self.payloads.delete(orphans)
            DELETED.inc(len(orphans))
        return len(orphans)

    def _run_of(self, key: str) -> RunKey | None:
        """The run whose input ``key`` is, if Nexus wrote it."""
        named = self.payloads.input_run(key)
        if named is None:
            return None
        algorithm, text = named
        try:
            run_id = uuid.UUID(text)
        except ValueError:
            return None
        return RunKey(algorithm, run_id) if str(run_id) == text else None
