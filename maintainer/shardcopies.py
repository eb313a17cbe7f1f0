"""Keeping one shard's copies of the configuration in step (:mod:`maintainer.replication`).

A :class:`ShardReplica` holds what it knows of its shard — which copies are in step
(by fingerprint), which of ours are no longer wanted, which names foreign objects hold,
which copies the shard refused — and runs one loop: a full reconcile when due (list this
deployment's copies by label, compare, write the difference: creations and updates in
:data:`~maintainer.copies.KINDS` order, then deletions in reverse), else a look (GET) at
each key the source says changed. Every write is conditional (the ``resourceVersion``
read, the uid) and made only while this process leads. A shard that cannot be reached,
throttles or refuses is retried with capped back-off, and reconciled in full once it
answers; whatever happens, the loop never raises for the shard's sake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from maintainer.configsource import ConfigurationSource
from maintainer.copies import KINDS, Copy, Key, Kind, Mark, Obj, Ownership, in_step
from maintainer.settings import ReplicationSection
from nexus.core.errors import DependencyError, NexusError, ShardRejected, ShardThrottled
from nexus.core.shards import ShardClient
from nexus.core.waiting import Backoff, first_of, sleep_or_stop

log = logging.getLogger(__name__)

COPIES = Gauge(
    "nexus_configuration_copies",
    "Objects each shard should hold a copy of, by shard, kind and state: in_sync (known to "
    "be in step), out_of_sync (to be written or deleted) or conflict (a foreign object has "
    "the name).",
    ["shard", "kind", "state"],
)
LAST_RECONCILE = Gauge(
    "nexus_configuration_last_reconcile_timestamp_seconds",
    "When every copy on a shard was last compared and brought in step (Unix time).",
    ["shard"],
)
WRITES = Counter(
    "nexus_configuration_writes_total",
    "Copies written on shards, by shard, kind and action (created, updated, deleted).",
    ["shard", "kind", "action"],
)
FAILURES = Counter(
    "nexus_configuration_failures_total",
    "Reconciles of a shard that failed, by shard and reason (unavailable, throttled, rejected).",
    ["shard", "reason"],
)
REACHABLE = Gauge(
    "nexus_configuration_shard_reachable",
    "1 while the last attempt to reconcile a shard's copies reached it.",
    ["shard"],
)

_STATES = ("in_sync", "out_of_sync", "conflict")


class _NotLeading(Exception):
    """This process stopped leading in the middle of a reconcile: write nothing more."""


class ShardReplica:
    """Keeps one shard's copies in step with a :class:`ConfigurationSource`."""

    def __init__(
        self,
        client: ShardClient,
        source: ConfigurationSource,
        mark: Mark,
        section: ReplicationSection,
        leading: Callable[[], bool],
    ) -> None:
        self.client = client
        self.shard = client.name
        self.source = source
        self.mark = mark
        self.section = section
        self.leading = leading
        self.confirmed: dict[Key, bytes] = {}
        """Copies known to be in step on the shard: key → the fingerprint they hold."""
        self.stale: dict[Key, str] = {}
        """Our copies on the shard that the source no longer wants: key → uid."""
        self.occupied: dict[Key, Ownership] = {}
        """Names held on the shard by an object not ours: key → whose (foreign or source)."""
        self.refused: dict[Key, str] = {}
        """Copies the shard refused (invalid, kind not served): key → its message."""
        self.dirty: set[Key] = set()
        self.full_due = True
        self.last_reconcile: float | None = None
        """Unix time of the last complete full reconcile."""
        self.wake = asyncio.Event()
        self.reached = False
        """Whether the current attempt got an answer from the shard."""

    def touch(self, keys: set[Key], full: bool) -> None:
        """The source's copies of ``keys`` changed (and a full reconcile is due if ``full``)."""
        self.dirty |= keys
        self.full_due = self.full_due or full
        self.wake.set()
        self.publish()

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep the shard in step until ``stopping`` is set; never raises for its sake."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(first=0.5, cap=self.section.max_backoff)
        next_full = loop.time()
        REACHABLE.labels(self.shard).set(0)
        try:
            while not stopping.is_set():
                self.wake.clear()
                self.reached = False
                try:
                    if self.full_due or loop.time() >= next_full:
                        next_full = loop.time() + self.section.interval
                        await self.reconcile_all()
                    elif self.dirty:
                        await self.reconcile_some()
                except _NotLeading:
                    self.full_due = True
                    await sleep_or_stop(stopping, self.section.max_backoff)
                    continue
                except NexusError as exc:
                    self.full_due = True  # whatever was missed is found by a full reconcile
                    await sleep_or_stop(stopping, self._failed(exc, backoff))
                    continue
                finally:
                    self.publish()
                backoff.succeeded()
                if self.reached:
                    REACHABLE.labels(self.shard).set(1)
                if self.dirty or self.full_due:
                    continue
                await first_of(stopping, self.wake, timeout=max(0.0, next_full - loop.time()))
        finally:
            self.forget()

    def _failed(self, exc: NexusError, backoff: Backoff) -> float:
        """Count and log a failed attempt; how long to wait before the next."""
        delay = backoff.failed()
        if isinstance(exc, ShardThrottled):  # the server says how long
            delay = max(delay, exc.retry_after)
        level = logging.WARNING
        if isinstance(exc, ShardThrottled):
            reason = "throttled"
        elif isinstance(exc, DependencyError):
            reason = "unavailable"
            REACHABLE.labels(self.shard).set(0)
        else:  # refused (401, 403…): asked again, less and less often
            reason, level = "rejected", logging.ERROR
        FAILURES.labels(self.shard, reason).inc()
        log.log(
            level,
            "cannot reconcile configuration copies (%s); retrying in %.1fs: %s",
            reason,
            delay,
            exc,
            extra={"shard": self.shard, "failures": backoff.failures},
        )
        return delay

    # -- reconciling -----------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        """Compare every copy on the shard with what the source wants; write the difference."""
        self.full_due = False
        self.dirty.clear()  # all of them are looked at now; what changes meanwhile comes again
        complete = all(self.source.covers(kind) for kind in KINDS)
        stale: list[tuple[Key, Obj]] = []
        for kind in KINDS:
            if not self.source.covers(kind):
                continue
            try:
                listing = await self.client.list_all(
                    kind.resource, label_selector=self.mark.selector
                )
            except ShardRejected as exc:  # forbidden, or a CRD not installed: the rest go on
                complete = False
                FAILURES.labels(self.shard, "rejected").inc()
                log.error(
                    "cannot list the %s copies: %s", kind.name, exc, extra={"shard": self.shard}
                )
                continue
            self.reached = True
            ours = {o["metadata"]["name"]: o for o in listing.items if self.mark.owns(o)}
            wanted = {k: c for k, c in self.source.wanted().items() if k[0] is kind}
            for key, copy in wanted.items():
                found = ours.pop(key[1], None)
                try:
                    if found is None and key in self.occupied:
                        found = await self.client.get(kind.resource, key[1])
                    await self._settle(key, copy, found)
                except ShardRejected as exc:  # this one refused (403 on Secrets…): the rest go on
                    complete = False
                    self._refused(key, str(exc), "write")
            for name, found in ours.items():
                key = (kind, name)
                self.stale[key] = found["metadata"].get("uid", "")
                self.confirmed.pop(key, None)
                stale.append((key, found))
            for key in [k for k in self.stale if k[0] is kind and k[1] not in ours]:
                del self.stale[key]  # gone from the shard by other hands
        for key, found in reversed(stale):  # templates before what they reference
            try:
                await self._settle(key, None, found)
            except ShardRejected as exc:
                complete = False
                self._refused(key, str(exc), "delete")
        if complete:
            self.last_reconcile = time.time()
            LAST_RECONCILE.labels(self.shard).set(self.last_reconcile)

    async def reconcile_some(self) -> None:
        """Bring the copies of the changed keys in step, one look (GET) at each."""
        keys, self.dirty = self.dirty, set()
        wanted = self.source.wanted()
        order = {kind: i for i, kind in enumerate(KINDS)}
        # creations and updates in KINDS order, then deletions in the reverse order
        ordered = sorted((k for k in keys if k in wanted), key=lambda k: order[k[0]])
        ordered += sorted((k for k in keys if k not in wanted), key=lambda k: -order[k[0]])
        for index, key in enumerate(ordered):
            kind, name = key
            if not self.source.covers(kind):
                continue
            try:
                found = await self.client.get(kind.resource, name)
                self.reached = True
                await self._settle(key, self.source.wanted().get(key), found)
            except ShardRejected as exc:  # this one refused: the next full reconcile retries
                self._refused(key, str(exc), "write")
            except BaseException:
                self.dirty.update(ordered[index:])  # not done: looked at again
                raise

    async def _settle(
        self, key: Key, copy: Copy | None, found: Obj | None, again: bool = True
    ) -> None:
        """Bring one name on the shard in step: ``copy`` is what should be there (``None``:
        nothing of ours), ``found`` what is (``None``: nothing)."""
        kind, name = key
        if found is None:
            self.occupied.pop(key, None)
            self.stale.pop(key, None)
            if copy is None:
                self.confirmed.pop(key, None)
                self.refused.pop(key, None)
            else:
                await self._create(copy, again)
            return
        match self.mark.ownership(found, copy):
            case "source":  # the controller cluster's own namespace: nothing to copy
                self.occupied[key] = "source"
                if copy is not None:
                    self.confirmed[key] = copy.fingerprint
            case "foreign":
                self.confirmed.pop(key, None)
                if copy is None:
                    self.occupied.pop(key, None)
                    return
                if self.occupied.get(key) != "foreign":
                    log.warning(
                        "a %s named %s on the shard was not made by this deployment (no mark); "
                        "left alone, so the shard has no copy of it",
                        kind.name,
                        name,
                        extra={"shard": self.shard, "owner": self.mark.owner},
                    )
                self.occupied[key] = "foreign"
            case "ours":
                self.occupied.pop(key, None)
                uid = str(found["metadata"].get("uid") or "")
                if copy is None:
                    await self._delete(key, uid, again)
                elif in_step(found, copy):
                    self.confirmed[key] = copy.fingerprint
                    self.refused.pop(key, None)
                else:
                    await self._update(found, copy, again)

    def _writing(self) -> None:
        if not self.leading():
            raise _NotLeading()

    async def _create(self, copy: Copy, again: bool) -> None:
        self._writing()
        kind = copy.kind
        written = await self.client.create_object(kind.resource, self.mark.body(copy))
        match written.status:
            case 409 if again:  # made meanwhile (by another leader?) or foreign: look
                found = await self.client.get(kind.resource, copy.name)
                await self._settle(copy.key, copy, found, again=False)
            case 409:
                self._raced(copy.key)
            case 404 | 422:  # the kind is not served (a CRD not installed), or invalid here
                self._refused(copy.key, written.message, "create")
            case _:
                self.confirmed[copy.key] = copy.fingerprint
                self.refused.pop(copy.key, None)
                self._wrote(copy.key, "created")

    async def _update(self, found: Obj, copy: Copy, again: bool) -> None:
        self._writing()
        kind = copy.kind
        written = await self.client.replace_object(kind.resource, self.mark.update(found, copy))
        match written.status:
            case 404 | 409 if again:  # deleted or changed since it was read: look again
                found_now = await self.client.get(kind.resource, copy.name)
                await self._settle(copy.key, copy, found_now, again=False)
            case 422 if again:  # a field that cannot change (a Secret's type, immutable data)
                await self._delete(copy.key, str(found["metadata"].get("uid") or ""), False)
                if copy.key not in self.stale:
                    await self._create(copy, again=False)
            case 404 | 409:
                self._raced(copy.key)
            case 422:
                self._refused(copy.key, written.message, "update")
            case _:
                self.confirmed[copy.key] = copy.fingerprint
                self.refused.pop(copy.key, None)
                self._wrote(copy.key, "updated")

    async def _delete(self, key: Key, uid: str, again: bool) -> None:
        self._writing()
        kind, name = key
        self.stale[key] = uid
        written = await self.client.delete_object(kind.resource, name, uid=uid or None)
        match written.status:
            case 409:  # another object has the name now: the next look decides
                if again:
                    self.dirty.add(key)
            case _:  # deleted now, or already gone
                self.stale.pop(key, None)
                self.confirmed.pop(key, None)
                self.refused.pop(key, None)
                if written.done:
                    self._wrote(key, "deleted")

    def _wrote(self, key: Key, action: str) -> None:
        WRITES.labels(self.shard, key[0].name, action).inc()
        log.info(
            "%s the copy of %s %s",
            action,
            key[0].name,
            key[1],
            extra={"shard": self.shard, "object": key[1], "write": action},
        )

    def _raced(self, key: Key) -> None:
        """Another writer changed the name twice while it was being written: the next full
        reconcile looks again (not at once, so that two writers cannot spin)."""
        self.confirmed.pop(key, None)
        log.info(
            "the %s %s changed while its copy was written; looked at again in the next full"
            " reconcile",
            key[0].name,
            key[1],
            extra={"shard": self.shard, "object": key[1]},
        )

    def _refused(self, key: Key, message: str, what: str) -> None:
        self.confirmed.pop(key, None)
        if self.refused.get(key) != message:
            log.error(
                "the shard refused to %s a %s copy: %s",
                what,
                key[0].name,
                message,
                extra={"shard": self.shard, "object": key[1]},
            )
        self.refused[key] = message
        FAILURES.labels(self.shard, "rejected").inc()

    # -- metrics ---------------------------------------------------------------------------

    def counts(self) -> dict[Kind, dict[str, int]]:
        """Per kind: copies in step, out of step (to write or delete) and in conflict."""
        counts = {kind: dict.fromkeys(_STATES, 0) for kind in KINDS}
        wanted = self.source.wanted()
        for key, copy in wanted.items():
            if self.occupied.get(key) == "foreign":
                state = "conflict"
            elif self.confirmed.get(key) == copy.fingerprint:
                state = "in_sync"
            else:
                state = "out_of_sync"
            counts[key[0]][state] += 1
        for key in self.stale.keys() | (self.confirmed.keys() - wanted.keys()):
            counts[key[0]]["out_of_sync"] += 1  # to be deleted
        return counts

    def publish(self) -> None:
        for kind, states in self.counts().items():
            for state, count in states.items():
                COPIES.labels(self.shard, kind.name, state).set(count)

    def forget(self) -> None:
        """Drop this shard's gauges: a maintainer that stopped leading reports nothing
        stale (the leader's are the ones to read)."""
        for kind in KINDS:
            for state in _STATES:
                with contextlib.suppress(KeyError):
                    COPIES.remove(self.shard, kind.name, state)
        for gauge in (REACHABLE, LAST_RECONCILE):
            with contextlib.suppress(KeyError):
                gauge.remove(self.shard)
