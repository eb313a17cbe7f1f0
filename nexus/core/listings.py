"""Runs by tag: complete listings in keyset pages, and the counts behind a progress bar.

:class:`Listings` reads through the store's connections (:meth:`CheckpointStore.connection`)
with the statements of :mod:`nexus.core.statements`. Guarantees:

* **Every run, in a stable order.** A tag's runs are listed by ``(received_at, id)``,
  oldest first; a page starts strictly after the :class:`TagPosition` of the previous
  page's last run, so pages never repeat or skip a run that existed when the listing
  started. (Runs added while a listing is read come after it, at its end, as they arrive.)
* **Bounded work per page.** A page is one index scan of ``runs_by_tag_order`` reading at
  most ``limit`` rows, however many runs the tag has: a listing of any size is served a
  page at a time in constant memory.
* **Per caller.** A listing and its counts hold only the runs the :class:`Viewer` may see
  (:mod:`nexus.core.visibility`): the store's filter, in the same statement.
* **Narrow rows.** Only what a result answer needs is read (no inputs; inline results only
  when asked for, so that a client reads a batch's results with its listing).
* **Counts in one statement.** A summary is one grouped count over the same index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID

from nexus.core import statements as sql
from nexus.core.checkpoints import CheckpointStore, result_of
from nexus.core.runs import RunResult, Stage
from nexus.core.visibility import Viewer

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class TagPosition:
    """Where a page of a tag's runs ends: the keyset ``(received_at, id)`` of its last run."""

    received_at: datetime
    id: UUID

    START: ClassVar[TagPosition]

    def encode(self) -> str:
        """A compact text form: microseconds since the epoch, and the id."""
        micros = (self.received_at - _EPOCH) // _MICROSECOND  # exact, as PostgreSQL keeps it
        return f"{micros}.{self.id.hex}"

    @classmethod
    def decode(cls, text: str) -> TagPosition | None:
        """The position :meth:`encode` made, or ``None`` for anything else."""
        micros, _, hex_id = text.partition(".")
        if not (micros.isascii() and micros.isdigit() and len(micros) <= 18 and len(hex_id) == 32):
            return None
        try:
            return cls(_EPOCH + int(micros) * _MICROSECOND, UUID(hex=hex_id))
        except (ValueError, OverflowError):
            return None


TagPosition.START = TagPosition(datetime.min.replace(tzinfo=UTC), UUID(int=0))


@dataclass(frozen=True, slots=True)
class TagEntry:
    """One run of a page, and its position (the cursor of the page ending with it)."""

    run: RunResult
    position: TagPosition
    result: bytes | None = None
    """The result kept inline (compact JSON), when the page was asked for with results."""


class Listings:
    """The queries by tag on one checkpoint store."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store

    async def page(
        self,
        algorithm: str,
        tag: str,
        viewer: Viewer,
        after: TagPosition | None,
        limit: int,
        *,
        results: bool = False,
    ) -> list[TagEntry]:
        """At most ``limit`` runs of ``algorithm`` carrying ``tag`` that ``viewer`` may see,
        oldest first, after ``after`` (from the start when ``None``); with ``results``,
        each with its result when that is kept inline."""
        start = after or TagPosition.START
        owner = viewer.owner(algorithm)
        async with self._store.connection() as conn:
            rows = await conn.fetch(
                sql.TAG_PAGE_WITH_RESULTS if results else sql.TAG_PAGE,
                algorithm,
                tag,
                owner,
                start.received_at,
                start.id,
                limit,
                viewer.parent,
            )
        return [
            TagEntry(
                result_of(row),
                TagPosition(row["received_at"], row["id"]),
                row["result_inline"] if results else None,
            )
            for row in rows
        ]

    async def counts(self, algorithm: str, tag: str, viewer: Viewer) -> dict[Stage, int]:
        """How many runs of ``algorithm`` carrying ``tag`` that ``viewer`` may see are in
        each stage (stages without runs are absent)."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(
                sql.TAG_COUNTS, algorithm, tag, viewer.owner(algorithm), viewer.parent
            )
        return {Stage(row["lifecycle_stage"]): int(row["runs"]) for row in rows}
