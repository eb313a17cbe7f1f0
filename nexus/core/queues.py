"""Virtual queues, heartbeats, the distributed throttle and leases, in Redis.

This is the only module that talks to Redis. Every key name is made here (:class:`KeySpace`)
and every multi-key operation is one Lua script (``nexus/core/lua/*.lua``), so each is atomic
and costs one round trip.

Queues: each scheduler pod owns one *ready* sorted set per shard, scored by the run's
priority: its virtual start tag under weighted fair share across callers (see
:mod:`nexus.scheduler.fairshare`; computed by the push script), so that a caller's batch of
100,000 runs does not starve another caller's single run, and runs that were delayed or
recovered go ahead of newer ones. A pop moves runs from *ready* to the pod's *in-flight* set
in the same script, so a run taken off the queue but not yet turned into a Job survives a
crash of the pod; it is acknowledged (removed) only after its checkpoint records the
outcome. A retry delay keeps the run in flight and lists it in the *delayed* set until it is
due. Each pod keeps a heartbeat in the *pods* set; when it expires,
:meth:`QueueBackend.adopt` moves everything the dead pod held to a live pod's ready queues,
atomically. A pod restarted under the same name keeps its heartbeat, so nothing adopts what
its previous process held in flight: it takes those runs back itself when it starts
(:meth:`RunQueue.recover`).

Every key starts with the configured prefix. Redis Cluster: all queue keys share one hash
tag (``<prefix>:{q}:…``) because adoption moves runs between pods' keys in one script;
throttle buckets and leases are single keys.

Connection and timeout errors surface as :class:`QueueUnavailable`.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import Any, cast
from uuid import UUID

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nexus.core.config import RedisSettings
from nexus.core.errors import QueueUnavailable
from nexus.core.outages import Outage
from nexus.core.runs import RunKey, record

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_SPARE = 2
"""Connections a backend keeps between the scripts it sends directly, out of the pool's
``max_connections``."""


def _script(name: str) -> str:
    return importlib.resources.files("nexus.core").joinpath("lua", f"{name}.lua").read_text()


class KeySpace:
    """Every Redis key name Nexus uses."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # every key starts with the prefix (so deployments and tests sharing a server can
        # find and delete their own); the hash tag puts all queue state in one slot
        self._queues = f"{prefix}:{{q}}"

    @property
    def pods(self) -> str:
        """Sorted set: scheduler pod → heartbeat expiry (ms, Redis clock)."""
        return f"{self._queues}:pods"

    def shards(self, pod: str) -> str:
        """Set: the shards a pod has queues for."""
        return f"{self._queues}:shards:{pod}"

    def ready(self, pod: str, shard: str) -> str:
        """Sorted set: ``algorithm/id`` → priority, runs waiting for dispatch."""
        return f"{self._queues}:ready:{pod}:{shard}"

    def delayed(self, pod: str, shard: str) -> str:
        """Sorted set: ``algorithm/id`` → due time (ms), runs waiting out a retry delay."""
        return f"{self._queues}:delayed:{pod}:{shard}"

    def inflight(self, pod: str) -> str:
        """Sorted set: ``shard/algorithm/id`` → priority, runs taken but not yet settled."""
        return f"{self._queues}:inflight:{pod}"

    def shares(self, shard: str) -> str:
        """Hash: per caller (flow), the tag after its last queued run (``f:<flow>``) and the
        pod it was queued on (``p:<flow>``), for a shard: fair share across every pod."""
        return f"{self._queues}:shares:{shard}"

    def clocks(self, shard: str) -> str:
        """Hash: pod → its virtual time for a shard (the tag of the last run it popped)."""
        return f"{self._queues}:clocks:{shard}"

    def slots(self, label: str) -> str:
        """Set: ``algorithm/id`` of the runs holding a slot of a concurrency limit
        (``algorithm/<name>``, ``workgroup/<name>``, ``caller/<name>``)."""
        return f"{self._queues}:slots:{label}"

    @property
    def slot_sets(self) -> str:
        """Set: the names of every slot set (for the maintainer's reconciliation)."""
        return f"{self._queues}:slotsets"

    def parked(self, label: str) -> str:
        """Sorted set: ``algorithm/id`` → tag, runs waiting for a slot of a full limit."""
        return f"{self._queues}:parked:{label}"

    def parked_where(self, label: str) -> str:
        """Hash: ``algorithm/id`` → ``pod<TAB>shard`` of each run of :meth:`parked`."""
        return f"{self._queues}:parkedat:{label}"

    def quota(self, caller: str, day: str) -> str:
        """Counter: runs ``caller`` submitted on UTC ``day`` (``YYYY-MM-DD``)."""
        return f"{self.prefix}:quota:{day}:{caller}"

    @property
    def limited(self) -> str:
        """Set: the labels of limits that runs are waiting for."""
        return f"{self._queues}:limited"

    def throttle(self, shard: str) -> str:
        """Hash: the token bucket of a shard's Job creations."""
        return f"{self.prefix}:throttle:{{{shard}}}"

    def lease(self, name: str) -> str:
        """String: the holder of a named lease."""
        return f"{self.prefix}:lease:{name}"

    @property
    def generation(self) -> str:
        """String: set once and never deleted, so its absence shows that Redis lost its
        data (restarted empty, failed over to an empty replica, flushed): the maintainer
        then queues the runs again from the checkpoints at once."""
        return f"{self._queues}:generation"


