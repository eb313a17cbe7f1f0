"""The scheduler's settings: shared sections plus its own ``auth``, ``signing`` and
``scheduler`` sections (``NEXUS__SCHEDULER__PUBLIC_URL`` and so on)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from nexus.core.config import (
    Bytes,
    HttpSettings,
    LogSettings,
    PostgresSettings,
    RedisSettings,
    Seconds,
    ShardSettings,
    SigningSettings,
    StorageSettings,
    at_least,
    check,
    positive,
    secret,
)
from nexus.scheduler.teamsettings import TeamSettings


@dataclass(frozen=True)
class ServiceToken:
    """A bearer token for a caller (a backend or a person), stored as its SHA-256."""

    caller: str
    sha256: str
    """Hex SHA-256 of the token; the token itself is never configured or logged."""
    algorithms: tuple[str, ...] = ("*",)
    """Algorithms the caller may run; ``*`` means all."""
    weight: float | None = None
    """The caller's fair-share weight, unless ``teams.callers`` gives one."""
    grants: tuple[str, ...] = ()
    """Algorithms whose runs of every caller this one may see, read, list and cancel
    (``*``: all), as an operator's or a support tool's token must; without a grant a caller
    sees only the runs it submitted."""


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the public API (every route except probes and metrics)."""

    service_tokens: tuple[ServiceToken, ...] = field(default=(), repr=False, metadata=secret())
    """Bearer tokens, as JSON ``[{"caller", "sha256", "algorithms", "weight", "grants"}]``:
    each names its caller, the hex SHA-256 of its token, the algorithms it may run
    (``["*"]`` for all) and, optionally, its fair-share weight and the algorithms whose
    runs of every caller it may see (``["*"]`` for all; by default only its own runs)."""
    jwt_hs256_secret: str = field(default="", repr=False, metadata=secret())
    """Shared secret for HS256 JWTs (at least 32 bytes); empty disables HS256."""
    jwt_rs256_public_key: str = ""
    """PEM public key for RS256 JWTs; empty disables RS256."""
    jwt_jwks_url: str = ""
    """URL of the identity provider's JSON Web Key Set (its ``jwks_uri``): JWTs naming one of
    its keys (``kid``) are checked with it (RS*, PS*, ES*, EdDSA). Fetched at start, again
    for a kid it does not have, and every ``jwt_jwks_refresh_interval``. Empty disables it."""
    jwt_oidc_discovery: bool = False
    """Find the key set by OpenID Connect discovery instead: the ``jwks_uri`` of
    ``{jwt_issuer}/.well-known/openid-configuration``, whose ``issuer`` must be
    ``jwt_issuer``."""
    jwt_jwks_refresh_interval: Seconds = field(default=3600.0, metadata=positive())
    """How often the key set is fetched again, so that keys the provider withdrew stop being
    trusted. An hour: providers publish a key well before signing with it, and a JWT naming
    a key not yet fetched fetches the set at once."""
    jwt_jwks_min_interval: Seconds = field(default=30.0, metadata=at_least(0))
    """Least time between two fetches caused by JWTs naming unknown keys: a flood of made-up
    kids costs the identity provider one fetch per interval per pod. A new key is found
    at its first JWT unless such a fetch happened less than this before."""
    jwt_jwks_timeout: Seconds = field(default=5.0, metadata=positive())
    """A fetch of the discovery document or the key set that takes longer fails; a JWT
    waiting for it is answered 503."""
    jwt_issuer: str = ""
    """Required ``iss`` of JWTs (required when JWTs are enabled)."""
    jwt_audience: str = "nexus"
    """Required ``aud`` of JWTs."""
    jwt_algorithms_claim: str = "nexus/algorithms"
    """Claim listing the algorithms a JWT's bearer may run (``*`` for all), like tokens do."""
    jwt_grants_claim: str = "nexus/grants"
    """Claim listing the algorithms whose runs of every caller the bearer may see, read,
    list and cancel (``*`` for all), like a token's ``grants``; absent, only its own."""
    jwt_caller_claim: str = "sub"
    """Claim naming the caller (recorded with every run it submits)."""
    jwt_weight_claim: str = "nexus/weight"
    """Claim giving the caller's fair-share weight (a number), unless ``teams.callers``
    gives one."""
    jwt_leeway: Seconds = field(default=30.0, metadata=at_least(0))
    """Clock skew tolerated on ``exp``/``nbf``."""


