"""Accepting a run: validate → buffer the input → checkpoint ``BUFFERED`` → queue → 202.

Guarantees:

* **Nothing half-written on refusal.** Every check that can refuse a request (input, the
  caller's rights, the template and overrides, the parent, queue depth, store and Redis
  health, and last the caller's quotas) happens before anything is written; a quota taken
  for a run that is then not stored is given back. If the checkpoint cannot be written, the
  client gets a 503 (400 for data the store refuses), and an input already uploaded is
  deleted again when nothing can have been stored; when the write failed after it was
  sent, the run may exist, and its input stays until the store says it does not
  (:mod:`nexus.scheduler.strayinputs`).
* **Durable before acknowledged.** The checkpoint insert is group-committed and awaited, so
  the run is readable (from any pod) the moment the 202 is sent.
* **Queued, or found.** The queue push is pipelined in batches, sent after the 202 (a
  run is answered once durable: its push waits up to ``queue_push_delay`` for company,
  and nobody waits for it). If Redis fails, the run is pushed again as soon as it
  answers; should the pod end first, the maintainer's sweep queues ``BUFFERED`` runs that
  no queue holds.
* **Idempotency.** With an ``Idempotency-Key``, a repeat of the same caller's request
  within 24 hours returns the first run's id and creates nothing; the same key with another
  body (parameters, configuration, tag, parent, algorithm, validity) is refused with 422
  naming what differs; the same key while this pod still accepts the first request is 409
  with ``Retry-After`` (on two pods at once, the store makes them one run, whose id both
  answers carry).
* **A run's credential starts children of its run only, while that run is unfinished**
  (403 otherwise), so that no child escapes its parent's cascading cancel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
from prometheus_client import Counter

from nexus.core.checkpoints import Admission, CheckpointStore
from nexus.core.compatibility import FieldNames, GivenTwice, canonical, v12_status
from nexus.core.config import parse_duration
from nexus.core.errors import (
    CheckpointRejected,
    DependencyError,
    QueueUnavailable,
    StoreNotReached,
)
from nexus.core.grouping import GroupCommitter
from nexus.core.httpapi import ApiError, bad_request, json_type
from nexus.core.meters import LoopCounter
from nexus.core.overrides import ForbiddenConfiguration, apply, normalise
from nexus.core.queues import QueuedRun, RunQueue
from nexus.core.runs import (
    Checkpoint,
    NewRun,
    ParentRef,
    Stage,
    Transition,
    new_run_ids,
    record,
)
from nexus.core.storage import PayloadStore
from nexus.core.templates import (
    DNS_LABEL,
    MAX_PAYLOAD_VALID_FOR,
    MIN_PAYLOAD_VALID_FOR,
    InvalidConfiguration,
    Template,
)
from nexus.core.visibility import SYSTEM
from nexus.core.waiting import Backoff, first_of, sleep_or_stop
from nexus.scheduler.authentication import Principal
from nexus.scheduler.backpressure import BackPressure
from nexus.scheduler.catalog import Catalog
from nexus.scheduler.fairshare import FairShare
from nexus.scheduler.inputs import RecentInputs
from nexus.scheduler.quotas import Quotas, Taken
from nexus.scheduler.settings import SchedulerSection
from nexus.scheduler.strayinputs import StrayInputs
from nexus.scheduler.teamsettings import TeamSettings

log = logging.getLogger(__name__)

ACCEPTED = LoopCounter(
    "nexus_runs_accepted_total", "Runs accepted (202), by algorithm.", ["algorithm"]
)
QUEUE_LATER = Counter(
    "nexus_runs_queued_later_total",
    "Accepted runs whose queue push failed; pushed again as soon as Redis answers.",
)
MAX_LATER = 100_000
"""Accepted runs whose push failed kept in memory to push again; past it, the maintainer's
sweep of runs in no queue queues the others (after its queue grace)."""

IDS_AT_ONCE = 64
"""Request ids made from one read of the random source (16 bytes each)."""
MAX_IDEMPOTENCY_KEY = 256
RUN_FIELDS = FieldNames(
    (
        "algorithmParameters",
        "algorithmName",
        "customConfiguration",
        "parentRequest",
        "tag",
        "payloadValidFor",
    )
)
"""The fields of a run request, as :func:`canonical` finds them in any letter case."""
PARENT_FIELDS = FieldNames(("requestId", "algorithmName"))


@record
class Accepted:
    request_id: uuid.UUID
    created: bool
    planned: NewRun | None = None
    """For a dry run: the run that would have been stored (nothing was)."""
    payload: bytes | None = None
    """For a dry run: the input as it would be stored."""


@functools.lru_cache(maxsize=64)
def _period(seconds: float) -> timedelta:
    """An input's validity as a duration: one of a few values (the templates' defaults and
    what callers ask for), made once each."""
    return timedelta(seconds=seconds)


def _text_field(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name}: expected a string, got {json_type(value)}")
    if not value or len(value) > limit:
        raise bad_request(f"{name}: expected 1 to {limit} characters, got {len(value)}")
    if not value.isprintable():
        raise bad_request(f"{name}: must not contain control characters")
    return value


def _parent(body: dict[str, Any]) -> ParentRef | None:
    raw = body.get("parentRequest")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("parentRequest: expected an object with requestId and algorithmName")
    try:
        raw = canonical(raw, PARENT_FIELDS, "parentRequest")
    except GivenTwice as exc:
        raise bad_request(str(exc)) from None
    if not raw:  # every field null: no parent, as clients that send all fields say it
        return None
    request_id, algorithm = raw.get("requestId"), raw.get("algorithmName")
    try:
        parsed = uuid.UUID(str(request_id)) if isinstance(request_id, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise bad_request("parentRequest.requestId: expected a request id (UUID)")
    if not isinstance(algorithm, str) or not DNS_LABEL.match(algorithm):
        raise bad_request("parentRequest.algorithmName: expected an algorithm name")
    return {"requestId": str(parsed), "algorithmName": algorithm}


def conflict_message(principal: Principal, field: str, run: NewRun, first: Admission) -> str:
    """Why ``run`` is refused: its idempotency key (given as ``field``) names the ``first``
    run, asked for otherwise. That run is named unless ``principal`` may not see it: with a
    run's credential, a first run of another parent is not one of that run's children."""
    named = f"run {first.id} of algorithm {first.algorithm!r}"
    if principal.run is not None and "parentRequest" in first.conflicts:
        named = "another run of this caller"
    return (
        f"{field} {run.idempotency_key!r} already names {named}, asked for with another"
        f" {', '.join(first.conflicts)}; a different request needs a new key"
    )


class Submitter:
    """Accepts runs for this scheduler pod."""

    def __init__(
        self,
        *,
        store: CheckpointStore,
        payloads: PayloadStore,
        queue: RunQueue,
        catalog: Catalog,
        shards: frozenset[str],
        settings: SchedulerSection,
        pressure: BackPressure,
        pushed: Any,
        fair_share: FairShare | None = None,
        quotas: Quotas | None = None,
        recent_inputs: RecentInputs | None = None,
    ) -> None:
        self.store = store
        self.payloads = payloads
        self.catalog = catalog
        self.shards = shards
        self.settings = settings
        self.host = settings.pod_name
        self.pressure = pressure
        self.fair_share = fair_share or FairShare(TeamSettings())
        self.quotas = quotas
        self.recent_inputs = (
            RecentInputs(settings.recent_inputs) if recent_inputs is None else recent_inputs
        )
        """The newest inline inputs, shared with the dispatcher that puts them in Jobs."""
        self.stray_inputs = StrayInputs(store, payloads)
        self.keys_in_flight: set[tuple[str, str]] = set()
        """(caller, Idempotency-Key) of the requests being accepted now."""
        self._pushed = pushed  # called with the shard after a successful push
        self._queue = queue
        self._later: list[QueuedRun] = []
        """Accepted runs whose push failed, pushed again by :meth:`push_later`."""
        self._later_due = asyncio.Event()
        self._ids: list[uuid.UUID] = []
        """Request ids made ahead for single submits (:meth:`_new_id`)."""
        self._pushes: GroupCommitter[QueuedRun, None] = GroupCommitter(
            "queue-push",
            self._push,
            overloaded=lambda: QueueUnavailable("too many queue pushes are waiting"),
            max_batch=500,
            # Nobody waits for a push (the run is answered once durable): the runs of a
            # few checkpoint batches share one round trip, and one wake of this loop.
            max_delay=settings.queue_push_delay,
            max_in_flight=2,
            max_pending=50_000,
        )

    def _new_id(self) -> uuid.UUID:
        """A new request id, from a read of the system's random source made for the next
        :data:`IDS_AT_ONCE` single submits, not one system call each."""
        if not self._ids:
            self._ids = new_run_ids(IDS_AT_ONCE)
        return self._ids.pop()

    async def _push(self, runs: Any) -> list[None]:
        await self._queue.push(runs)
        for shard in {r.shard for r in runs}:
            self._pushed(shard)
        return [None] * len(runs)

    def push_many(self, runs: list[QueuedRun]) -> None:
        """Queue ``runs`` (accepted, durable) with the next pipelined push, without
        waiting for it; those whose push fails are pushed again as soon as Redis answers
        (:meth:`push_later`)."""
        try:
            self._pushes.send(runs, self._push_failed)
        except QueueUnavailable as exc:  # too many pushes waiting
            self._keep_for_later(runs, exc)

    def _push_failed(self, run: QueuedRun, exc: Exception) -> None:
        if isinstance(exc, QueueUnavailable):
            self._keep_for_later([run], exc)
            return
        # Not Redis' refusal: a bug. The run is durable; the maintainer's sweep queues it.
        log.error("a queue push failed: %r", exc, extra={"requestId": str(run.key.id)})

    def _keep_for_later(self, runs: list[QueuedRun], exc: QueueUnavailable) -> None:
        """Accepted runs whose push failed: durable in their checkpoints, pushed again by
        :meth:`push_later` as soon as Redis answers (not after the sweep's queue grace).
        Redis' outage is logged once, by the queue's client; each run at debug level."""
        QUEUE_LATER.inc(len(runs))
        self.pressure.queue_failed()
        room = MAX_LATER - len(self._later)
        self._later.extend(runs[: max(0, room)])
        self._later_due.set()
        log.debug("runs accepted but not queued yet: %s", exc, extra={"runs": len(runs)})

    async def push_later(self, stopping: asyncio.Event) -> None:
        """Push again the runs accepted while Redis failed, with back-off, until
        ``stopping``. A run pushed twice (the sweep found it too) is dispatched once: a
        dispatcher skips a run that is no longer ``BUFFERED``."""
        backoff = Backoff(0.2, 5.0, jitter=0.2)
        while not stopping.is_set():
            if not self._later:
                self._later_due.clear()
                if await first_of(stopping, self._later_due) == 0:
                    return
                continue
            runs, self._later = self._later, []
            try:
                await self._queue.push(runs)
            except QueueUnavailable:
                self._later = runs + self._later
                if await sleep_or_stop(stopping, backoff.failed()):
                    return
                continue
            backoff.succeeded()
            for shard in {r.shard for r in runs}:
                self._pushed(shard)
            log.info(
                "queued runs accepted while the queue was unavailable", extra={"runs": len(runs)}
            )

    async def close(self) -> None:
        await self._pushes.close()
        await self.stray_inputs.close()

    async def submit(
        self,
        principal: Principal,
        algorithm: str,
        body: dict[str, Any],
        idempotency_key: str | None,
        *,
        run_id: uuid.UUID | None = None,
        dry_run: bool = False,
        api_version: str = "v1.2",
    ) -> Accepted:
        """Validate and accept a run request; 4xx/5xx as :class:`ApiError`. ``run_id``
        (a schedule's tick) names the run: when it exists already, nothing is created.
        A ``dry_run`` passes every check a real request does and returns the run it would
        store as ``planned``, taking no quota and writing, uploading and queueing nothing."""
        try:
            body = canonical(body, RUN_FIELDS)
        except GivenTwice as exc:
            raise bad_request(str(exc)) from None
        parameters = body.get("algorithmParameters", ...)
        if parameters is ...:
            raise bad_request("algorithmParameters: required field is missing (or null)")
        if not isinstance(parameters, dict):
            raise bad_request(
                f"algorithmParameters: expected an object, got {json_type(parameters)}"
            )
        named = body.get("algorithmName")
        if named is not None and named != algorithm:
            raise bad_request(f"algorithmName: {named!r} does not match the path's {algorithm!r}")
        tag = _text_field(body, "tag", self.settings.max_tag_length)
        if tag in (".", ".."):  # a path segment no URL can carry: never found by tag
            raise bad_request(f"tag: {tag!r} cannot be looked up; choose another")
        parent = _parent(body)
        if principal.run is not None:  # a running algorithm: children of its own run only
            own: ParentRef = {"algorithmName": principal.run[0], "requestId": principal.run[1]}
            if parent is None:
                parent = own
            elif (parent["algorithmName"], str(uuid.UUID(parent["requestId"]))) != principal.run:
                raise ApiError(
                    403, "forbidden", "parentRequest: a run's credential starts children of"
                    f" run {own['requestId']} of {own['algorithmName']!r} only",
                )  # fmt: skip
        if idempotency_key is not None and (
            not idempotency_key
            or len(idempotency_key) > MAX_IDEMPOTENCY_KEY
            or not idempotency_key.isprintable()
        ):
            raise bad_request(
                f"Idempotency-Key: expected 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            )
        template = self.catalog.template(algorithm)
        if template is None:
            problem = self.catalog.invalid_templates.get(algorithm)
            if problem is not None:  # it exists, and none of its runs could run
                raise bad_request(
                    f"algorithm {algorithm!r} cannot run: its template is invalid: {problem}",
                    "invalid_template",
                )
            raise ApiError(404, "unknown_algorithm", f"no algorithm named {algorithm!r} is defined")
        try:
            overrides = normalise(body.get("customConfiguration"))
            applied = apply(template, overrides, self.catalog.workgroups)
        except ForbiddenConfiguration as exc:
            raise ApiError(403, "forbidden", str(exc)) from exc
        except InvalidConfiguration as exc:
            raise bad_request(str(exc), "invalid_configuration") from exc
        valid_for = self._valid_for(body.get("payloadValidFor"), template.payload_valid_for)
        shard = applied["shard"]
        if shard not in self.shards:
            raise bad_request(
                f"customConfiguration.workgroup: workgroup {applied['workgroup']!r} runs on shard"
                f" {shard!r}, which this scheduler cannot reach",
                "invalid_configuration",
            )
        if parent is not None:
            # a run's credential sees only the children of its run, which is the parent here
            viewer = dataclasses.replace(principal.viewer, below=None)
            above = await self.store.get(
                parent["algorithmName"], uuid.UUID(parent["requestId"]), viewer
            )
            if above is None:
                raise bad_request(
                    f"parentRequest: no run {parent['requestId']}"
                    f" of algorithm {parent['algorithmName']!r}"
                )
            if principal.run is not None and above.stage.terminal:
                # its children would escape the cascading cancel, and a credential must
                # not outlive its run: it is valid until the deadline, for a leaked copy too
                raise ApiError(
                    403, "forbidden", f"parentRequest: run {above.id} of {above.algorithm!r}"
                    f" has finished ({above.stage.value}): its credential starts no more runs",
                )  # fmt: skip
        self.pressure.refuse_if_overloaded(shard)

        run_id = run_id or self._new_id()
        try:
            payload = orjson.dumps(parameters)
        except orjson.JSONEncodeError as exc:  # parsed 1024 levels deep, written only 254
            raise bad_request(f"algorithmParameters: cannot be stored: {exc}") from exc
        inline, key = self._input_place(template, algorithm, run_id, payload)
        run = NewRun(
            algorithm=algorithm,
            id=run_id,
            stage=Stage.BUFFERED,
            caller=principal.caller,
            received_by_host=self.host,
            applied_configuration=applied,
            payload_valid_for=_period(valid_for),
            payload_uri=self.payloads.uri(key) if key else None,
            payload_inline=payload if inline else None,
            configuration_overrides=overrides or None,
            content_hash=hashlib.sha256(payload).hexdigest(),
            tag=tag,
            parent=parent,
            idempotency_key=idempotency_key,
            api_version=api_version,
        )
        if dry_run:  # every check passed; nothing was taken, and nothing is written
            return Accepted(run_id, created=False, planned=run, payload=payload)
        if idempotency_key is None:
            return await self._accept(principal, run, key, payload, inline)
        keyed = (principal.caller, idempotency_key)
        if keyed in self.keys_in_flight:
            raise ApiError(
                409,
                "idempotency_key_in_use",
                f"Idempotency-Key {idempotency_key[:80]!r}: a request with this key is still"
                " being processed; send it again once that one is answered",
                {"Retry-After": "1"},
            )
        self.keys_in_flight.add(keyed)
        try:
            return await self._accept(principal, run, key, payload, inline)
        finally:
            self.keys_in_flight.discard(keyed)

    def _input_place(
        self, template: Template, algorithm: str, run_id: uuid.UUID, payload: bytes
    ) -> tuple[bool, str | None]:
        """Whether a run's input is kept with its checkpoint, else its key in S3."""
        if template.inline_payloads and len(payload) <= template.inline_limit:
            return True, None
        return False, self.payloads.input_key(algorithm, str(run_id))

    def plan_alike(
        self, run: NewRun, parameters: Any, run_id: uuid.UUID
    ) -> tuple[NewRun, bytes] | None:
        """What :meth:`submit` plans in a dry run for a request whose one field is
        ``algorithmParameters`` (``parameters``), given ``run``: its plan of such a
        request of the same caller for the same algorithm, made without an await since
        (so with the same catalog and pressure) and without a run's credential. Every
        check but those of the parameters depends on the other fields, the caller and
        that state alone, and passed for ``run``: only the parameters are judged here.
        The run planned and its input (as ``planned`` and ``payload`` of a dry run's
        :class:`Accepted`, without one made per item); ``None`` when they are not an
        object or cannot be stored (:meth:`submit` says why), or the template is gone."""
        template = self.catalog.template(run.algorithm)
        if template is None or type(parameters) is not dict:
            return None
        try:
            payload = orjson.dumps(parameters)
        except orjson.JSONEncodeError:
            return None
        inline, key = self._input_place(template, run.algorithm, run_id, payload)
        planned = NewRun(
            algorithm=run.algorithm,
            id=run_id,
            stage=run.stage,
            caller=run.caller,
            received_by_host=run.received_by_host,
            applied_configuration=run.applied_configuration,
            payload_valid_for=run.payload_valid_for,
            payload_uri=self.payloads.uri(key) if key else None,
            payload_inline=payload if inline else None,
            content_hash=hashlib.sha256(payload).hexdigest(),
            api_version=run.api_version,
        )
        return planned, payload

    async def _accept(
        self, principal: Principal, run: NewRun, key: str | None, payload: bytes, inline: bool
    ) -> Accepted:
        """Take the quota, upload the input, write the checkpoint and queue the run."""
        algorithm, run_id, shard = run.algorithm, run.id, run.applied_configuration["shard"]
        run_key = run.key
        quota = None
        quotas = self.quotas
        if quotas is not None and quotas.apply_to(principal.caller):
            # the last check: a 429 here leaves nothing stored
            quota = await quotas.take(principal.caller, run_key)
        try:
            if key is not None:
                await self.payloads.put(key, payload)
        except BaseException:
            await self._give_back(quota)
            raise
        try:
            admission = await self.store.insert(run)
        except (CheckpointRejected, StoreNotReached):
            if key is not None:  # refused, or never sent: nothing was stored
                await self._forget_input(key)
            await self._give_back(quota)
            raise
        except BaseException:
            # the write may have landed before the failure was seen: the run may exist,
            # and its input stays until the store says it does not
            if key is not None:
                self.stray_inputs.settle(run.key, key)
            raise
        if not admission.created:
            await self._give_back(quota)
            if key is not None and admission.id != run_id:  # the same id: the same input
                await self._forget_input(key)
            if admission.conflicts:  # not a repeat: another request under the same key
                raise ApiError(
                    422,
                    "idempotency_conflict",
                    conflict_message(principal, "Idempotency-Key", run, admission),
                )
            return Accepted(admission.id, created=False)
        if principal.run is not None and await self.cancel_orphans(principal, [run]):
            return Accepted(run_id, created=True)
        if inline:  # before the push: its Job may be made the moment it is queued
            self.recent_inputs.remember(run_key, payload)
        self.push_many([QueuedRun(shard, run_key, 0.0, self.fair_share.share(principal))])
        ACCEPTED.labels(algorithm).inc()
        return Accepted(run_id, created=True)

    async def cancel_orphans(self, principal: Principal, runs: Sequence[NewRun]) -> bool:
        """Cancel ``runs``, children just stored with a run's credential, if their parent
        finished meanwhile; whether it had. The parent was unfinished when they were
        checked, but its cancellation may have looked for its children before they were
        stored: one of the two reads sees the other's write, so no child stays unfinished
        below a finished parent, out of reach of any cancellation."""
        if principal.run is None or not runs:
            return False
        algorithm, run_id = principal.run
        parent = await self.store.result(algorithm, uuid.UUID(run_id), SYSTEM)
        if parent is None or not parent.stage.terminal:
            return False
        why = (
            f"parent run {run_id} of algorithm {algorithm!r} was {v12_status(parent.stage)}"
            " when this run was stored"
        )
        changes = [
            Transition(r.algorithm, r.id, Stage.CANCELLED, cause="cancelled", details=why)
            for r in runs
        ]
        await asyncio.gather(*(self.store.transition(change) for change in changes))
        log.info("children cancelled with their finished parent", extra={"children": len(runs)})
        return True

    async def queue_position(self, run: Checkpoint, pods: list[str]) -> tuple[str, int] | None:
        """(pod, rank) of a queued run among ``pods``' queues for its shard, if waiting."""
        shard = run.applied_configuration["shard"]
        return await self._queue.position(shard, run.key, pods)

    def _valid_for(self, raw: Any, default: float) -> float:
        if raw is None:
            return default
        if not isinstance(raw, str):
            raise bad_request("payloadValidFor: expected a duration such as 30m, 24h or 7d")
        try:
            seconds = parse_duration(raw)
        except ValueError:
            raise bad_request(
                f"payloadValidFor: {raw!r} is not a duration such as 30m, 24h or 7d"
            ) from None
        if not MIN_PAYLOAD_VALID_FOR <= seconds <= MAX_PAYLOAD_VALID_FOR:
            raise bad_request("payloadValidFor: must be between 1m and 7d")
        return seconds

    async def _give_back(self, taken: Taken | None) -> None:
        if self.quotas is not None and taken is not None:
            await asyncio.shield(self.quotas.give_back(taken))

    async def _forget_input(self, key: str) -> None:
        try:
            await asyncio.shield(self.payloads.delete([key]))
        except DependencyError as exc:
            log.warning("could not delete an unused input %s: %s", key, exc)
