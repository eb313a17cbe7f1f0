"""What callers known only by their JWTs may run, kept for their runs' credentials.

A running algorithm starts child runs with its run's credential, as its run's caller and
with that caller's rights. A service token's rights are in configuration, which every
scheduler pod reads; a JWT's are in the JWT, which the run's container never sees. So the
scheduler keeps the rights of each caller known by its JWTs here (table ``caller_rights``,
migration 0011), and a run credential of such a caller is given them.

Guarantees:

* **Stored before they are relied on.** A pod writes a caller's rights before it serves
  the request whose JWT carried them: a run accepted with a JWT has its caller's rights in
  the store before its 202, so its children, started later from any pod, find them.
* **The most recently issued JWT wins.** A caller's rights are those of the JWT with the
  latest issue time (``iat``, else ``nbf``, else when first seen valid: migration 0014)
  that a pod served: rights the identity provider takes away stop applying to the
  caller's runs once a JWT without them is used, as a service token's do once it is
  removed from configuration, and an older JWT still valid, used later on another pod,
  does not bring them back. A write carries the JWT's issue time and changes the row only
  when it is no older than the stored one, so the order in which pods write is irrelevant.
* **Cheap.** A pod writes a caller's rights once per JWT issued later than the last it
  wrote, or with other rights issued at the same time (a dictionary lookup otherwise), and
  reads them for run credentials at most once per ``ttl`` seconds.

It reads and writes through the store's connections (:meth:`CheckpointStore.connection`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nexus.core.checkpoints import CheckpointStore

UPSERT = """
INSERT INTO caller_rights (caller, algorithms, weight, issued)
VALUES ($1, $2, $3, to_timestamp($4))
ON CONFLICT (caller) DO UPDATE
SET algorithms = excluded.algorithms, weight = excluded.weight, issued = excluded.issued,
    updated_at = now()
WHERE caller_rights.issued <= excluded.issued
"""
SELECT = "SELECT algorithms, weight FROM caller_rights WHERE caller = $1"
REMEMBERED = 10_000
"""Callers a pod remembers, as written and as read: a bound on its memory however many
callers an identity provider knows."""


@dataclass(frozen=True, slots=True)
class Rights:
    """What a caller may run, and its fair-share weight."""

    algorithms: frozenset[str]
    weight: float | None = None


NONE = Rights(frozenset())
"""The rights of a caller nothing is known of: it may run nothing."""


def _storable(text: str) -> bool:
    """Whether PostgreSQL's text can hold ``text`` (no NUL, valid UTF-8)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in text


class CallerRights:
    """The rights of callers known by their JWTs, written by the pods that see them."""

    def __init__(self, store: CheckpointStore, ttl: float = 10.0) -> None:
        self._store = store
        self._ttl = ttl
        self._written: dict[str, tuple[Rights, float]] = {}
        """What this pod last wrote for each caller, and the issue time of the JWT that
        carried it (most callers keep their rights; JWTs are renewed every few minutes)."""
        self._read: dict[str, tuple[float, Rights]] = {}

    async def remember(self, caller: str, rights: Rights, issued: float) -> None:
        """Store ``rights`` as ``caller``'s, carried by a JWT issued at ``issued`` (Unix
        seconds), unless the store has rights of a later JWT. Skipped when this pod wrote
        these rights of this JWT's time already, or those of a later JWT (the store's row is
        then no older, so the write would change nothing). A caller or algorithm name the
        store cannot hold is not stored (nothing of that caller can be: its submissions are
        refused as bad input)."""
        written = self._written.get(caller)
        if written is not None and (written[1] > issued or written == (rights, issued)):
            return
        names = sorted(rights.algorithms)
        if not all(map(_storable, [caller, *names])):
            return
        async with self._store.connection() as conn:
            await conn.execute(UPSERT, caller, names, rights.weight, issued)
        _bounded(self._written)
        self._written[caller] = (rights, issued)
        self._read.pop(caller, None)

    async def of(self, caller: str) -> Rights:
        """``caller``'s rights as stored (:data:`NONE` when none are), at most ``ttl``
        seconds old."""
        now = time.monotonic()
        cached = self._read.get(caller)
        if cached is not None and cached[0] > now:
            return cached[1]
        if not _storable(caller):
            return NONE
        async with self._store.connection() as conn:
            row = await conn.fetchrow(SELECT, caller)
        rights = NONE if row is None else Rights(frozenset(row["algorithms"]), row["weight"])
        _bounded(self._read)
        self._read[caller] = (now + self._ttl, rights)
        return rights


def _bounded(memory: dict[str, Any]) -> None:
    """Make room for one more entry in ``memory``, at most :data:`REMEMBERED` callers: the
    oldest entry goes (a caller forgotten is written or read once more, nothing worse)."""
    if len(memory) >= REMEMBERED:
        del memory[next(iter(memory))]
