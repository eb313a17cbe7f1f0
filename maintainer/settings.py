"""The maintainer's settings: shared sections plus its own ``maintainer`` section
(``NEXUS__MAINTAINER__LEASE_TTL`` and so on) and the ``replication`` section of the
configuration controller (``NEXUS__REPLICATION__ENABLED``). Durations are seconds."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from nexus.core.config import (
    HttpSettings,
    LogSettings,
    PostgresSettings,
    RedisSettings,
    Seconds,
    ShardSettings,
    StorageSettings,
    at_least,
    check,
    positive,
)
from nexus.core.listwatch import MAX_BACKOFF
from nexus.core.shards import WATCH_SECONDS


def _default_instance() -> str:
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class MaintainerSection:
    """How the maintainer watches, sweeps and adopts."""

    instance: str = field(default_factory=_default_instance)
    """This process's name in the leader lease. Unique per process."""
    lease_name: str = "maintainer"
    """Name of the Redis lease; maintainers of one deployment share it."""
    lease_ttl: Seconds = field(default=10.0, metadata=positive())
    """A leader that has not renewed for this long is replaced. It renews every third of
    it, so a standby takes over within ``lease_ttl`` plus one renewal of the holder's
    death, well inside two lease periods; shorter means faster take-over and more Redis
    calls, and a leader cut off from Redis for this long stops acting."""

    # -- watching ----------------------------------------------------------------------
    check_interval: Seconds = field(default=1.0, metadata=positive())
    """How often grace timers that have run out are checked (and re-checked on the shard)."""
    image_pull_grace: Seconds = field(default=120.0, metadata=positive())
    """A pod whose image has failed to pull for this long (as observed by this process)
    fails its run (``SCHEDULING_FAILED``) and its Job is deleted. Registries hiccup; two
    minutes covers the kubelet's first back-offs."""
    unschedulable_grace: Seconds = field(default=300.0, metadata=positive())
    """A pod the cluster has not been able to place for this long (``PodScheduled`` false,
    reason ``Unschedulable``) is a scheduling failure, for templates whose
    ``retryPolicy.schedulingFailure`` retries those: its Job is deleted and the run tried
    again, or failed once its retries are spent. Elsewhere the pod waits (a node group
    scaling up takes minutes) until the run's deadline. Five minutes covers a cluster
    autoscaler adding a node."""
    completion_grace: Seconds = field(default=30.0, metadata=positive())
    """A Job that succeeded without its run's completion arriving within this long (from
    when this process saw it succeed) fails the run, at the next sweep of ``RUNNING``
    runs: the algorithm exited without reporting. Completions are posted before the
    container exits, so seconds suffice; 30 s leaves room for the receiver's retries."""
    started_grace: Seconds = field(default=5.0, metadata=at_least(0))
    """A pod seen running this long while its run is still ``BUFFERED`` moves the run to
    ``RUNNING`` (with its Job's uid): its scheduler created the Job but did not live to
    record it. The scheduler records ``RUNNING`` itself within milliseconds of the
    creation, so for every other run whose pod runs this long the write is tried and
    refused (one row of a batched statement, no change); a run that finishes sooner is
    settled by its completion and never tried."""
    job_lost_grace: Seconds = field(default=5.0, metadata=positive())
    """After a Job is deleted, how long a completion may still arrive before its
    ``RUNNING`` run is failed as lost (re-checked on the shard first)."""
    watch_timeout: int = field(default=WATCH_SECONDS, metadata=positive())
    """Seconds a watch request lasts before it is resumed (the API server's own cap)."""
    watch_max_backoff: Seconds = field(default=MAX_BACKOFF, metadata=positive())
    """Longest wait between attempts to reach an unreachable shard."""
    remembered_failures: int = field(default=100_000, metadata=positive())
    """Pod failures (reason, exit code) remembered until their Job fails; bounded so a
    storm of failing pods cannot grow the process without limit."""

    # -- sweeps ------------------------------------------------------------------------
    sweep_interval: Seconds = field(default=15.0, metadata=positive())
    """Time between sweeps of the checkpoint store."""
    sweep_batch: int = field(default=1000, metadata=positive())
    """Rows read per page (keyset pagination)."""
    sweep_max_rows: int = field(default=50_000, metadata=positive())
    """Rows of one kind looked at per sweep; the next sweep continues where this one
    stopped, so one sweep stays bounded however large the backlog."""
    redis_check_interval: Seconds = field(default=2.0, metadata=positive())
    """How often the leader looks for Redis' marker key, whose absence shows that Redis
    lost its data; the queued runs are then queued again at once from the checkpoints
    (one ``SET NX`` per look: a loss costs runs seconds, not the minute of the queue grace)."""
    heal_grace: Seconds = field(default=2.0, metadata=positive())
    """After Redis lost its data, ``BUFFERED`` runs changed more recently than this are
    left to a second pass this much later: they may be between their checkpoint and their
    push (which then lands in the new Redis)."""
    queue_grace: Seconds = field(default=60.0, metadata=positive())
    """A ``BUFFERED`` run modified more recently than this is left alone: it may be between
    its checkpoint and its push, or just taken off a queue."""
    max_requeues: int = field(default=5, metadata=positive())
    """A ``BUFFERED`` run found in no queue is pushed back until its attempt count reaches
    this (dispatch failures count too); then it is ``SCHEDULING_FAILED``."""
    new_grace: Seconds = field(default=120.0, metadata=positive())
    """A run still ``NEW`` this long after its last change is stuck: recovered when its
    input exists, otherwise ``SCHEDULING_FAILED``."""
    running_grace: Seconds = field(default=30.0, metadata=positive())
    """A ``RUNNING`` run changed more recently than this is not swept: not checked for a
    lost Job (watch latency), nor for a Job that succeeded without its report."""
    deadline_slack: Seconds = field(default=60.0, metadata=at_least(0))
    """A Job still active this long past its run's ``deadlineSeconds`` (from ``sent_at``)
    is one Kubernetes did not stop: the run becomes ``DEADLINE_EXCEEDED``, the Job deleted."""
    max_queue_time: Seconds = field(default=86_400.0, metadata=at_least(0))
    """A run ``BUFFERED`` longer than this since it was received is ``DEADLINE_EXCEEDED``
    (0: no limit). A day: a client waiting longer has given up."""
    retention: Seconds = field(default=0.0, metadata=at_least(0))
    """Finished runs received longer ago than this are deleted with their stored input
    and result; 0 (the default) keeps everything, because deleting is the operator's
    decision."""
    orphan_interval: Seconds = field(default=3600.0, metadata=at_least(0))
    """Time from the end of one crawl of the stored inputs to the start of the next: inputs
    older than ``orphan_age`` whose run was never recorded (a scheduler died between the
    upload and the checkpoint, an upload landed after it was given up on) are deleted
    (:mod:`maintainer.orphans`); 0: never. Hourly, because they cost only storage."""
    orphan_age: Seconds = field(default=3600.0, metadata=at_least(600))
    """A stored input younger than this (by its ``LastModified``) is left alone by the
    crawl, whether its run exists or not: its submission may still be writing the run.
    A submission takes seconds, and a scheduler's own look at an input whose run it could
    not record gives up after 10 minutes (the least allowed); an hour leaves a wide margin."""
    orphan_page_pause: Seconds = field(default=2.0, metadata=at_least(0))
    """Pause between pages (1,000 inputs) of the crawl, so that it costs next to nothing
    while it runs: a million stored inputs are crawled in about 35 minutes."""
    limit_reconcile_interval: Seconds = field(default=30.0, metadata=positive())
    """How often the concurrency limits' slot sets are made to agree with the checkpoints
    (finished runs let go, RUNNING runs counted). The scheduler pods let finished runs go
    themselves as soon as a limit is full; this catches what Redis lost."""
    adopt_interval: Seconds = field(default=1.0, metadata=positive())
    """How often the queues of scheduler pods whose heartbeat expired are adopted; the
    delay from a pod's death to adoption is its heartbeat TTL plus at most this."""


