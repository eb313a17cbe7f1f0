"""The scheduler's view of the algorithm templates, workgroups and schedules.

Templates and workgroups live as custom resources in the controller cluster; the
:class:`Catalog` holds the current ones, parsed (:mod:`nexus.core.templates`), for the
submitter (a run's template and workgroup) and the dispatcher (a workgroup's placement).
It is listed once before the scheduler reports ready (so that it never answers 404 for an
algorithm that exists) and then kept current by watches. A resource that cannot be parsed
is logged and left out, never allowed to stop the watch.

A template whose runs could not run (:func:`nexus.core.templatechecks.check_template`: an
image reference no runtime pulls, a quantity the API server cannot parse) is kept out too,
but remembered with its problem (:attr:`Catalog.invalid_templates`), so that its runs are
refused at once with a 400 that says why, and the template's ``status`` says so (a
``Ready`` condition, written through the status subresource only when it changes, so that
the pods of a deployment agree without writing it over each other).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from nexus.core.listwatch import follow
from nexus.core.shards import (
    CALL_ERRORS,
    SCHEDULES,
    TEMPLATES,
    WORKGROUPS,
    Resource,
    ShardClient,
    WatchEvent,
)
from nexus.core.templatechecks import Condition, check_template, ready_condition, same_condition
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
        self.invalid_templates: dict[str, str] = {}
        """Templates that exist but cannot run, by name: what is wrong with each."""

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
        self._writes: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """List templates and workgroups once (start-up)."""
        for resource, target, parse in self._kinds():
            listing = await self.client.list_all(resource, namespace=self.namespace)
            invalid = self.catalog.invalid_templates if resource is TEMPLATES else {}
            _replace(target, listing.items, parse, invalid)
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
            (TEMPLATES, self.catalog.templates, self._template),
            (SCHEDULES, self.catalog.schedules, parse_schedule),
        ]

    def _template(self, obj: dict[str, Any]) -> Template:
        """A template that can run; else :class:`InvalidConfiguration`, remembered (and
        written to its status) as the reason its runs are refused."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        try:
            template = parse_template(obj)
            check_template(template)
        except InvalidConfiguration as exc:
            self.catalog.invalid_templates[name] = str(exc)
            self._report(obj, str(exc))
            raise
        self.catalog.invalid_templates.pop(name, None)
        self._report(obj, None)
        return template

    def _report(self, obj: dict[str, Any], problem: str | None) -> None:
        """Write the template's Ready condition, when its status does not say it yet (in
        the background: a watch never waits for a write)."""
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        condition = ready_condition(problem, generation)
        if same_condition(obj.get("status"), condition):
            return
        name = str(obj["metadata"]["name"])
        task = asyncio.get_running_loop().create_task(self._write_status(name, condition))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_status(self, name: str, condition: Condition) -> None:
        try:
            written = await self.client.patch_status(
                TEMPLATES,
                name,
                {"observedGeneration": condition["observedGeneration"], "conditions": [condition]},
                self.namespace,
            )
        except CALL_ERRORS as exc:  # said again at the next change or resync
            log.warning("the template's status could not be written: %s", exc)
            return
        if written.status >= 400:
            log.warning(
                "the template's status was not written: %s %s",
                written.status,
                written.message,
                extra={"resource": name},
            )

    async def run(self, stopping: asyncio.Event) -> None:
        """Watch both kinds until ``stopping`` is set."""
        try:
            async with asyncio.TaskGroup() as group:
                for resource, target, parse in self._kinds():
                    invalid = self.catalog.invalid_templates if resource is TEMPLATES else {}
                    group.create_task(
                        follow(
                            self.client,
                            resource,
                            namespace=self.namespace,
                            stopping=stopping,
                            on_sync=_syncer(target, parse, invalid),
                            on_event=_applier(target, parse, invalid),
                        )
                    )
        finally:
            for task in list(self._writes):
                task.cancel()
            await asyncio.gather(*self._writes, return_exceptions=True)


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
    target: dict[str, Any],
    items: list[dict[str, Any]],
    parse: Callable[[dict[str, Any]], Any],
    invalid: dict[str, str],
) -> None:
    names = {str((obj.get("metadata") or {}).get("name", "")) for obj in items}
    for gone in set(invalid) - names:
        del invalid[gone]
    fresh = {}
    for obj in items:
        parsed = _parsed(obj, parse)
        if parsed is not None:
            fresh[parsed.name] = parsed
    target.clear()
    target.update(fresh)


def _syncer(
    target: dict[str, Any], parse: Callable[[dict[str, Any]], Any], invalid: dict[str, str]
) -> Any:
    async def on_sync(items: list[dict[str, Any]]) -> None:
        _replace(target, items, parse, invalid)

    return on_sync


def _applier(
    target: dict[str, Any], parse: Callable[[dict[str, Any]], Any], invalid: dict[str, str]
) -> Any:
    async def on_event(event: WatchEvent) -> None:
        name = str((event.object.get("metadata") or {}).get("name", ""))
        if event.type == "DELETED":
            target.pop(name, None)
            invalid.pop(name, None)
            return
        parsed = _parsed(event.object, parse)
        if parsed is not None:
            target[parsed.name] = parsed
        else:
            target.pop(name, None)

    return on_event
