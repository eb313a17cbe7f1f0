"""The resources a shard serves and the discovery documents that describe them.

Clients find out what a server offers from ``/api``, ``/apis``, ``/apis/{group}/{version}``
and ``/version``; kubernetes-asyncio does not need them for typed calls, but ``kubectl``-like
tools and dynamic clients do, so they are answered with the same shapes as a real server.
The resource table here is the single list of what exists: ``batch/v1`` Jobs, ``v1`` Pods,
Events, Secrets and ConfigMaps, the two custom resources of DESIGN §5 and NexusSchedules.
Every namespace exists.
"""

from __future__ import annotations

from typing import Any

from nexus_dev.cluster.store import Resource

CRD_GROUP = "science.sneaksanddata.com"
KUBERNETES_VERSION = ("1", "33", "v1.33.0")

JOBS = Resource("batch", "v1", "jobs", "Job")
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
TEMPLATES = Resource(CRD_GROUP, "v1", "nexusalgorithmtemplates", "NexusAlgorithmTemplate")
WORKGROUPS = Resource(CRD_GROUP, "v1", "nexusalgorithmworkgroups", "NexusAlgorithmWorkgroup")
SCHEDULES = Resource(CRD_GROUP, "v1", "nexusschedules", "NexusSchedule")
RESOURCES = (JOBS, PODS, EVENTS, SECRETS, CONFIG_MAPS, TEMPLATES, WORKGROUPS, SCHEDULES)
BY_GROUP_VERSION: dict[tuple[str, str], dict[str, Resource]] = {}
for _resource in RESOURCES:
    BY_GROUP_VERSION.setdefault((_resource.group, _resource.version), {})[_resource.plural] = (
        _resource
    )

_VERBS = {
    "jobs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    "pods": ["delete", "get", "list", "watch"],
    "events": ["create", "delete", "get", "list", "patch", "update", "watch"],
}
_CRD_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
_SUBRESOURCES = {"jobs": [("status", ["get"])], "pods": [("log", ["get"])]}
_SHORT_NAMES = {"pods": ["po"], "events": ["ev"], "configmaps": ["cm"]}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    return BY_GROUP_VERSION.get((group, version), {}).get(plural)


def version_info() -> dict[str, Any]:
    major, minor, git = KUBERNETES_VERSION
    return {
        "major": major,
        "minor": minor,
        "gitVersion": git,
        "gitCommit": "devcluster",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def core_versions(address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def group_list() -> dict[str, Any]:
    groups = []
    for group in sorted({r.group for r in RESOURCES if r.group}):
        versions = sorted({r.version for r in RESOURCES if r.group == group})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    resources = BY_GROUP_VERSION.get((group, version))
    if resources is None:
        return None
    entries: list[dict[str, Any]] = []
    for resource in resources.values():
        entry: dict[str, Any] = {
            "name": resource.plural,
            "singularName": resource.kind.lower(),
            "namespaced": True,
            "kind": resource.kind,
            "verbs": _VERBS.get(resource.plural, _CRD_VERBS),
        }
        if resource.plural in _SHORT_NAMES:
            entry["shortNames"] = _SHORT_NAMES[resource.plural]
        entries.append(entry)
        for sub, verbs in _SUBRESOURCES.get(resource.plural, []):
            entries.append(
                {
                    "name": f"{resource.plural}/{sub}",
                    "singularName": "",
                    "namespaced": True,
                    "kind": resource.kind if sub == "status" else "Pod",
                    "verbs": verbs,
                }
            )
    if not group:
        entries.append(
            {
                "name": "namespaces",
                "singularName": "namespace",
                "namespaced": False,
                "kind": "Namespace",
                "verbs": ["get"],
            }
        )
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "groupVersion": group_version, "resources": entries}


def namespace(name: str, uid: str, created: str) -> dict[str, Any]:
    """A namespace that exists because it was asked about: every namespace does here."""
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": created,
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