@record
class Share:
    """Whose share a run pushed to a queue counts against, and how much it costs.

    ``flow`` names the caller (or ``""``: :data:`AHEAD`), ``step`` is ``1 / weight``: a
    caller of weight 2 advances its tags half as fast as one of weight 1, and so gets
    twice the dispatches while both wait."""

    flow: str
    step: float


AHEAD = Share("", 0.0)
"""A run recovered from outside the queues (the maintainer's sweep): ahead of every run
the pod queued since, whoever's it is."""


@record
class QueuedRun:
    """A run on a queue: which shard it is for, which run, and its priority (its tag).

    Pushed with a :class:`Share`, its priority is computed by the push script (weighted
    fair share); pushed without one, it is queued at ``priority`` as given."""

    shard: str
    key: RunKey
    priority: float
    share: Share | None = None
    text: str | None = field(default=None, compare=False, repr=False)
    """Its member (``algorithm/id``) when the pusher has made it already: a bulk submit
    formats each run's id once, for its answer and its queue."""

    @property
    def member(self) -> str:
        return self.text or f"{self.key.algorithm}/{self.key.id}"

    @classmethod
    def parse(cls, shard: str, member: str | bytes, priority: Any) -> QueuedRun:
        text = member.decode() if isinstance(member, bytes) else member
        algorithm, _, run_id = text.partition("/")
        return cls(shard, RunKey(algorithm, UUID(run_id)), float(priority), text=text)


@record
class Pods:
    """Scheduler pods known to Redis, by whether their heartbeat is current."""

    live: list[str]
    dead: list[str]


