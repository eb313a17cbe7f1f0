"""A shard's copy of a piece of configuration: what it holds, and whose it is.

The maintainer keeps, on every shard, a copy of each template and workgroup of the
controller cluster and of each Secret and ConfigMap a template references
(:mod:`maintainer.replication`). This module is the pure part of that: which objects a
template references, what the copy of a source object is, whether an object found on a
shard is such a copy, and how to bring one up to date. It reads and builds plain dicts,
as the API server sends them; nothing here does I/O.

**Ownership.** A copy carries two labels, ``app.kubernetes.io/managed-by:
nexus-maintainer`` and ``science.sneaksanddata.com/configuration-owner: <owner>`` (the
``replication.owner`` setting, so two deployments sharing a shard keep apart), and the
annotation ``science.sneaksanddata.com/source-uid`` with the uid of the object it copies.
An object with both labels is *ours*; any other object is *foreign* and is never changed
or deleted, whatever its name — unless it is the *source* itself (the same uid: the
controller cluster is also a shard and its namespace the runtime namespace), which is
left alone and counts as in step.

**What is copied.** Of a template or workgroup its ``spec``; of a Secret its ``type``,
``data`` and ``immutable``; of a ConfigMap its ``data``, ``binaryData`` and
``immutable``. Never the status, nor the source's labels and annotations (a label of a
deployment tool, copied, could make that tool claim or prune the copy on the shard).
Two objects are in step when those fields (with the server's defaults filled in) and the
source uid agree; labels and annotations others add to a copy on a shard are kept.

**References.** A template references the Secrets and ConfigMaps named in its
``runtimeEnvironment.mappedEnvironmentVariables`` (``secretRef``/``configMapRef``: the
algorithm container's ``envFrom``) and, as templates of the earlier system may carry
them, in ``environmentVariables[].valueFrom`` (``secretKeyRef``/``configMapKeyRef``); also
the ConfigMap of its mounted configuration (``runtimeEnvironment.configuration.configMap``)
and the Secrets a request may map (``runtimeEnvironment.allowedSecrets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from nexus.core.shards import CONFIG_MAPS, SECRETS, TEMPLATES, WORKGROUPS, Resource

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "nexus-maintainer"
OWNER_LABEL = "science.sneaksanddata.com/configuration-owner"
SOURCE_UID = "science.sneaksanddata.com/source-uid"
"""Annotation: the uid of the object in the controller cluster a copy was made from."""
_CRD_VERSION = "science.sneaksanddata.com/v1"

Obj = dict[str, Any]
Ownership = Literal["ours", "foreign", "source"]


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of object that is copied: where it lives and which fields make a copy."""

    name: str
    """For logs and metric labels."""
    resource: Resource
    api_version: str
    kind: str
    fields: tuple[str, ...]
    """The top-level fields copied and compared."""


SECRET = Kind("secret", SECRETS, "v1", "Secret", ("type", "data", "immutable"))
CONFIG_MAP = Kind("configmap", CONFIG_MAPS, "v1", "ConfigMap", ("data", "binaryData", "immutable"))
WORKGROUP = Kind("workgroup", WORKGROUPS, _CRD_VERSION, "NexusAlgorithmWorkgroup", ("spec",))
TEMPLATE = Kind("template", TEMPLATES, _CRD_VERSION, "NexusAlgorithmTemplate", ("spec",))
KINDS = (SECRET, CONFIG_MAP, WORKGROUP, TEMPLATE)
"""In the order copies are created and updated on a shard (what a template references
is there before the template); deletions go in the reverse order."""

Key = tuple[Kind, str]
"""A copy's kind and name (the same name as its source's)."""


def _content(kind: Kind, obj: Obj) -> dict[str, Any]:
    """The copied fields of ``obj``, with the server's defaults, so that a copy read back
    compares equal to what was written."""
    if kind is SECRET:
        return {
            "type": obj.get("type") or "Opaque",
            "data": obj.get("data") or {},
            "immutable": bool(obj.get("immutable")),
        }
    if kind is CONFIG_MAP:
        return {
            "data": obj.get("data") or {},
            "binaryData": obj.get("binaryData") or {},
            "immutable": bool(obj.get("immutable")),
        }
    return {"spec": obj.get("spec") or {}}


