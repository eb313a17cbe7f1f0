"""Retry policies by failure class: which failed attempts of a run get another Job, and how.

A template's ``spec.retryPolicy`` names, per class of failure, how often a run is tried
again (DESIGN §5); it is validated here and stored, normalised, in the run's applied
configuration (``retryPolicy``), so a run is retried as it was accepted::

    retryPolicy:
      outOfMemory:       {maxRetries: 2, memoryMultiplier: 2, maxMemory: 8Gi}
      schedulingFailure: {maxRetries: 3, delaySeconds: 30}   # image pull, unschedulable
      nodeLost:          {maxRetries: 3}                      # evicted, node gone
      algorithmFailure:  {maxRetries: 0}                      # a completion with a cause

A class the policy leaves out is never retried (as before policies existed), and
``algorithmFailure`` is never retried unless asked for: the algorithm said it failed.

Every retry is a new *attempt*: a new Job named :func:`job_name` (the request id for the
first, ``<id>-a<n>`` after), so creating an attempt's Job twice is harmless (409), and no
attempt's Job is ever created again under another attempt's name. The move to a new
attempt is one compare-and-set in SQL on the attempt number (see
:meth:`nexus.core.checkpoints.CheckpointStore.retry`): whichever processes see the
failure, however often, and whatever crashes in between, attempt *n* is followed by at
most one attempt *n + 1*. The attempts that failed are kept with the checkpoint
(``retries``), each with its class, cause, details and Job, and shown in the run's metadata.

:func:`decide` is a pure function of the applied configuration, the earlier attempts and
the failure: the maintainer and the receiver both ask it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, NotRequired, TypedDict, get_args
from uuid import UUID

FailureClass = Literal["outOfMemory", "schedulingFailure", "nodeLost", "algorithmFailure"]
FAILURE_CLASSES: Final[tuple[FailureClass, ...]] = get_args(FailureClass)

MAX_RETRIES = 20
"""The most retries a class may allow: each is a Job, and a run that fails 20 times for
one reason will not succeed the 21st."""
MAX_DELAY_SECONDS = 86_400.0
DEFAULT_RETRIES: Final[dict[FailureClass, int]] = {
    "outOfMemory": 2,
    "schedulingFailure": 3,
    "nodeLost": 3,
    "algorithmFailure": 0,
}
"""``maxRetries`` of a class the policy names without saying how often."""
DEFAULT_DELAY: Final[dict[FailureClass, float]] = {
    "outOfMemory": 0.0,
    "schedulingFailure": 30.0,  # an image pushed late, a node group scaling up
    "nodeLost": 0.0,
    "algorithmFailure": 0.0,
}
DEFAULT_MEMORY_MULTIPLIER = 2.0
DEFAULT_MEMORY_CAP_FACTOR = 4
"""Without ``maxMemory``, an attempt may have at most this many times the first's memory."""

