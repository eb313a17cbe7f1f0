"""The run: its lifecycle stages, the transitions between them, and its checkpoint record.

A run is one request to execute one algorithm once. Its checkpoint (one row in PostgreSQL,
see :mod:`nexus.core.checkpoints`) is the single source of truth about it; Redis queues and
Kubernetes Jobs only ever point at a checkpoint.

Lifecycle::

    NEW ──► BUFFERED ──► RUNNING ──► COMPLETED
     │         │  ▲ ▲       │        FAILED
     │         │  │ └───────┘        DEADLINE_EXCEEDED
     │         │  └─retry  new attempt
     └─────────┴────────────┴──────► SCHEDULING_FAILED
                                     CANCELLED

``BUFFERED`` may go straight to a finished stage because a fast algorithm can report its
completion before the batched ``RUNNING`` write lands. The five finished stages are
terminal: once there, a run never changes again. The same table is enforced in SQL (the
``run_transitions`` table, and a trigger whose condition and function refuse every other
move), so that no writer, however buggy or late, can move a terminal run; the store's
updates judge a move by an expression made from :data:`ALLOWED` (``statements.MOVES``),
and tests keep the three equal.

``RUNNING → BUFFERED`` is not among them: it is the start of a new attempt (a retry by
failure class, :mod:`nexus.core.retrying`), made only by
:meth:`~nexus.core.checkpoints.CheckpointStore.retry`, which raises the attempt number in
the same statement; the trigger lets the move through only with that raise.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypedDict, TypeVar, dataclass_transform
from uuid import UUID

from nexus.core.retrying import AttemptRecord
from nexus.core.templates import AppliedConfiguration, ConfigurationOverrides

_Record = TypeVar("_Record")


@dataclass_transform(frozen_default=True)
def record(cls: type[_Record]) -> type[_Record]:
    """A dataclass with slots, immutable to the type checker (as ``frozen=True``), whose
    ``__init__`` sets its fields as a plain class's does.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``:
    about 340 instructions a field (callgrind), and the records made per run are wide (a
    checkpoint has 28 fields, a transition 13): a tenth of dispatch's instructions went
    there. ``mypy --strict`` refuses any assignment to a field, as for a frozen class;
    equality, ``hash`` (from the fields, as frozen ones have it) and
    :func:`dataclasses.replace` are those of a frozen dataclass."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


class Stage(enum.StrEnum):
    """Lifecycle stage of a run, as stored and as shown to clients (``status``)."""

    NEW = "NEW"
    BUFFERED = "BUFFERED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SCHEDULING_FAILED = "SCHEDULING_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {
        Stage.COMPLETED,
        Stage.FAILED,
        Stage.SCHEDULING_FAILED,
        Stage.DEADLINE_EXCEEDED,
        Stage.CANCELLED,
    }
)
ACTIVE = frozenset(Stage) - TERMINAL

ALLOWED: frozenset[tuple[Stage, Stage]] = frozenset(
    {
        (Stage.NEW, Stage.BUFFERED),
        (Stage.NEW, Stage.SCHEDULING_FAILED),
        (Stage.NEW, Stage.DEADLINE_EXCEEDED),
        (Stage.NEW, Stage.CANCELLED),
        # a dispatch attempt that did not create a Job records its attempt and stays queued
        (Stage.BUFFERED, Stage.BUFFERED),
        (Stage.BUFFERED, Stage.RUNNING),
        (Stage.BUFFERED, Stage.COMPLETED),
        (Stage.BUFFERED, Stage.FAILED),
        (Stage.BUFFERED, Stage.SCHEDULING_FAILED),
        (Stage.BUFFERED, Stage.DEADLINE_EXCEEDED),
        (Stage.BUFFERED, Stage.CANCELLED),
        # a second RUNNING: the dispatcher recording its Job after the watch saw its pod
        # start (the watch writes only over BUFFERED); the same Job, so the same facts
        (Stage.RUNNING, Stage.RUNNING),
        (Stage.RUNNING, Stage.COMPLETED),
        (Stage.RUNNING, Stage.FAILED),
        (Stage.RUNNING, Stage.SCHEDULING_FAILED),
        (Stage.RUNNING, Stage.DEADLINE_EXCEEDED),
        (Stage.RUNNING, Stage.CANCELLED),
    }
)
"""Every (from, to) pair a checkpoint may take; anything else is refused by the store."""


def may_move(current: Stage, target: Stage) -> bool:
    """Whether a run in ``current`` may move to ``target``."""
    return (current, target) in ALLOWED


