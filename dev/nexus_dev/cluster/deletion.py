"""Deletion and the garbage collector: propagation policies and ``ownerReferences``.

A ``DELETE`` in Kubernetes is a small protocol, and Nexus's cancellation
(``cancellationPolicy`` Background/Foreground/Orphan, DESIGN §2) relies on it:

* ``Background`` — the owner is removed at once (``200`` with a success ``Status``); its
  dependents (pods, and Jobs naming it in ``ownerReferences``) are deleted afterwards.
* ``Foreground`` — the owner gets ``deletionTimestamp`` and the ``foregroundDeletion``
  finalizer (``200`` with the object), its dependents are deleted (in the foreground too),
  and the owner disappears only when the last of them is gone.
* ``Orphan`` — the owner gets the ``orphan`` finalizer, the ``ownerReferences`` to it are
  removed from its dependents, which keep running, then the owner disappears.

When no policy is given, a ``batch/v1`` Job is **orphaned** — the API server's default
for Jobs, kept for compatibility, which surprises everyone once — and everything else is
deleted in the background. Pods are never removed at once while their container runs:
the kubelet stops it within the grace period and then removes the pod.

The collector keeps an index of dependents by owner uid, maintained from store changes,
so that deleting one Job among a hundred thousand costs its own dependents, not a scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nexus_dev.cluster.statuses import ApiError, now_iso, status_body
from nexus_dev.cluster.store import Change, Obj, ObjectStore

POLICIES = ("Background", "Foreground", "Orphan")
OWNED_KINDS = ("pods", "jobs")

Ref = tuple[str, str, str]  # (plural, namespace, name)
PodTerminator = Callable[[Obj, float | None], Obj]


def choose_policy(plural: str, query: Any, options: dict[str, Any]) -> str:
    """The propagation policy of a request, from its query or its ``DeleteOptions`` body."""
    policy = query.get("propagationPolicy") or options.get("propagationPolicy")
    orphan = query.get("orphanDependents")
    if orphan is None:
        orphan = options.get("orphanDependents")
    if policy is not None:
        if policy not in POLICIES:
            supported = ", ".join(f'"{p}"' for p in POLICIES)
            raise ApiError.invalid(
                "",
                "DeleteOptions",
                "",
                [
                    {
                        "reason": "FieldValueNotSupported",
                        "field": "propagationPolicy",
                        "message": f'Unsupported value: "{policy}": supported values: {supported}',
                    }
                ],
            )
        return str(policy)
    if orphan is not None:
        return "Orphan" if str(orphan).lower() == "true" else "Background"
    return "Orphan" if plural == "jobs" else "Background"


class GarbageCollector:
    """Carries out deletions of one shard and keeps its owner → dependents index."""

    def __init__(self, store: ObjectStore, terminate_pod: PodTerminator) -> None:
        self.store = store
        self.terminate_pod = terminate_pod
        self.dependents: dict[str, set[Ref]] = {}
        self._waiting: dict[str, Ref] = {}  # owner uid -> owner, in foreground deletion
        for plural in OWNED_KINDS:
            store.subscribe(plural, self._indexer(plural))

    def _indexer(self, plural: str) -> Callable[[Change], None]:
        def index(change: Change) -> None:
            metadata: dict[str, Any] = change.obj["metadata"]  # typed: compiled, no method calls
            ref = (plural, metadata["namespace"], metadata["name"])
            if change.type == "MODIFIED" and change.old is not None:
                old_metadata: dict[str, Any] = change.old["metadata"]
                if old_metadata.get("ownerReferences") is metadata.get("ownerReferences"):
                    return
                self._unindex(ref, old_metadata)
            if change.type == "DELETED":
                self._unindex(ref, metadata)
            else:
                for owner in metadata.get("ownerReferences") or ():
                    self.dependents.setdefault(owner["uid"], set()).add(ref)

        return index

    def _unindex(self, ref: Ref, metadata: dict[str, Any]) -> None:
        for owner in metadata.get("ownerReferences") or ():
            uid = owner["uid"]
            refs = self.dependents.get(uid)
            if refs is None:
                continue
            refs.discard(ref)
            if not refs:
                del self.dependents[uid]
                if uid in self._waiting:
                    asyncio.get_running_loop().call_soon(self._finish_foreground, uid)

    def delete(
        self,
        plural: str,
        namespace: str,
        name: str,
        policy: str,
        grace: float | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Delete an object as the API server would; the answer's status code and body."""
        obj = self.store.require(plural, namespace, name)
        metadata = obj["metadata"]
        if preconditions:
            for key in ("uid", "resourceVersion"):
                wanted = preconditions.get(key)
                if wanted is not None and wanted != metadata.get(key):
                    raise ApiError.conflict(
                        self.store.collection(plural).resource.group,
                        plural,
                        name,
                        f"Precondition failed: {key} in precondition: {wanted}, "
                        f"{key} in object meta: {metadata.get(key)}",
                    )
        if plural == "pods":
            return 200, self.terminate_pod(obj, grace)
        if metadata.get("deletionTimestamp"):
            return 200, obj  # already being deleted; deleting again changes nothing
        uid = metadata.get("uid", "")
        if policy == "Background":
            gone = self.store.delete(plural, namespace, name)
            assert gone is not None
            asyncio.get_running_loop().call_soon(self._delete_dependents, uid, "Background")
            resource = self.store.collection(plural).resource
            details = {"name": name, "kind": plural, "uid": uid}
            if resource.group:
                details["group"] = resource.group
            return 200, status_body(code=200, reason="", message="", details=details, success=True)
        finalizer = "foregroundDeletion" if policy == "Foreground" else "orphan"
        marked = self.store.replace(
            plural,
            {
                **obj,
                "metadata": {
                    **metadata,
                    "deletionTimestamp": now_iso(),
                    "deletionGracePeriodSeconds": 0,
                    "finalizers": [*(metadata.get("finalizers") or ()), finalizer],
                },
            },
        )
        loop = asyncio.get_running_loop()
        if policy == "Foreground":
            self._waiting[uid] = (plural, namespace, name)
            if uid in self.dependents:
                loop.call_soon(self._delete_dependents, uid, "Foreground")
            else:
                loop.call_soon(self._finish_foreground, uid)
        else:
            loop.call_soon(self._orphan, uid, (plural, namespace, name))
        return 200, marked

    def _delete_dependents(self, owner_uid: str, policy: str) -> None:
        for plural, namespace, name in list(self.dependents.get(owner_uid, ())):
            if self.store.get(plural, namespace, name) is not None:
                self.delete(plural, namespace, name, policy)

    def _finish_foreground(self, owner_uid: str) -> None:
        if owner_uid in self.dependents:
            return  # a dependent is still there
        ref = self._waiting.pop(owner_uid, None)
        if ref is not None:
            self.store.delete(*ref)

    def _orphan(self, owner_uid: str, owner: Ref) -> None:
        for plural, namespace, name in list(self.dependents.get(owner_uid, ())):
            dependent = self.store.get(plural, namespace, name)
            if dependent is None:
                continue
            metadata = dependent["metadata"]
            kept = [r for r in metadata.get("ownerReferences") or () if r["uid"] != owner_uid]
            new_metadata = {**metadata, "ownerReferences": kept}
            if not kept:
                del new_metadata["ownerReferences"]
            self.store.replace(plural, {**dependent, "metadata": new_metadata})
        self.store.delete(*owner)