@dataclass(frozen=True, slots=True)
class Copy:
    """What a shard should hold for one source object."""

    kind: Kind
    name: str
    source_uid: str
    content: dict[str, Any]
    fingerprint: bytes
    """The content and the source uid, serialised: equal fingerprints, equal copies."""

    @property
    def key(self) -> Key:
        return (self.kind, self.name)


def copy_of(kind: Kind, source: Obj) -> Copy:
    """The copy of ``source`` (an object of the controller cluster)."""
    meta = source.get("metadata") or {}
    content = _content(kind, source)
    uid = str(meta.get("uid") or "")
    fingerprint = orjson.dumps([uid, content], option=orjson.OPT_SORT_KEYS)
    return Copy(kind, str(meta["name"]), uid, content, fingerprint)


@dataclass(frozen=True, slots=True)
class Mark:
    """The labels that say "made by this deployment's maintainer"."""

    owner: str

    @property
    def labels(self) -> dict[str, str]:
        return {MANAGED_BY_LABEL: MANAGER, OWNER_LABEL: self.owner}

    @property
    def selector(self) -> str:
        """A label selector for this deployment's copies (the server filters)."""
        return f"{MANAGED_BY_LABEL}={MANAGER},{OWNER_LABEL}={self.owner}"

    def owns(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return labels.get(MANAGED_BY_LABEL) == MANAGER and labels.get(OWNER_LABEL) == self.owner

    def ownership(self, obj: Obj, copy: Copy | None) -> Ownership:
        """Whose ``obj`` (found on a shard under ``copy``'s name) is."""
        uid = (obj.get("metadata") or {}).get("uid")
        if copy is not None and uid and uid == copy.source_uid:
            return "source"
        return "ours" if self.owns(obj) else "foreign"

    def body(self, copy: Copy) -> Obj:
        """The object to create on a shard (its namespace comes from the request path)."""
        return {
            "apiVersion": copy.kind.api_version,
            "kind": copy.kind.kind,
            "metadata": {
                "name": copy.name,
                "labels": dict(self.labels),
                "annotations": {SOURCE_UID: copy.source_uid},
            },
            **_written(copy),
        }

    def update(self, found: Obj, copy: Copy) -> Obj:
        """``found`` (our copy, as read from the shard) brought in step with ``copy``: its
        other labels and annotations kept, its ``resourceVersion`` kept, so that the write
        fails (409) if the object changed since it was read."""
        meta = found.get("metadata") or {}
        labels = {**(meta.get("labels") or {}), **self.labels}
        annotations = {**(meta.get("annotations") or {}), SOURCE_UID: copy.source_uid}
        body = {k: v for k, v in found.items() if k not in copy.kind.fields and k != "status"}
        body["metadata"] = {**meta, "labels": labels, "annotations": annotations}
        body.update(_written(copy))
        return body


def _written(copy: Copy) -> dict[str, Any]:
    """The copied fields as sent: defaults left for the server to fill in."""
    return {k: v for k, v in copy.content.items() if v or k == "spec"}


def in_step(found: Obj, copy: Copy) -> bool:
    """Whether ``found`` (our copy on a shard) holds what ``copy`` says."""
    annotations = (found.get("metadata") or {}).get("annotations") or {}
    return annotations.get(SOURCE_UID) == copy.source_uid and (
        _content(copy.kind, found) == copy.content
    )


def references(template: Obj) -> tuple[set[str], set[str]]:
    """The names of the Secrets and of the ConfigMaps ``template`` references."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    spec = template.get("spec")
    runtime = spec.get("runtimeEnvironment") if isinstance(spec, dict) else None
    if not isinstance(runtime, dict):
        return secrets, config_maps
    for entry in _objects(runtime.get("mappedEnvironmentVariables")):
        _add(secrets, entry.get("secretRef"))
        _add(config_maps, entry.get("configMapRef"))
    for entry in _objects(runtime.get("environmentVariables")):
        source = entry.get("valueFrom")
        if isinstance(source, dict):
            _add(secrets, source.get("secretKeyRef"))
            _add(config_maps, source.get("configMapKeyRef"))
    mounted = runtime.get("configuration")
    if isinstance(mounted, dict):
        _add(config_maps, {"name": mounted.get("configMap")})
    allowed = runtime.get("allowedSecrets")
    for name in allowed if isinstance(allowed, list) else ():
        _add(secrets, {"name": name})
    return secrets, config_maps


def _objects(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _add(names: set[str], reference: Any) -> None:
    if isinstance(reference, dict):
        name = reference.get("name")
        if isinstance(name, str) and name:
            names.add(name)
