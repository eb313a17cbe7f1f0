"""Concurrency limits in Redis: slots that runs hold while they run, across every pod.

A limit (an algorithm's, a workgroup's, a caller's) is a *slot set*: the runs that count
against it. A run takes a slot of each of its limits before its Job is created, all or none
(``reserve.lua``), and gives them back when its Job is not made after all. Membership, not
a counter, is what counts: taking a slot twice (a run dispatched again after a crash) holds
one, giving back what is not held changes nothing, so nothing drifts however processes die.
A run that finished is let go by whoever looks at a full limit (its checkpoint says it is
over) and by the maintainer's reconciliation, which also counts runs RUNNING that no set
holds (after Redis lost data, or a limit set on an algorithm that was already running).

A run over a limit is *parked* (``park.lua``): listed in the limit's parked set, in tag
order, and held in its pod's delayed set with no due time, so that it stays the pod's
(restarts, adoption and sweeps see it as any run in flight) and no pop takes it. When
slots are free again, the runs parked first are made due (``unpark.lua``): their pods' next
pops queue them again, ahead of newer runs, and they try for their slots again.

All keys are queue keys (the ``{q}`` hash tag): a script touches a pod's keys and a
limit's together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from nexus.core.queues import QueueBackend, QueuedRun
from nexus.core.runs import RunKey

LimitKind = Literal["algorithm", "workgroup", "caller", "unfinished"]
"""Concurrency limits count runs RUNNING; ``unfinished`` (a caller's quota) counts runs
from their acceptance until they finish."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``size`` runs of ``kind`` ``name`` RUNNING at once."""

    kind: LimitKind
    name: str
    size: int

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Waiting:
    """Where a run waits for a slot: the limit's label, its place among the runs waiting
    for it (0: next), and how many slots are taken."""

    label: str
    position: int
    taken: int


def member(key: RunKey) -> str:
    return f"{key.algorithm}/{key.id}"


def parse_label(label: str) -> tuple[LimitKind, str] | None:
    kind, _, name = label.partition("/")
    match kind:
        case "algorithm" | "workgroup" | "caller" | "unfinished":
            return kind, name
        case _:
            return None


class Slots:
    """The slot sets and parked runs of every limit."""

    def __init__(self, backend: QueueBackend) -> None:
        self.backend = backend
        self.keys = backend.keys

    async def reserve(self, runs: Sequence[tuple[RunKey, Sequence[Limit]]]) -> list[Limit | None]:
        """Take every slot each run needs, or none; per run, the limit that is full."""
        index: dict[str, int] = {}
        limit_at: dict[int, Limit] = {}
        args: list[object] = []
        for key, limits in runs:
            args += [member(key), len(limits)]
            for limit in limits:
                slot = index.setdefault(self.keys.slots(limit.label), len(index) + 1)
                limit_at[slot] = limit
                args += [slot, limit.size]
        if not index:
            return [None] * len(runs)
        answers = await self.backend.run("reserve", [*index, self.keys.slot_sets], args)
        return [limit_at[int(a)] if int(a) else None for a in answers]

    async def release(self, runs: Sequence[tuple[RunKey, Sequence[Limit]]]) -> None:
        """Give back the slots of ``runs`` (those they do not hold are left alone)."""
        keys, args = [], []
        for key, limits in runs:
            for limit in limits:
                keys.append(self.keys.slots(limit.label))
                args.append(member(key))
        if keys:
            await self.backend.run("release_slots", keys, args)

    async def forget(self, label: str, keys: Sequence[RunKey]) -> None:
        """Let finished runs go from the slot set ``label``."""
        if keys:
            slot = self.keys.slots(label)
            await self.backend.run("release_slots", [slot] * len(keys), [member(k) for k in keys])

    async def holders(self, label: str) -> list[RunKey]:
        """The runs holding a slot of ``label`` now."""
        found = await self.backend.members(self.keys.slots(label))
        return [_key(m) for m in found]

    async def park(self, pod: str, runs: Sequence[tuple[QueuedRun, Limit]]) -> int:
        """Hold ``runs`` (in flight at ``pod``) until their limit has room; how many were."""
        groups: dict[tuple[str, str], list[QueuedRun]] = {}
        for run, limit in runs:
            groups.setdefault((run.shard, limit.label), []).append(run)
        parked = 0
        k = self.keys
        for (shard, label), group in groups.items():
            keys = [
                k.delayed(pod, shard), k.inflight(pod), k.parked(label), k.parked_where(label),
                k.limited,
            ]  # fmt: skip
            args: list[object] = [pod, shard, label]
            for run in group:
                args += [run.member, run.priority]
            parked += int(await self.backend.run("park", keys, args))
        return parked

    async def limited(self) -> list[str]:
        """The labels of limits that runs are waiting for."""
        return sorted(await self.backend.members(self.keys.limited))

    async def taken(self, label: str) -> int:
        return await self.backend.count(self.keys.slots(label))

    async def unpark(self, label: str, count: int) -> int:
        """Let the first ``count`` runs waiting for ``label`` go; how many went."""
        k = self.keys
        for _ in range(5):
            first = await self.backend.first_parked(k.parked(label), k.parked_where(label), count)
            if not first:
                keys = [k.parked(label), k.parked_where(label), k.limited]
                await self.backend.run("unpark", keys, [label])  # none waits: off the list
                return 0
            keys = [k.parked(label), k.parked_where(label), k.limited]
            args: list[object] = [label]
            for run, where in first:
                pod, _, shard = where.partition("\t")
                keys += [k.delayed(pod, shard), k.inflight(pod)]
                args += [run, where]
            released = int(await self.backend.run("unpark", keys, args))
            if released >= 0:
                return released
        return 0

    async def waiting(self, key: RunKey, labels: Sequence[str]) -> Waiting | None:
        """Whether run ``key`` waits for a slot of one of ``labels``, and where."""
        if not labels:
            return None
        keys = []
        for label in labels:
            keys += [self.keys.parked(label), self.keys.slots(label)]
        found = await self.backend.run("waiting", keys, [member(key), *labels])
        if not found:
            return None
        label = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
        return Waiting(label, int(found[1]), int(found[2]))

    async def slot_sets(self) -> list[str]:
        """Every slot set's label (for reconciliation)."""
        prefix = self.keys.slots("")
        found = await self.backend.members(self.keys.slot_sets)
        return sorted(name.removeprefix(prefix) for name in found if name.startswith(prefix))

    async def add(self, label: str, keys: Sequence[RunKey]) -> None:
        """Count runs that are RUNNING but held no slot of ``label``."""
        if keys:
            await self.backend.add_members(
                self.keys.slots(label), [member(k) for k in keys], self.keys.slot_sets
            )


def _key(text: str) -> RunKey:
    algorithm, _, run_id = text.partition("/")
    return RunKey(algorithm, UUID(run_id))
