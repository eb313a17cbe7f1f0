"""The scheduler's view of the algorithm templates, workgroups and schedules.

Templates and workgroups live as custom resources in the controller cluster; the
:class:`Catalog` holds the current ones, parsed (:mod:`nexus.core.templates`), for the
submitter (a run's template and workgroup) and the dispatcher (a workgroup's placement).
It is listed once before the scheduler reports ready (so that it never answers 404 for an
algorithm that exists) and then kept current by watches. A resource that cannot be parsed
is logged and left out, never allowed to stop the watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from nexus.core.listwatch import follow
from nexus.core.shards import SCHEDULES, TEMPLATES, WORKGROUPS, Resource, ShardClient, WatchEvent
from nexus.core.templates import (
    InvalidConfiguration,
    Template,
    Workgroup,
    parse_template,
    parse_workgroup,
)
from nexus.scheduler.schedulespec import Schedule, parse_schedule

log = logging.getLogger(__name__)

T = TypeVar("T", Template, Workgroup, Schedule)


class Catalog:
    """The templates and workgroups currently defined, by name."""

    def __init__(self) -> None:
        self.templates: dict[str, Template] = {}
        self.workgroups: dict[str, Workgroup] = {}
        self.schedules: dict[str, Schedule] = {}

    def template(self, name: str) -> Template | None:
        return self.templates.get(name)

    def workgroup(self, name: str) -> Workgroup | None:
        return self.workgroups.get(name)


class CatalogWatcher:
    """Fills a :class:`Catalog` from the controller cluster and keeps it current."""

    def __init__(self, client: ShardClient, namespace: str, catalog: Catalog) -> None:
        self.client = client
        self.namespace = namespace
        self.catalog = catalog

    async def load(self) -> None:
        """List templates and workgroups once (start-up)."""
        for resource, target, parse in self._kinds():
            listing = await self.client.list_all(resource, namespace=self.namespace)
            _replace(target, listing.items, parse)
        log.info(
            "catalog loaded",
            extra={
                "templates": len(self.catalog.templates),
                "workgroups": len(self.catalog.workgroups),
            },
        )

    def _kinds(self) -> list[tuple[Resource, dict[str, Any], Callable[[dict[str, Any]], Any]]]:
        return [
            (WORKGROUPS, self.catalog.workgroups, parse_workgroup),
            (TEMPLATES, self.catalog.templates, parse_template),
            (SCHEDULES, self.catalog.schedules, parse_schedule),
        ]

    async def run(self, stopping: asyncio.Event) -> None:
        """Watch both kinds until ``stopping`` is set."""
        async with asyncio.TaskGroup() as group:
            for resource, target, parse in self._kinds():
                group.create_task(
                    follow(
                        self.client,
                        resource,
                        namespace=self.namespace,
                        stopping=stopping,
                        on_sync=_syncer(target, parse),
                        on_event=_applier(target, parse),
                    )
                )


def _parsed(obj: dict[str, Any], parse: Callable[[dict[str, Any]], T]) -> T | None:
    try:
        return parse(obj)
    except (InvalidConfiguration, KeyError, TypeError, ValueError) as exc:
        name = (obj.get("metadata") or {}).get("name")
        log.warning(
            "ignoring an invalid %s: %s", obj.get("kind", "resource"), exc, extra={"resource": name}
        )
        return None


def _replace(
    target: dict[str, Any], items: list[dict[str, Any]], parse: Callable[[dict[str, Any]], Any]
) -> None:
    fresh = {}
    for obj in items:
        parsed = _parsed(obj, parse)
        if parsed is not None:
            fresh[parsed.name] = parsed
    target.clear()
    target.update(fresh)


def _syncer(target: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> Any:
    async def on_sync(items: list[dict[str, Any]]) -> None:
        _replace(target, items, parse)

    return on_sync


def _applier(target: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> Any:
    async def on_event(event: WatchEvent) -> None:
        name = str((event.object.get("metadata") or {}).get("name", ""))
        if event.type == "DELETED":
            target.pop(name, None)
            return
        parsed = _parsed(event.object, parse)
        if parsed is not None:
            target[parsed.name] = parsed
        else:
            target.pop(name, None)

    return on_event
