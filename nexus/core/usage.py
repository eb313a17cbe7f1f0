"""What the checkpoint store says about runs that count against limits and quotas.

A companion of :mod:`nexus.core.checkpoints` (through :meth:`CheckpointStore.connection`):
the stages of a set of runs, to let finished ones go from a concurrency limit; the runs
RUNNING that count against a limit, for the maintainer's reconciliation; a caller's
unfinished runs by stage, for its usage. Narrow reads:
keys and stages, never inputs or configurations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from nexus.core.checkpoints import CheckpointStore
from nexus.core.runs import RunKey, Stage

STAGES = (
    "SELECT r.algorithm, r.id, r.lifecycle_stage FROM runs r"
    " JOIN unnest($1::text[], $2::uuid[]) AS k(a, i) ON r.algorithm = k.a AND r.id = k.i"
)

# RUNNING runs, through the partial index of unfinished runs; the literal IN lets a generic
# plan use it (see statements.SWEEP_PAGE)
_RUNNING = (
    "SELECT algorithm, id FROM runs"
    " WHERE lifecycle_stage = 'RUNNING' AND lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING')"
)
RUNNING_BY = {
    "algorithm": _RUNNING + " AND algorithm = $1",
    "workgroup": _RUNNING + " AND applied_configuration->>'workgroup' = $1",
    "caller": _RUNNING + " AND caller = $1",
    "unfinished": "SELECT algorithm, id FROM runs"
    " WHERE lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING') AND caller = $1",
}
UNFINISHED_OF = (
    "SELECT lifecycle_stage, count(*) FROM runs"
    " WHERE lifecycle_stage IN ('NEW', 'BUFFERED', 'RUNNING') AND caller = $1 GROUP BY 1"
)


async def stages(store: CheckpointStore, keys: Sequence[RunKey]) -> dict[RunKey, Stage]:
    """The stage of each of ``keys`` that exists (one round trip)."""
    if not keys:
        return {}
    async with store.connection() as conn:
        rows = await conn.fetch(STAGES, [k.algorithm for k in keys], [k.id for k in keys])
    return {RunKey(r["algorithm"], r["id"]): Stage(r["lifecycle_stage"]) for r in rows}


async def running(
    store: CheckpointStore,
    kind: Literal["algorithm", "workgroup", "caller", "unfinished"],
    name: str,
) -> list[RunKey]:
    """The runs RUNNING now of algorithm, workgroup or caller ``name``; for
    ``unfinished``, the caller's runs not finished (queued or running)."""
    async with store.connection() as conn:
        rows = await conn.fetch(RUNNING_BY[kind], name)
    return [RunKey(r["algorithm"], r["id"]) for r in rows]


async def unfinished(store: CheckpointStore, caller: str) -> dict[Stage, int]:
    """How many runs of ``caller`` are in each unfinished stage."""
    async with store.connection() as conn:
        rows = await conn.fetch(UNFINISHED_OF, caller)
    return {Stage(r["lifecycle_stage"]): int(r["count"]) for r in rows}
