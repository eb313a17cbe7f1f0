"""Cancelling a run (``POST …/cancel/{algorithm}/requests/{id}``): its checkpoint, then its Job.

Guarantees:

* **A finished run stays as it was.** The move to ``CANCELLED`` is a compare-and-set in the
  store: a run that finished first, even a moment before, is left alone and the caller
  hears what it is (:class:`TransitionRejected`, answered 409).
* **Cancelled before its Job goes.** The checkpoint is written first, so a dispatcher that
  creates the Job in between sees the run cancelled and deletes the Job itself.
* **The Job is deleted when there can be one** (the run was queued or running), with the
  caller's deletion policy. A shard that cannot be reached does not undo the
  cancellation: the Job then ends with its deadline and TTL.
* **Children go with their parent.** Cancelling a run cancels every unfinished run below
  it (children, theirs, …; queued or running, on any shard, whoever submitted them) as
  ``CANCELLED``, naming the parent as the reason, and deletes their Jobs. Their Jobs are
  not owned by the parent's (:mod:`nexus.scheduler.jobs`), so Kubernetes never deletes a
  child's Job with its parent's before the child finished. Cancelling a cancelled parent
  again reaches children a failure left running (and answers 409 as before). A child being
  stored while its parent is cancelled is cancelled by its submitter
  (:meth:`~nexus.scheduler.submission.Submitter.cancel_orphans`).
* **Only what the caller may see** (:mod:`nexus.core.visibility`): another caller's run is
  not found (404), exactly as a run that does not exist.
* **Bad input names its field** (400), before anything is read or written.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from nexus.core.checkpoints import CheckpointStore
from nexus.core.compatibility import v12_status
from nexus.core.errors import RunNotFound, TransitionRejected
from nexus.core.httpapi import bad_request
from nexus.core.labels import copy_names
from nexus.core.retrying import job_name
from nexus.core.runs import TERMINAL, Checkpoint, Stage, Transition
from nexus.core.shards import (
    CALL_ERRORS,
    DEFAULT_PROPAGATION,
    PROPAGATIONS,
    Propagation,
    ShardClient,
)
from nexus.core.visibility import Viewer

log = logging.getLogger(__name__)

MAX_DELETIONS = 32
"""Job deletions in flight at once when a parent's cancellation reaches many children."""

MAX_TEXT = 1000
"""The longest ``reason`` or ``initiator`` a cancellation may give."""


@dataclass(frozen=True, slots=True)
class Cancellation:
    """Why a run is cancelled, by whom, and how its Job's pods are deleted."""

    reason: str
    initiator: str
    policy: Propagation

    @classmethod
    def from_body(cls, body: dict[str, Any], caller: str) -> Cancellation:
        """The cancellation a request body asks for; 400 naming the field otherwise. An
        absent (or null, or empty) field takes its default; any other value is checked."""
        reason = _given(body, "reason", "cancelled on request")
        initiator = _given(body, "initiator", caller)
        policy = _given(body, "cancellationPolicy", DEFAULT_PROPAGATION)
        for name, value in (("reason", reason), ("initiator", initiator)):
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise bad_request(f"{name}: expected a string of at most {MAX_TEXT} characters")
            if "\x00" in value:  # PostgreSQL text cannot hold it
                raise bad_request(f"{name}: must not contain NUL characters")
        if policy not in PROPAGATIONS:
            raise bad_request(f"cancellationPolicy: expected one of {', '.join(PROPAGATIONS)}")
        return cls(reason, initiator, policy)


class Canceller:
    """Cancels runs in the checkpoint store, and deletes their Jobs on their shards."""

    def __init__(self, store: CheckpointStore, shards: dict[str, ShardClient]) -> None:
        self.store = store
        self.shards = shards

    async def cancel(
        self, algorithm: str, run_id: uuid.UUID, cancellation: Cancellation, viewer: Viewer
    ) -> None:
        """Cancel the run; :class:`RunNotFound` if there is none ``viewer`` may see,
        :class:`TransitionRejected` if it has finished (then it is left as it is)."""
        run = await self._checkpoint(algorithm, run_id, viewer)
        if run.stage in TERMINAL:
            if run.stage == Stage.CANCELLED:  # again: reach the children a crash left
                await self._cancel_descendants(run, cancellation)
            raise TransitionRejected(f"run {run_id} is already {v12_status(run.stage)}")
        change = Transition(
            algorithm,
            run_id,
            Stage.CANCELLED,
            cause="cancelled",
            details=f"{cancellation.reason} (by {cancellation.initiator})",
        )
        if not await self.store.transition(change):
            current = await self._checkpoint(algorithm, run_id, viewer)
            raise TransitionRejected(f"run {run_id} is already {v12_status(current.stage)}")
        if run.stage in (Stage.BUFFERED, Stage.RUNNING):
            await self._delete_job(run, cancellation.policy)
        await self._cancel_descendants(run, cancellation)

    async def _cancel_descendants(self, parent: Checkpoint, cancellation: Cancellation) -> None:
        """Cancel every unfinished run below ``parent`` — queued, running, on any shard,
        whoever submitted it — naming the parent as the reason, and delete their Jobs."""
        below = await self.store.unfinished_descendants(parent.algorithm, parent.id)
        if not below:
            return
        why = (
            f"parent run {parent.id} of algorithm {parent.algorithm!r} was cancelled:"
            f" {cancellation.reason} (by {cancellation.initiator})"
        )
        changes = [
            Transition(run.algorithm, run.id, Stage.CANCELLED, cause="cancelled", details=why)
            for run in below
        ]
        applied = await asyncio.gather(*(self.store.transition(c) for c in changes))
        gone = [run for run, done in zip(below, applied, strict=True) if done]
        log.info("cancelled with their parent", extra={"children": len(gone)})
        deleting = asyncio.Semaphore(MAX_DELETIONS)

        async def delete(run: Checkpoint) -> None:
            async with deleting:
                await self._delete_job(run, cancellation.policy)

        await asyncio.gather(*(delete(run) for run in gone))

    async def _checkpoint(self, algorithm: str, run_id: uuid.UUID, viewer: Viewer) -> Checkpoint:
        run = await self.store.get(algorithm, run_id, viewer)
        if run is None:
            raise RunNotFound(f"no run {run_id} of algorithm {algorithm!r}")
        return run

    async def _delete_job(self, run: Checkpoint, policy: Propagation) -> None:
        shard = run.shard or run.applied_configuration.get("shard")
        client = self.shards.get(shard or "")
        if client is None:
            return
        copies = run.applied_configuration.get("speculativeAttempts", 1)
        try:
            for name in copy_names(job_name(run.id, run.attempt), copies):  # every copy of the run
                deleted = await client.delete_job(name, policy)
                log.info("cancelled", extra={"jobDeleted": deleted, "policy": policy})
        except CALL_ERRORS as exc:
            # The run is cancelled; its Job, if any, expires with its deadline and TTL.
            log.warning("cancelled, but the job could not be deleted: %s", exc)


def _given(body: dict[str, Any], name: str, default: str) -> Any:
    value = body.get(name)
    return default if value is None or value == "" else value
