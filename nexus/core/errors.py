"""Exceptions that cross module boundaries.

Every error Nexus raises on purpose derives from ``NexusError``; library errors are chained
as causes (``raise ... from exc``) so the log shows both what we were doing and why it
failed::

    NexusError
    ├── ConfigError              a setting is missing or malformed; the process cannot start
    ├── DependencyError          a real component (Postgres, Redis, S3, an API server) failed
    │   ├── StoreUnavailable     the checkpoint store failed; a write may have landed
    │   │   └── StoreNotReached  it was not reached (no connection, overloaded): nothing written
    │   ├── QueueUnavailable     Redis cannot be reached
    │   ├── StorageUnavailable   object storage cannot be reached or refused the request
    │   └── ShardUnavailable     a shard's API server cannot be reached or answered 5xx
    ├── ShardRejected            a shard answered 4xx that retrying will not change
    ├── ShardThrottled           a shard answered 429; carries the Retry-After delay
    ├── CheckpointRejected       the store cannot hold a value of this run (bad input)
    ├── TransitionRejected       the run is not in a stage that allows the transition
    └── RunNotFound              no checkpoint for that (algorithm, request id)

Request validation errors are not exceptions of this tree: the HTTP layer turns them into
``4xx`` answers where they are found.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base of every error Nexus raises on purpose."""


class ConfigError(NexusError):
    """A setting is missing or malformed. The message names the key and what was expected."""


class DependencyError(NexusError):
    """A real component failed; the operation may succeed when retried later."""


class StoreUnavailable(DependencyError):
    """The checkpoint store (PostgreSQL) cannot take the operation now. A write may or may
    not have landed: the failure can come after the statement was sent."""


class StoreNotReached(StoreUnavailable):
    """The checkpoint store was not reached (no connection, too many writes waiting):
    nothing was written."""


class QueueUnavailable(DependencyError):
    """Redis cannot take the operation now."""


class StorageUnavailable(DependencyError):
    """Object storage cannot take the operation now."""


class ShardUnavailable(DependencyError):
    """A shard's API server cannot be reached or answered with a server error."""


class ShardRejected(NexusError):
    """A shard refused a request in a way that retrying will not change (4xx other than 429)."""

    def __init__(self, message: str, *, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ShardThrottled(NexusError):
    """A shard answered ``429 Too Many Requests``; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CheckpointRejected(NexusError):
    """The checkpoint store refused a run's data, e.g. a string PostgreSQL cannot hold."""


class TransitionRejected(NexusError):
    """The run's current lifecycle stage does not allow the requested transition."""


class RunNotFound(NexusError):
    """No checkpoint exists for the given algorithm and request id."""
