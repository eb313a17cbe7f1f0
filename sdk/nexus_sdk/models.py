"""Typed models of what the Nexus API answers, tolerant of what they do not know.

A newer server may answer a status or a field this SDK has never heard of; the models keep
it instead of failing:

* :class:`Status` is a string enum whose unknown values become members of their own
  (``Status("PAUSED")`` is a ``Status`` equal to ``"PAUSED"``, neither terminal nor known);
* every model keeps the whole answer it was made from in ``raw``, unknown fields included;
* counts and lists are read leniently (a missing field is empty, never an error).

Wire shapes (DESIGN §2) are :class:`typing.TypedDict`; the models are frozen dataclasses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class Status(StrEnum):
    """The status of a run, as the v1.2 routes answer it."""

    NEW = "NEW"
    BUFFERED = "BUFFERED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SCHEDULING_FAILED = "SCHEDULING_FAILED"
    SCHEDULING_TIMEOUT = "SCHEDULING_TIMEOUT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    THROTTLED = "THROTTLED"
    CANCELLED = "CANCELLED"

    @classmethod
    def _missing_(cls, value: object) -> Status | None:
        if not isinstance(value, str):
            return None
        unknown = str.__new__(cls, value)
        unknown._name_ = value
        unknown._value_ = value
        return unknown

    @property
    def known(self) -> bool:
        """This SDK knows the status (a newer server may answer others)."""
        return self._name_ in type(self).__members__

    @property
    def terminal(self) -> bool:
        """The run has finished and never changes again."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        Status.COMPLETED,
        Status.FAILED,
        Status.SCHEDULING_FAILED,
        Status.SCHEDULING_TIMEOUT,
        Status.DEADLINE_EXCEEDED,
        Status.CANCELLED,
    }
)


class RunAnswer(TypedDict):
    """How a run stands, on the wire (the results routes)."""

    requestId: str
    status: str
    resultUri: str | None
    runErrorMessage: str | None


class SummaryAnswer(TypedDict):
    """The progress of a batch, on the wire (the tag summary route)."""

    total: int
    byStatus: dict[str, int]
    finished: bool


class ParentRequest(TypedDict):
    requestId: str
    algorithmName: str


class RunBody(TypedDict):
    """The body of a run request (DESIGN §2); bulk items add ``idempotencyKey``."""

    algorithmParameters: Any
    tag: NotRequired[str]
    customConfiguration: NotRequired[dict[str, Any]]
    parentRequest: NotRequired[ParentRequest]
    payloadValidFor: NotRequired[str]
    idempotencyKey: NotRequired[str]


@dataclass(frozen=True, slots=True)
class RunState:
    """How a run stands: its status, and its result's URL or its error."""

    request_id: str
    status: Status
    result_uri: str | None = None
    """A fresh URL of the result (valid for a while), only when ``COMPLETED``."""
    error_message: str | None = None
    """Cause and details, only when the run failed."""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return self.status.terminal

    @property
    def completed(self) -> bool:
        return self.status == Status.COMPLETED

    @property
    def listed_result(self) -> Result | None:
        """The result itself, when a listing asked for with results carried it (a result
        kept inline): then reading it needs no request."""
        if "result" not in self.raw or not self.completed:
            return None
        return Result(json.dumps(self.raw["result"]).encode(), "application/json")

    @classmethod
    def from_wire(cls, answer: Mapping[str, Any]) -> RunState:
        return cls(
            request_id=str(answer.get("requestId", "")),
            status=Status(str(answer.get("status", ""))),
            result_uri=answer.get("resultUri") or None,
            error_message=answer.get("runErrorMessage") or None,
            raw=answer,
        )


@dataclass(frozen=True, slots=True)
class TagSummary:
    """The progress of a batch: its runs by status, and whether it has runs and every one
    has finished (a tag without runs is not finished: its runs may be on their way)."""

    total: int
    by_status: Mapping[Status, int]
    finished: bool
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def done(self) -> int:
        """Runs that have finished, whatever their outcome."""
        return sum(n for status, n in self.by_status.items() if status.terminal)

    @property
    def unsuccessful(self) -> int:
        """Runs that finished without a result."""
        return sum(
            n for status, n in self.by_status.items() if status.terminal and status != "COMPLETED"
        )

    @classmethod
    def from_wire(cls, answer: Mapping[str, Any]) -> TagSummary:
        counts = answer.get("byStatus") or {}
        by_status = {Status(str(k)): int(v) for k, v in counts.items()}
        total = int(answer.get("total", sum(by_status.values())))
        return cls(total, by_status, bool(answer.get("finished", False)), answer)

    @classmethod
    def of_runs(cls, runs: list[RunState]) -> TagSummary:
        """The summary of a complete listing (for servers without the summary route)."""
        counts: dict[Status, int] = {}
        for run in runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return cls(len(runs), counts, bool(runs) and all(run.finished for run in runs))


@dataclass(frozen=True, slots=True)
class Submitted:
    """One item of a bulk submit: its request id if accepted, else the server's refusal."""

    index: int
    """The item's place in what was submitted, from 0."""
    request_id: str | None
    error: str | None = None
    message: str | None = None

    @property
    def accepted(self) -> bool:
        return self.request_id is not None


@dataclass(frozen=True, slots=True)
class RunMetadata:
    """The whole checkpoint of a run (the metadata route); everything is in ``raw``."""

    request_id: str
    algorithm: str
    status: Status
    tag: str | None
    caller: str | None
    queue_position: int | None
    raw: Mapping[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_wire(cls, answer: Mapping[str, Any]) -> RunMetadata:
        position = answer.get("queuePosition")
        return cls(
            request_id=str(answer.get("requestId", "")),
            algorithm=str(answer.get("algorithm", "")),
            status=Status(str(answer.get("lifecycleStage", ""))),
            tag=answer.get("tag"),
            caller=answer.get("caller"),
            queue_position=position if isinstance(position, int) else None,
            raw=answer,
        )


@dataclass(frozen=True, slots=True)
class Result:
    """A run's result document as stored: its bytes and its content type."""

    content: bytes
    content_type: str | None

    def json(self) -> Any:
        return json.loads(self.content)

    def decoded(self) -> Any:
        """The document decoded from JSON when it is JSON, else the bytes themselves."""
        try:
            return json.loads(self.content)
        except ValueError:
            if self.content_type and "json" in self.content_type:
                raise
            return self.content
