"""The configuration controller: templates, workgroups and what they reference, on every shard.

Templates and workgroups live in the controller cluster (DESIGN §5, §6), but algorithm
Jobs run on the shards, and the Secrets and ConfigMaps a template hands its container
(``envFrom``) must be in the shard's runtime namespace. The leading maintainer keeps a
copy of each there: :class:`Replicator` runs the :class:`ConfigurationSource` (a watch of
the controller namespace) and one :class:`ShardReplica` per shard.

A replica brings its shard in step two ways:

* **at once, for what changed**: a source change names the keys whose copy changed; the
  replica reads each from the shard (GET) and creates, updates or deletes it;
* **in full, every ``replication.interval``** and whenever it may have missed something
  (at start, after the shard was unreachable, when a kind is first listed): it lists this
  deployment's copies on the shard (by their labels), compares them with what the source
  wants, and writes the difference — so a shard that was down gets every create, update
  *and* delete it missed, and a copy edited or deleted by hand on a shard is restored.

Guarantees, and what the earlier system's controller did not do:

* **Only what it made is changed or deleted.** An object without this deployment's mark
  (:mod:`maintainer.copies`) is never written, whatever its name: it is a *conflict*,
  logged once, counted in ``nexus_configuration_copies{state="conflict"}``, and left
  alone until it goes. Updates are conditional on the ``resourceVersion`` read and
  deletions on the uid, so an object that changed hands in between is not touched either.
* **Deletions reach every shard.** A source deleted (or a Secret no longer referenced) is
  deleted on each shard, retried until it is done, including on shards that were down at
  the time (the earlier controller deleted template copies one shard after another,
  stopped at the first failure and never retried, and never deleted workgroup copies).
* **A shard that is down stops nobody.** Each shard has its own loop: the others keep
  getting changes, and the maintainer starts, leads and serves with any number of shards
  unreachable (the earlier controller waited for every shard's cache before starting, so
  one unreachable shard stopped it for good). A down shard is retried with capped
  back-off and caught up in full when it answers.
* **Nothing is decided on a partial view**: no copy of a kind is written or deleted
  before that kind of the controller cluster has been listed whole.
* **Only the leader writes**, and every write is idempotent and conditional, so the
  brief overlap of two maintainers that both believe they lead converges on the same
  copies without fighting (a create that finds the copy made by the other is satisfied).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from maintainer.configsource import ConfigurationSource
from maintainer.copies import Key, Mark
from maintainer.settings import ReplicationSection
from maintainer.shardcopies import ShardReplica
from nexus.core.shards import WATCH_SECONDS, ShardClient


class Replicator:
    """The source and a replica per shard, for one term of leadership."""

    def __init__(
        self,
        controller: ShardClient,
        controller_namespace: str,
        shards: dict[str, ShardClient],
        section: ReplicationSection,
        leading: Callable[[], bool],
        *,
        watch_timeout: int = WATCH_SECONDS,
    ) -> None:
        self.mark = Mark(section.owner)
        self.source = ConfigurationSource(
            controller,
            controller_namespace,
            self.mark,
            watch_timeout=watch_timeout,
            max_backoff=section.max_backoff,
        )
        self.replicas = {
            name: ShardReplica(client, self.source, self.mark, section, leading)
            for name, client in shards.items()
        }
        self.source.listeners.append(self._changed)

    def _changed(self, keys: set[Key], full: bool) -> None:
        for replica in self.replicas.values():
            replica.touch(keys, full)

    async def run(self, stopping: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.source.run(stopping), name="maintainer:configuration")
            for name, replica in self.replicas.items():
                group.create_task(replica.run(stopping), name=f"maintainer:copies:{name}")