_JOB_NAME = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:-a([0-9]{1,3}))?\Z"
)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?\Z")
_UNITS = {
    None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


class ClassPolicy(TypedDict):
    """One class's policy, normalised (every field set), as stored in the configuration."""

    maxRetries: int
    delaySeconds: float
    memoryMultiplier: NotRequired[float]
    maxMemory: NotRequired[str]
    """Only for ``outOfMemory``."""


RetryPolicy = dict[str, ClassPolicy]
"""``appliedConfiguration.retryPolicy``: the classes that are retried, by name."""


class AttemptRecord(TypedDict):
    """An attempt that failed and was retried (``retries`` of the checkpoint, in order)."""

    attempt: int
    job: str
    failureClass: str
    cause: str
    details: str
    endedAt: str
    memoryLimit: NotRequired[str]
    """The attempt's memory limit, when the next one was given more."""
    retryAt: NotRequired[str]
    """When the next attempt was due, when it waited."""


class PolicyError(ValueError):
    """A ``retryPolicy`` that cannot be used; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- Job names -----------------------------------------------------------------------------


def job_name(run_id: UUID | str, attempt: int) -> str:
    """The name of the Job of ``attempt`` (1, 2, …) of a run."""
    return str(run_id) if attempt <= 1 else f"{run_id}-a{attempt}"


def parse_job_name(name: str) -> tuple[UUID, int] | None:
    """(request id, attempt) of an attempt's Job name, or ``None`` for any other name."""
    match = _JOB_NAME.match(name)
    if match is None:
        return None
    return UUID(match.group(1)), int(match.group(2) or 1)


# -- memory --------------------------------------------------------------------------------


def memory_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity (``512Mi``, ``1.5Gi``, ``2G``)."""
    match = _QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a memory quantity")
    return math.ceil(float(match.group(1)) * _UNITS[match.group(2)])


def memory_quantity(size: int) -> str:
    """``size`` bytes as a quantity, in whole Mi (rounded up) unless it is whole Gi."""
    if size % 2**30 == 0:
        return f"{size // 2**30}Gi"
    return f"{math.ceil(size / 2**20)}Mi"


# -- parsing -------------------------------------------------------------------------------


def _number(value: Any, where: str, low: float, high: float, whole: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(where, "expected a number")
    if whole and value != int(value):
        raise PolicyError(where, "expected a whole number")
    if not low <= value <= high:
        raise PolicyError(where, f"expected a number from {low:g} to {high:g}")
    return float(value)


def parse_policy(value: Any, where: str) -> RetryPolicy:
    """The normalised policy of a template's ``spec.retryPolicy`` (absent: none)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(where, "expected an object")
    unknown = sorted(set(value) - set(FAILURE_CLASSES))
    if unknown:
        raise PolicyError(
            f"{where}.{unknown[0]}", f"unknown failure class; use {', '.join(FAILURE_CLASSES)}"
        )
    policy: RetryPolicy = {}
    for name in FAILURE_CLASSES:
        raw = value.get(name)
        if raw is None:
            continue
        at = f"{where}.{name}"
        if not isinstance(raw, dict):
            raise PolicyError(at, "expected an object")
        allowed = {"maxRetries", "delaySeconds"}
        if name == "outOfMemory":
            allowed |= {"memoryMultiplier", "maxMemory"}
        extra = sorted(set(raw) - allowed)
        if extra:
            raise PolicyError(
                f"{at}.{extra[0]}", f"unknown field; use {', '.join(sorted(allowed))}"
            )
        retries = raw.get("maxRetries", DEFAULT_RETRIES[name])
        delay = raw.get("delaySeconds", DEFAULT_DELAY[name])
        entry: ClassPolicy = {
            "maxRetries": int(_number(retries, f"{at}.maxRetries", 0, MAX_RETRIES, True)),
            "delaySeconds": _number(delay, f"{at}.delaySeconds", 0, MAX_DELAY_SECONDS, False),
        }
        if name == "outOfMemory":
            multiplier = raw.get("memoryMultiplier", DEFAULT_MEMORY_MULTIPLIER)
            entry["memoryMultiplier"] = _number(multiplier, f"{at}.memoryMultiplier", 1, 16, False)
            cap = raw.get("maxMemory")
            if cap is not None:
                try:
                    entry["maxMemory"] = memory_quantity(memory_bytes(str(cap)))
                except ValueError as exc:
                    raise PolicyError(f"{at}.maxMemory", str(exc)) from exc
        policy[name] = entry
    return policy


def for_run(policy: RetryPolicy, memory_limit: str) -> RetryPolicy:
    """``policy`` as a run with ``memory_limit`` keeps it: an ``outOfMemory`` class without
    ``maxMemory`` gets :data:`DEFAULT_MEMORY_CAP_FACTOR` times that limit as its cap."""
    oom = policy.get("outOfMemory")
    if oom is None or "maxMemory" in oom:
        return {name: ClassPolicy(**entry) for name, entry in policy.items()}
    try:
        cap = memory_quantity(memory_bytes(memory_limit) * DEFAULT_MEMORY_CAP_FACTOR)
    except ValueError:
        cap = memory_limit  # not a quantity: never raised
    return {
        **{name: ClassPolicy(**entry) for name, entry in policy.items()},
        "outOfMemory": {**oom, "maxMemory": cap},
    }


# -- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    """Another attempt: after ``delay`` seconds, with ``memory`` as its limit if it changes."""

    delay: float
    memory: str | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No other attempt; ``why`` is added to the run's failure details (empty when the
    class is not retried at all)."""

    why: str = ""


def decide(
    configuration: Mapping[str, Any],
    retries: Sequence[Mapping[str, Any]],
    failure: FailureClass,
) -> Retry | GiveUp:
    """Whether a run whose current attempt failed with ``failure`` gets another attempt."""
    policy = (configuration.get("retryPolicy") or {}).get(failure)
    if not policy or policy.get("maxRetries", 0) <= 0:
        return GiveUp()
    used = sum(1 for r in retries if r.get("failureClass") == failure)
    if used >= policy["maxRetries"]:
        return GiveUp(f"retried {used} times for {failure}, as many as its policy allows")
    delay = float(policy.get("delaySeconds", 0.0))
    if failure != "outOfMemory":
        return Retry(delay)
    try:
        current = memory_bytes(str(configuration.get("memoryLimit", "")))
        cap = memory_bytes(str(policy.get("maxMemory", "")))
    except ValueError:
        return GiveUp("its memory limit cannot be raised")
    if current >= cap:
        return GiveUp(f"its memory limit is already at the cap of {policy.get('maxMemory')}")
    multiplier = float(policy.get("memoryMultiplier", DEFAULT_MEMORY_MULTIPLIER))
    more = min(cap, max(current + 1, math.ceil(current * multiplier)))
    return Retry(delay, memory_quantity(more))


def record(
    run_id: UUID,
    attempt: int,
    failure: FailureClass,
    cause: str,
    details: str,
    ended_at: datetime,
    *,
    memory: str | None = None,
    retry_at: datetime | None = None,
) -> AttemptRecord:
    """What is kept of a failed attempt that is retried."""
    entry: AttemptRecord = {
        "attempt": attempt,
        "job": job_name(run_id, attempt),
        "failureClass": failure,
        "cause": cause,
        "details": details,
        "endedAt": ended_at.isoformat(),
    }
    if memory is not None:
        entry["memoryLimit"] = memory
    if retry_at is not None:
        entry["retryAt"] = retry_at.isoformat()
    return entry