class ParentRef(TypedDict):
    """The run that started this one (a request's ``parentRequest``), stored as jsonb."""

    requestId: str
    algorithmName: str


_VERSION_BITS = (0xF000 << 64) | (0xC000 << 48)
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)


def new_run_ids(count: int) -> list[UUID]:
    """``count`` new request ids: random UUIDs (version 4, as ``uuid.uuid4``), from one read
    of the system's random source for all of them instead of one system call each."""
    pool = os.urandom(16 * count)
    return [
        UUID(int=int.from_bytes(pool[i : i + 16]) & ~_VERSION_BITS | _VERSION_4)
        for i in range(0, 16 * count, 16)
    ]


@record
class RunKey:
    """Identifies a run: the algorithm it runs and its request id."""

    algorithm: str
    id: UUID

    def __str__(self) -> str:
        return f"{self.algorithm}/{self.id}"


@record
class NewRun:
    """What the scheduler writes when it accepts a run (the first checkpoint)."""

    algorithm: str
    id: UUID
    stage: Stage
    caller: str
    received_by_host: str
    applied_configuration: AppliedConfiguration
    payload_valid_for: timedelta
    payload_uri: str | None = None
    payload_inline: bytes | None = None
    configuration_overrides: ConfigurationOverrides | None = None
    content_hash: str | None = None
    tag: str | None = None
    parent: ParentRef | None = None
    idempotency_key: str | None = None
    api_version: str = "v1.2"

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)


@record
class Transition:
    """A move of one run to ``to``; the fields that are not ``None`` are recorded with it.

    ``expect`` narrows the move to runs currently in that stage (compare-and-set), e.g. the
    maintainer marks ``RUNNING`` only what is still ``BUFFERED``. ``attempts`` is added to
    the run's attempt counter.
    """

    algorithm: str
    id: UUID
    to: Stage
    expect: Stage | None = None
    result_uri: str | None = None
    result_inline: bytes | None = None
    """The result document itself, kept with the checkpoint (a small result, DESIGN §3)."""
    cause: str | None = None
    details: str | None = None
    job_uid: str | None = None
    shard: str | None = None
    sent_at: datetime | None = None
    attempts: int = 0
    at_attempt: int | None = None
    keep_job: bool = False
    """When the move is refused (another writer finished or failed the run meanwhile), keep
    the ``job_uid``, ``shard`` and ``sent_at`` the run lacks all the same, in the same
    write, and nothing else: the Job was made, and the run says which one. For a change to
    ``RUNNING`` or ``BUFFERED`` without a result or failure (the dispatcher's)."""

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)


@record
class Kept:
    """The outcome of a change that keeps its Job's facts (:attr:`Transition.keep_job`),
    refused because another writer moved the run meanwhile (nearly always to a finished
    stage: its completion came first), when its facts were kept: the stage the run is in
    and its attempt. False, as the outcome of a change that did not apply is."""

    stage: Stage
    attempt: int

    def __bool__(self) -> bool:
        return False


@record
class Checkpoint:
    """A run as stored: everything known about it."""

    algorithm: str
    id: UUID
    stage: Stage
    caller: str
    received_by_host: str
    received_at: datetime
    last_modified: datetime
    applied_configuration: AppliedConfiguration
    payload_valid_for: timedelta
    payload_uri: str | None
    has_inline_payload: bool
    result_uri: str | None
    failure_cause: str | None
    failure_details: str | None
    sent_at: datetime | None
    configuration_overrides: ConfigurationOverrides | None
    content_hash: str | None
    tag: str | None
    api_version: str
    job_uid: str | None
    parent: ParentRef | None
    shard: str | None
    attempts: int
    idempotency_key: str | None
    has_inline_result: bool = False
    """Whether the result document is kept with the checkpoint (then ``result_uri`` is
    ``None`` and the scheduler serves it from a signed link)."""
    attempt: int = 1
    """The current attempt: 1, or more after retries (its Job is named after it)."""
    retries: list[AttemptRecord] = field(default_factory=list)
    """The attempts that failed and were retried, oldest first."""
    retry_at: datetime | None = None
    """When the current attempt may be dispatched, if it must wait (a retry's delay)."""

    @property
    def key(self) -> RunKey:
        return RunKey(self.algorithm, self.id)


@record
class RunResult:
    """What a client asks for most: how a run ended and where its result is (a narrow read
    of the checkpoint, for the results routes)."""

    algorithm: str
    id: UUID
    stage: Stage
    result_uri: str | None
    failure_cause: str | None
    failure_details: str | None
    has_inline_result: bool = False