def _default_pod_name() -> str:
    # Pod names are unique in Kubernetes; several local processes share a host name.
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class SchedulerSection:
    """The scheduler's own behaviour."""

    pod_name: str = field(default_factory=_default_pod_name)
    """This process's identity: names its queue and heartbeat. Unique per process."""
    public_url: str = "http://127.0.0.1:8080"
    """Base URL clients and algorithm containers use to reach the scheduler (for signed
    links to inline inputs and results, and ``NEXUS__SCHEDULER_URL``, where algorithms
    start child runs)."""
    receiver_url: str = "http://127.0.0.1:8081"
    """Receiver base URL given to algorithm containers, unless ``receiver_urls`` names one
    for the run's shard."""
    receiver_urls: dict[str, str] = field(default_factory=dict)
    """Receiver base URL by shard name (each shard has its own receiver)."""
    max_queue_depth: int = field(default=200_000, metadata=positive())
    """Runs waiting in this pod's queue for one shard beyond which new runs get 429."""
    heartbeat_interval: Seconds = field(default=2.0, metadata=positive())
    """How often this pod renews its heartbeat; a fifth of ``heartbeat_ttl`` tolerates a
    few missed renewals."""
    heartbeat_ttl: Seconds = field(default=10.0, metadata=positive())
    """A pod whose heartbeat is older than this is dead and its queue is adopted."""
    dispatch_batch: int = field(default=200, metadata=positive())
    """Runs taken off the queue per round trip."""
    dispatch_concurrency: int = field(default=64, metadata=positive())
    """Job creations in flight per shard."""
    dispatch_linger: Seconds = field(default=0.03, metadata=at_least(0))
    """After taking less than a full batch, wait this long before taking the next: a Job
    starts up to 30 ms later, and every queue, checkpoint and throttle call serves several
    runs instead of one or two. The next is taken only if runs were queued here meanwhile;
    else at the next idle poll (``dispatch_idle_poll``) or as soon as some are."""
    queue_push_delay: Seconds = field(default=0.02, metadata=at_least(0))
    """How long an accepted run may wait for company before its queue push is sent (one
    round trip for all the runs that wait). Nobody waits for it: a run is durable and
    answered (202) once its checkpoint is written, and queued after. At moderate load a
    push then carries the runs of two or three checkpoint batches, not one; the first
    Job is made up to this much later, within ``dispatch_linger`` when it lingers."""
    dispatch_idle_poll: Seconds = field(default=0.25, metadata=positive())
    """How often a dispatcher that just found its queue empty looks again for runs that
    others put on it (adopted, queued again by the maintainer)."""
    dispatch_idle_poll_max: Seconds = field(default=2.0, metadata=positive())
    """While its queue stays empty, a dispatcher looks twice as long after each empty look,
    up to this: a pod at rest then costs next to nothing. Runs the pod queues itself wake
    it at once, and runs it delays when they are due; runs others put on its queue wait
    at most this long."""
    max_dispatch_attempts: int = field(default=8, metadata=positive())
    """Failed creations (5xx, network) before a run is SCHEDULING_FAILED, once the shard
    says its Job does not exist (while it cannot say, the run is tried again)."""
    retry_base_delay: Seconds = field(default=1.0, metadata=positive())
    """Delay before the first retry of a creation that failed (5xx, network); doubles."""
    retry_max_delay: Seconds = field(default=60.0, metadata=positive())
    """Longest delay between creation retries."""
    throttle_burst: Seconds = field(default=0.1, metadata=positive())
    """Burst of a shard's throttle, as seconds' worth of its rate."""
    throttle_recovery: float = field(default=0.05, metadata=positive())
    """After a 429, the rate regains this share of its configured value per second."""
    job_ttl_after_finished: int = field(default=3600, metadata=at_least(0))
    """Seconds Kubernetes keeps a finished Job (``ttlSecondsAfterFinished``)."""
    result_url_margin: Seconds = field(default=3600.0, metadata=at_least(0))
    """A result upload URL stays valid this long past the run's deadline."""
    result_inline_limit: Bytes = field(default=256 * 1024, metadata=at_least(0))
    """Largest result an algorithm is told it may report inside its completion
    (``NEXUS__RESULT_INLINE_LIMIT`` in its Job); larger ones go to the presigned PUT. Keep
    it at most the receivers' ``max_inline_result`` (which refuses more with 413, and the
    SDK then falls back to the PUT); 0 tells algorithms to always PUT."""
    job_input_limit: Bytes = field(
        default=16 * 1024,
        metadata=check(lambda v: 0 <= v <= 64 * 1024, "a size from 0 to 64 KiB"),
    )
    """Largest inline input carried inside its Job (``NEXUS__INPUT``), so that its algorithm
    reads it there instead of fetching it from the scheduler: one HTTP exchange fewer per
    run. Bounded because the input is then stored in the Job and its Pod, and every watch of
    them carries it; larger inputs, and inputs this pod no longer remembers, are fetched
    from the signed link as before (0: always). At most 64 KiB: Linux starts no process
    with an environment variable over 128 KiB, so a larger limit would let runs fail to
    start."""
    recent_inputs: Bytes = field(default=32 * 1024**2, metadata=at_least(0))
    """Memory for the newest inline inputs, served to their algorithms without a database
    read (0 turns it off)."""
    max_tag_length: int = field(default=128, metadata=positive())
    """Longest ``tag`` a request may carry, in characters."""


@dataclass(frozen=True)
class SchedulerSettings:
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    shards: ShardSettings = field(default_factory=ShardSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    signing: SigningSettings = field(default_factory=SigningSettings)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    teams: TeamSettings = field(default_factory=TeamSettings)