class QueueBackend:
    """A Redis connection with Nexus's scripts loaded; hands out per-pod :class:`RunQueue`."""

    def __init__(self, client: aioredis.Redis | RedisCluster, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys
        self.outage = Outage("redis", "redis (the queues)")
        self._scripts: dict[str, AsyncScript] = {}
        self._pool: ConnectionPool | None = (
            None if isinstance(client, RedisCluster) else client.connection_pool
        )
        """The plain client's pool, on which scripts are sent directly (:meth:`_evalsha`)."""
        self._deadline: float | None = (
            None if self._pool is None else self._pool.connection_kwargs.get("socket_timeout")
        )
        """Seconds a script sent directly may take in all: taking a connection (and making
        it), sending and reading the answer (the client's socket timeout)."""
        self._spare: list[AbstractConnection] = []
        """Connections taken from the pool and kept between scripts (at most
        :attr:`_spares`): taking one from the pool and giving it back cost more than the
        script's own I/O (the pool's lock, its metrics hooks and a readiness check)."""
        self._spares = 0 if self._pool is None else min(_SPARE, self._pool.max_connections - 1)
        """How many :attr:`_spare` may hold: always one connection less than the pool's
        size, for the client's own commands."""
        # every script of the folder: those of the modules built on this one (concurrency
        # slots, quotas) too, which run them through run()
        folder = importlib.resources.files("nexus.core").joinpath("lua")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".lua"):
                name = entry.name.removesuffix(".lua")
                self._scripts[name] = client.register_script(_script(name))

    @classmethod
    def connect(cls, settings: RedisSettings) -> QueueBackend:
        """A client for ``settings.url`` (``redis+cluster://`` selects Redis Cluster)."""
        options: dict[str, Any] = {
            "max_connections": settings.max_connections,
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_timeout,
            "health_check_interval": 30,
        }
        client: aioredis.Redis | RedisCluster
        if settings.url.startswith("redis+cluster://"):
            url = "redis://" + settings.url.removeprefix("redis+cluster://")
            client = RedisCluster.from_url(url, **options)
        else:
            client = aioredis.Redis.from_url(url=settings.url, **options)
        return cls(client, KeySpace(settings.key_prefix))

    async def close(self) -> None:
        if self._pool is not None:
            while self._spare:
                await self._pool.release(self._spare.pop())
        await self.client.aclose()

    async def run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one of the scripts; Redis failures become :class:`QueueUnavailable`."""
        try:
            if self._pool is None:
                answer = await self._scripts[script](keys=list(keys), args=list(args))
            else:
                answer = await self._evalsha(self._pool, self._scripts[script], keys, args)
        except _UNAVAILABLE as exc:
            self.outage.down(exc)
            if isinstance(exc, TimeoutError):  # the deadline of _evalsha (no message)
                exc = RedisTimeoutError(f"no answer to {script} within {self._deadline} s")
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise QueueUnavailable(f"redis refused {script}: {exc}") from exc
        self.outage.up()
        return answer

    async def _evalsha(
        self, pool: ConnectionPool, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """``EVALSHA`` of ``script`` on a pooled connection, as the client would send it,
        without the client's machinery around each command (its retry wrapper, metrics
        hooks and per-command checks): a Redis call was a tenth of a scheduler's CPU at a
        few hundred runs a second, most of it there. As with the client (no retries), a
        connection that fails is closed and the error raised; a script Redis no longer
        holds (a restart, ``SCRIPT FLUSH``) is sent again through the client, which loads
        it.

        One deadline (:attr:`_deadline`, ``asyncio.timeout``) bounds the whole call rather
        than the connection's socket timeout around each write and read: redis-py puts
        each write under ``asyncio.wait_for``, which makes a task per command before
        Python 3.12. When it passes, the connection is closed and returned to the pool and
        ``TimeoutError`` raised."""
        conn: AbstractConnection | None = None
        try:
            async with asyncio.timeout(self._deadline):
                conn = await self._connection(pool)
                command = conn.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
                writer = conn._writer
                if writer is None or (
                    conn.health_check_interval
                    and asyncio.get_running_loop().time() > conn.next_health_check
                ):
                    await conn.send_packed_command(command)  # connects, or PINGs first
                else:
                    writer.writelines(command)
                    await writer.drain()
                return await conn.read_response(timeout=math.inf)  # under the deadline
        except NoScriptError:
            pass
        except BaseException:
            if conn is not None:
                failed, conn = conn, None
                await failed.disconnect(nowait=True)
                await pool.release(failed)
            raise
        finally:
            if conn is not None and len(self._spare) < self._spares:
                self._spare.append(conn)
            elif conn is not None:
                await pool.release(conn)
        return await script(keys=list(keys), args=list(args))

    async def _connection(self, pool: ConnectionPool) -> AbstractConnection:
        """A spare connection still fit to use (connected, nothing unread, not closed by
        Redis), else one from the pool. An unfit one is closed before it goes back: the
        pool, with maintenance notifications on (as with RESP3), hands out a connection
        Redis closed as it is, and its first command fails."""
        while self._spare:
            conn = self._spare.pop()
            try:
                if conn.is_connected and not await conn.can_read():
                    return conn
            except (OSError, RedisError):
                pass
            try:
                await conn.disconnect(nowait=True)
            finally:
                await pool.release(conn)
        return await pool.get_connection()  # type: ignore[no-untyped-call,no-any-return]

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc

    async def keep_generation(self, mark: str) -> bool:
        """Set the :attr:`KeySpace.generation` marker to ``mark`` unless it is there;
        ``True`` if it was missing: Redis lost its data since it was last set (or it is
        the first time this deployment used Redis)."""
        try:
            created = await self.client.set(self.keys.generation, mark, nx=True)
        except _UNAVAILABLE as exc:
            self.outage.down(exc)
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise QueueUnavailable(f"redis refused to keep its marker: {exc}") from exc
        self.outage.up()
        return bool(created)

    def queue(self, pod: str) -> RunQueue:
        return RunQueue(self, pod)

    # -- pods ------------------------------------------------------------------------------

    async def pods(self) -> Pods:
        """Live and dead scheduler pods, by the Redis clock."""
        names = [_text(n) for n in await self.run("pods", [self.keys.pods], [])]
        split = names.index("")
        return Pods(live=names[:split], dead=names[split + 1 :])

    async def adopt(self, dead: str, live: str) -> int | None:
        """Move all runs of pod ``dead`` to pod ``live``'s queues; return how many moved.

        ``None``, and nothing moved, unless ``live`` is alive and ``dead`` is not, by the
        Redis clock, when the move is made: a pod that stopped (or left, see
        :meth:`RunQueue.leave`) since the caller looked takes no runs, as no one would ever
        pop them. A stopping pod leaves before it hands its own queue over.
        """
        if dead == live:
            raise ValueError(f"pod {dead!r} cannot adopt its own queue")
        k = self.keys
        for _ in range(5):
            # The script must name every key it touches, so the shards are read first; it
            # refuses (-1) if the dead pod has runs for a shard this read did not see.
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.smembers(k.shards(dead))
                    pipe.zrange(k.inflight(dead), 0, -1)
                    members, held = await pipe.execute()
            except (*_UNAVAILABLE, RedisError) as exc:
                raise QueueUnavailable(f"redis unavailable: {exc}") from exc
            names = {_text(s) for s in members}
            names.update(_text(h).partition("/")[0] for h in held)
            shards = sorted(names)
            keys = [k.pods, k.shards(dead), k.inflight(dead), k.shards(live), k.inflight(live)]
            for shard in shards:
                keys += [
                    k.ready(dead, shard), k.delayed(dead, shard), k.ready(live, shard),
                    k.clocks(shard),
                ]  # fmt: skip
            moved = int(await self.run("adopt", keys, [dead, live, *shards]))
            if moved >= 0:
                return moved
            if moved == -2:
                return None
        raise QueueUnavailable(f"the queues of pod {dead} kept changing during adoption")

    async def missing(self, shard: str, runs: Sequence[RunKey], pods: Iterable[str]) -> set[RunKey]:
        """Which of ``runs`` (all for ``shard``) are in no queue of ``pods``."""
        if not runs:
            return set()
        keys = []
        for pod in pods:
            keys += [self.keys.ready(pod, shard), self.keys.inflight(pod)]
        members = [f"{r.algorithm}/{r.id}" for r in runs]
        found = await self.run("missing", keys, [shard, *members])
        return {QueuedRun.parse(shard, m, 0).key for m in found}

    # -- plain reads and writes of sets (for nexus.core.slots) ------------------------------

    async def members(self, key: str) -> list[str]:
        """The members of set ``key``."""
        try:
            found = await self.client.smembers(key)
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc
        return [_text(m) for m in found]

    async def count(self, key: str) -> int:
        """How many members set ``key`` has."""
        try:
            return int(await self.client.scard(key))
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc

    async def add_members(self, key: str, members: Sequence[str], registry: str) -> None:
        """Add ``members`` to set ``key``, and ``key`` to set ``registry``."""
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.sadd(key, *members)
                pipe.sadd(registry, key)
                await pipe.execute()
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc

    async def first_parked(self, parked: str, where: str, count: int) -> list[tuple[str, str]]:
        """The first ``count`` members of sorted set ``parked``, each with its value in
        hash ``where``."""
        try:
            found = await self.client.zrange(parked, 0, count - 1)
            members = [_text(m) for m in cast("list[str | bytes]", found)]
            places = await self.client.hmget(where, members) if members else []
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc
        return [(m, _text(p or b"")) for m, p in zip(members, places, strict=True)]

    # -- throttle --------------------------------------------------------------------------

    async def take_tokens(
        self, shard: str, want: int, rate: float, burst: float, recovery: float
    ) -> tuple[int, float, float]:
        """Up to ``want`` Job creations for ``shard`` now; if none, seconds to wait; and the
        share of ``rate`` in force after 429s."""
        granted, wait_ms, factor = await self.run(
            "throttle", [self.keys.throttle(shard)], [want, rate, burst, recovery]
        )
        return int(granted), int(wait_ms) / 1000, float(_text(factor))

    async def back_off(self, shard: str, retry_after: float, floor: float) -> float:
        """The shard said 429: pause it for ``retry_after`` s and halve its rate (not below
        ``floor`` of the configured rate); return the new rate factor."""
        factor = await self.run(
            "backoff", [self.keys.throttle(shard)], [int(retry_after * 1000), floor]
        )
        return float(_text(factor))

    # -- leases ----------------------------------------------------------------------------

    async def hold_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``ttl`` s; whether ``holder`` has it now."""
        current = await self.run("lease", [self.keys.lease(name)], [holder, int(ttl * 1000)])
        return _text(current) == holder

    async def release_lease(self, name: str, holder: str) -> None:
        await self.run("release", [self.keys.lease(name)], [holder])