def _label_value(value: str) -> bool:
    return bool(_LABEL_VALUE.match(value))


_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")


@dataclass(frozen=True)
class ReplicationSection:
    """The configuration controller: copies of templates, workgroups and what they use.

    The leading maintainer keeps a copy of every template and workgroup of the controller
    namespace, and of the Secrets and ConfigMaps templates reference, in each shard's
    runtime namespace (README, "Deploying")."""

    enabled: bool = False
    """Whether to keep the copies. Off by default because a single cluster that is its own
    shard needs none; the controller overlay of the deployment package turns it on."""
    owner: str = field(
        default="nexus", metadata=check(_label_value, "a label value (letters, digits, -_.)")
    )
    """Names this deployment's copies (label ``science.sneaksanddata.com/configuration-owner``):
    objects on a shard without it, or with another owner, are never changed or deleted.
    Deployments that share a shard cluster need different owners."""
    interval: Seconds = field(default=60.0, metadata=positive())
    """Time between full reconciles of a shard: its copies listed, compared with the
    controller cluster and the difference written. Changes reach shards at once through
    the watch; the full pass repairs copies edited or deleted on a shard by other hands,
    for four list calls per shard a minute."""
    max_backoff: Seconds = field(default=MAX_BACKOFF, metadata=positive())
    """Longest wait between attempts to reach a shard (or the controller cluster) that is
    down; when it answers again it is caught up in full."""


@dataclass(frozen=True)
class MaintainerSettings:
    http: HttpSettings = field(default_factory=lambda: HttpSettings(port=8082))
    log: LogSettings = field(default_factory=LogSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    shards: ShardSettings = field(default_factory=ShardSettings)
    maintainer: MaintainerSection = field(default_factory=MaintainerSection)
    replication: ReplicationSection = field(default_factory=ReplicationSection)
