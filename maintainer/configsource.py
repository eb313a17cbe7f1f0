"""The configuration of the controller cluster, as every shard should hold it.

:class:`ConfigurationSource` follows the templates, workgroups, Secrets and ConfigMaps of
the controller namespace with :func:`nexus.core.listwatch.follow` (list, then watch from
the list's resourceVersion, resume, relist on 410, back off while the controller cluster
is unreachable) and keeps the :class:`~maintainer.copies.Copy` each shard should hold:
every template and workgroup, and each Secret and ConfigMap some template references.

Guarantees:

* **Nothing is decided on a partial view.** A kind is *covered* only once it has been
  listed whole; until then its copies are neither written nor deleted on any shard (a
  maintainer that starts while the controller cluster is down deletes nothing). Secrets
  and ConfigMaps are covered when they and the templates are.
* **Listeners hear of every change of what shards should hold**, as the keys whose copy
  changed (created, changed or no longer wanted) — a template that stops referencing a
  Secret changes that Secret's key — and a full reconcile is asked for when a kind
  becomes covered. Changes that do not alter a copy (a status update, a label on a
  template) are not passed on, so writing status could never start a loop.
* A source object that is itself one of this deployment's copies (it carries the mark)
  is not a source: copying it would copy a copy.
* A Secret or ConfigMap a template references but the controller namespace lacks is
  logged once and counted (``nexus_configuration_missing_sources``); it is copied as
  soon as it appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from maintainer.copies import (
    CONFIG_MAP,
    KINDS,
    SECRET,
    TEMPLATE,
    Copy,
    Key,
    Kind,
    Mark,
    copy_of,
    references,
)
from nexus.core.listwatch import MAX_BACKOFF, follow
from nexus.core.shards import WATCH_SECONDS, ShardClient, WatchEvent

log = logging.getLogger(__name__)

SOURCE_LISTED = Gauge(
    "nexus_configuration_source_listed",
    "1 once the controller cluster's objects of a kind have been listed (copies of a kind "
    "are only written or deleted when it is 1).",
    ["kind"],
)

MISSING = Gauge(
    "nexus_configuration_missing_sources",
    "Secrets and ConfigMaps templates reference that the controller namespace lacks.",
    ["kind"],
)

Listener = Callable[[set[Key], bool], None]
"""Told the keys whose copy changed, and whether a full reconcile is due."""


class ConfigurationSource:
    """What every shard should hold, kept current from the controller cluster."""

    def __init__(
        self,
        client: ShardClient,
        namespace: str,
        mark: Mark,
        *,
        watch_timeout: int = WATCH_SECONDS,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.mark = mark
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.objects: dict[Kind, dict[str, Copy]] = {kind: {} for kind in KINDS}
        self.referenced: dict[str, tuple[set[str], set[str]]] = {}
        """Template name → the Secrets and ConfigMaps it references."""
        self.listed: set[Kind] = set()
        self.missing: dict[Kind, set[str]] = {SECRET: set(), CONFIG_MAP: set()}
        """Referenced Secrets and ConfigMaps that the controller namespace lacks."""
        self.listeners: list[Listener] = []
        self._wanted: dict[Key, Copy] = {}
        for kind in KINDS:
            SOURCE_LISTED.labels(kind.name).set(0)
        for kind in (SECRET, CONFIG_MAP):
            MISSING.labels(kind.name).set(0)

    def covers(self, kind: Kind) -> bool:
        """Whether the copies of ``kind`` are known, so that they may be written or deleted."""
        if kind in (SECRET, CONFIG_MAP):
            return kind in self.listed and TEMPLATE in self.listed
        return kind in self.listed

    def wanted(self) -> dict[Key, Copy]:
        """Every copy each shard should hold (of the covered kinds); not to be changed."""
        return self._wanted

    async def run(self, stopping: asyncio.Event) -> None:
        """Follow the four kinds until ``stopping`` is set."""
        try:
            async with asyncio.TaskGroup() as group:
                for kind in KINDS:
                    group.create_task(
                        follow(
                            self.client,
                            kind.resource,
                            namespace=self.namespace,
                            stopping=stopping,
                            on_sync=self._syncer(kind),
                            on_event=self._applier(kind),
                            watch_timeout=self.watch_timeout,
                            max_backoff=self.max_backoff,
                        ),
                        name=f"maintainer:configuration:{kind.name}",
                    )
        finally:  # a maintainer that stopped leading reports nothing stale
            for kind in KINDS:
                with contextlib.suppress(KeyError):
                    SOURCE_LISTED.remove(kind.name)
            for kind in (SECRET, CONFIG_MAP):
                with contextlib.suppress(KeyError):
                    MISSING.remove(kind.name)

    # -- keeping up ------------------------------------------------------------------------

    def _syncer(self, kind: Kind) -> Any:
        async def on_sync(items: list[dict[str, Any]]) -> None:
            fresh: dict[str, Copy] = {}
            for item in items:
                if self._is_source(item):
                    fresh[item["metadata"]["name"]] = copy_of(kind, item)
                    if kind is TEMPLATE:
                        self.referenced[item["metadata"]["name"]] = references(item)
            if kind is TEMPLATE:
                for gone in set(self.referenced) - set(fresh):
                    del self.referenced[gone]
            self.objects[kind] = fresh
            first = kind not in self.listed
            self.listed.add(kind)
            SOURCE_LISTED.labels(kind.name).set(1)
            if first:
                log.info(
                    "listed the %ss of the controller cluster",
                    kind.name,
                    extra={"count": len(fresh), "namespace": self.namespace},
                )
            self._recompute(full=first)

        return on_sync

    def _applier(self, kind: Kind) -> Any:
        async def on_event(event: WatchEvent) -> None:
            name = str((event.object.get("metadata") or {}).get("name") or "")
            if not name:
                return
            if event.type == "DELETED" or not self._is_source(event.object):
                self.objects[kind].pop(name, None)
                if kind is TEMPLATE:
                    self.referenced.pop(name, None)
            else:
                self.objects[kind][name] = copy_of(kind, event.object)
                if kind is TEMPLATE:
                    self.referenced[name] = references(event.object)
            self._recompute(full=False)

        return on_event

    def _is_source(self, obj: dict[str, Any]) -> bool:
        return bool((obj.get("metadata") or {}).get("name")) and not self.mark.owns(obj)

    def _recompute(self, *, full: bool) -> None:
        """The wanted copies afresh; listeners hear which changed."""
        wanted: dict[Key, Copy] = {}
        referenced: dict[Kind, set[str]] = {SECRET: set(), CONFIG_MAP: set()}
        for secret_names, config_map_names in self.referenced.values():
            referenced[SECRET] |= secret_names
            referenced[CONFIG_MAP] |= config_map_names
        for kind in KINDS:
            if not self.covers(kind):
                continue
            names = referenced.get(kind)
            for name, copy in self.objects[kind].items():
                if names is None or name in names:
                    wanted[copy.key] = copy
            if names is not None:
                self._report_missing(kind, names - self.objects[kind].keys())
        before = self._wanted
        changed = {
            key
            for key in before.keys() | wanted.keys()
            if (old := before.get(key)) is None
            or (new := wanted.get(key)) is None
            or old.fingerprint != new.fingerprint
        }
        self._wanted = wanted
        if changed or full:
            for listener in self.listeners:
                listener(changed, full)

    def _report_missing(self, kind: Kind, missing: set[str]) -> None:
        """Say (once each) which referenced Secrets or ConfigMaps the controller lacks:
        no shard gets a copy, and the Jobs of the templates that name them cannot start
        there unless the reference is optional."""
        known = self.missing[kind]
        for name in sorted(missing - known):
            side = 1 if kind is CONFIG_MAP else 0
            users = sorted(t for t, refs in self.referenced.items() if name in refs[side])
            log.warning(
                "templates reference a %s the controller namespace lacks; no shard gets a copy",
                kind.name,
                extra={"object": name, "templates": users, "namespace": self.namespace},
            )
        self.missing[kind] = missing
        MISSING.labels(kind.name).set(len(missing))