class RunQueue:
    """The virtual queue of one scheduler pod."""

    def __init__(self, backend: QueueBackend, pod: str) -> None:
        self.backend = backend
        self.pod = pod
        self._keys = backend.keys

    async def heartbeat(self, ttl: float) -> None:
        """Register this pod as alive for ``ttl`` seconds."""
        await self.backend.run("heartbeat", [self._keys.pods], [self.pod, int(ttl * 1000)])

    async def leave(self) -> None:
        """Count this pod as dead from now on (it stops): no queue is handed to it, and the
        maintainer may adopt its own at once."""
        try:
            await self.backend.client.zadd(self._keys.pods, {self.pod: 0}, xx=True)
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc

    async def push(self, runs: Sequence[QueuedRun]) -> None:
        """Put ``runs`` on this pod's queues (one script per shard, pipelined)."""
        # Runs of one shard that share a kind and value go as one group, their members in
        # one argument: a bulk submit's hundred runs are three arguments, not three hundred
        # (each one encoded by redis-py, and parsed by Redis).
        groups: dict[str, dict[tuple[str, Any], list[str]]] = defaultdict(dict)
        for run in runs:
            share = run.share
            if share is None:
                group = ("p", run.priority)
            elif share is AHEAD or not share.flow:
                group = ("a", 0)
            else:
                group = ("f:" + share.flow, share.step)
            groups[run.shard].setdefault(group, []).append(run.member)
        by_shard = {
            shard: [arg for (kind, value), members in found.items()
                    for arg in (kind, value, " ".join(members))]
            for shard, found in groups.items()
        }  # fmt: skip
        if not by_shard:
            return
        if len(by_shard) == 1 or isinstance(self.backend.client, RedisCluster):
            # A cluster pipeline sends EVALSHA without loading a script the node lacks (a
            # promoted replica, say), so there each shard's push is a call of its own.
            for shard, args in by_shard.items():
                await self.backend.run("push", self._push_keys(shard), [shard, self.pod, *args])
            return
        script = self.backend._scripts["push"]
        try:
            async with self.backend.client.pipeline(transaction=False) as pipe:
                batch: Any = pipe  # a pipeline queues script calls like a client
                for shard, args in by_shard.items():
                    args = [shard, self.pod, *args]
                    await script(keys=self._push_keys(shard), args=args, client=batch)
                await pipe.execute()
        except _UNAVAILABLE as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise QueueUnavailable(f"redis refused push: {exc}") from exc

    def _push_keys(self, shard: str) -> list[str]:
        k = self._keys
        return [
            k.ready(self.pod, shard), k.shards(self.pod), k.inflight(self.pod),
            k.shares(shard), k.clocks(shard),
        ]  # fmt: skip

    async def pop(
        self, shard: str, count: int, settle: Sequence[QueuedRun] = ()
    ) -> list[QueuedRun]:
        """Take up to ``count`` runs for ``shard``, oldest first, into the in-flight set;
        first :meth:`settle` ``settle`` (runs of ``shard``), in the same round trip."""
        k = self._keys
        keys = [
            k.ready(self.pod, shard), k.delayed(self.pod, shard), k.inflight(self.pod),
            k.clocks(shard),
        ]  # fmt: skip
        args: list[Any] = [count, shard, self.pod]
        if settle:
            args.append(" ".join([run.member for run in settle]))  # one argument to encode
        taken = await self.backend.run("pop", keys, args)
        flat = (taken.decode() if isinstance(taken, bytes) else taken).split()
        return [QueuedRun.parse(shard, flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def settle(self, runs: Sequence[QueuedRun]) -> None:
        """Forget in-flight ``runs`` (delayed ones included): their outcome is recorded in
        their checkpoints."""
        if not runs:
            return
        shards = sorted({r.shard for r in runs})
        keys = [self._keys.inflight(self.pod), *(self._keys.delayed(self.pod, s) for s in shards)]
        members = " ".join([f"{r.shard}/{r.member}" for r in runs])  # one argument to encode
        await self.backend.run("settle", keys, [len(shards), *shards, members])

    async def delay(self, shard: str, runs: Sequence[QueuedRun], seconds: float) -> None:
        """Give in-flight ``runs`` back to the queue after ``seconds``, at their priority.

        Runs no longer in flight here (settled, or adopted by another pod) are left alone.
        """
        if runs:
            keys = [self._keys.delayed(self.pod, shard), self._keys.inflight(self.pod)]
            delay_ms = max(0, int(seconds * 1000))
            await self.backend.run("delay", keys, [delay_ms, shard, *(r.member for r in runs)])

    async def recover(self) -> int:
        """Queue again, at their priorities, the runs this pod holds in flight; return how
        many moved.

        Only for a process that has popped nothing yet: what is in flight then was taken by
        a previous process of this pod that stopped before settling it, and nothing else
        gives it back while the pod's heartbeat stays current. Runs waiting out a retry
        delay stay as they are: the pop after their delay takes them back.
        """
        k = self._keys
        for _ in range(5):
            # The script must name every key it touches, so the shards are read first; it
            # refuses (-1) if a run in flight is for a shard this read did not see.
            try:
                found = await self.backend.client.zrange(k.inflight(self.pod), 0, -1)
            except (*_UNAVAILABLE, RedisError) as exc:
                raise QueueUnavailable(f"redis unavailable: {exc}") from exc
            held = [_text(m) for m in cast("list[str | bytes]", found)]  # without scores
            shards = sorted({h.partition("/")[0] for h in held if "/" in h})
            if not shards:
                return 0
            keys = [k.shards(self.pod), k.inflight(self.pod)]
            for shard in shards:
                keys += [k.ready(self.pod, shard), k.delayed(self.pod, shard)]
            moved = int(await self.backend.run("recover", keys, shards))
            if moved >= 0:
                return moved
        raise QueueUnavailable(f"the runs in flight of pod {self.pod} kept changing")

    async def shards(self) -> set[str]:
        """The shards this pod has queues for (including empty ones)."""
        try:
            members = await self.backend.client.smembers(self._keys.shards(self.pod))
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc
        return {_text(m) for m in members}

    async def depth(self, shard: str) -> int:
        """Runs waiting on this pod's queue for ``shard``."""
        try:
            return int(await self.backend.client.zcard(self._keys.ready(self.pod, shard)))
        except (*_UNAVAILABLE, RedisError) as exc:
            raise QueueUnavailable(f"redis unavailable: {exc}") from exc

    async def position(
        self, shard: str, key: RunKey, pods: Sequence[str]
    ) -> tuple[str, int] | None:
        """(pod, 0-based rank) of a queued run among ``pods``' queues, or ``None``."""
        keys = [self._keys.ready(pod, shard) for pod in pods]
        found = await self.backend.run("position", keys, [f"{key.algorithm}/{key.id}", *pods])
        return (_text(found[0]), int(found[1])) if found else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
