"""Settings: one frozen dataclass per service, built from shared sections.

A service's settings class is a frozen dataclass whose fields are *sections* (themselves
frozen dataclasses such as :class:`PostgresSettings`). Values come from, in rising
precedence (:mod:`nexus.core.settingsources`):

1. the defaults written below, each with its unit and the reason for it;
2. an optional YAML or TOML file (``NEXUS__CONFIG_FILE`` or ``--config``) of the shape
   ``{section: {key: value}}``;
3. files in a secrets directory (``NEXUS__SECRETS_DIR``), named ``SECTION__KEY``;
4. environment variables ``NEXUS__SECTION__KEY`` (upper case), or ``NEXUS__SECTION__KEY_FILE``
   naming a file that holds the value, as mounted Kubernetes Secrets provide them.

Settings marked :func:`secret` (passwords in DSNs and URLs, keys, tokens) are never shown:
not in an error message, not in a ``repr``, not in a log.

Settings are loaded once, at start-up, and validated completely before anything connects:
a wrong or missing value raises :class:`ConfigError` whose one-line message names the key
and what was expected, and the process exits with status 2.

Keys of a section the service does not have are ignored, so one environment or file can
serve every service; an unknown key inside a section the service *does* have is an error,
because it is almost always a typo.

Durations are seconds (``float``) and also accept ``500ms``, ``30s``, ``5m``, ``24h``,
``7d``; sizes are bytes (``int``) and also accept ``512KiB``, ``1MiB``, ``2GiB``.
Structured values (lists, mappings) are JSON in the environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from nexus.core.errors import ConfigError
from nexus.core.settingsources import CONFIG_FILE_ENV as CONFIG_FILE_ENV
from nexus.core.settingsources import ENV_PREFIX as ENV_PREFIX
from nexus.core.settingsources import raw_settings

S = TypeVar("S")


class _Unit:
    def __init__(self, name: str) -> None:
        self.name = name


SECONDS = _Unit("seconds")
BYTES = _Unit("bytes")

Seconds = Annotated[float, SECONDS]
"""A duration in seconds; also written ``500ms``, ``30s``, ``5m``, ``24h``, ``7d``."""

Bytes = Annotated[int, BYTES]
"""A size in bytes; also written ``512KiB``, ``1MiB``, ``2GiB`` (or ``kB``/``MB``/``GB``)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|kB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "kB": 1000, "MB": 1000**2, "GB": 1000**3,
}  # fmt: skip
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``"24h"`` → ``86400.0``); ``ValueError`` when malformed."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``"1MiB"`` → ``1048576``); ``ValueError`` when malformed."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def check(predicate: Callable[[Any], bool], expected: str) -> dict[str, Any]:
    """Field metadata: the value must satisfy ``predicate``; ``expected`` says what is wanted."""
    return {"check": (predicate, expected)}


def secret(**metadata: Any) -> dict[str, Any]:
    """Field metadata: the value is a secret, never shown in errors, ``repr`` or docs
    (give the field ``repr=False`` too); other metadata (a :func:`check`) may be added."""
    return {**metadata, "secret": True}


def is_secret(spec: dataclasses.Field[Any]) -> bool:
    return bool(spec.metadata.get("secret"))


def positive() -> dict[str, Any]:
    return check(lambda v: v > 0, "a value > 0")


def at_least(low: float) -> dict[str, Any]:
    return check(lambda v: v >= low, f"a value ≥ {low:g}")


# -- shared sections ---------------------------------------------------------------------


@dataclass(frozen=True)
class LogSettings:
    """Logging of every service."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level. INFO logs every state change a person might ask about, not every run."""
    format: Literal["json", "text"] = "json"
    """``json`` for machines (one object per line), ``text`` for people at a terminal."""


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP server of a service (public API, probes and metrics)."""

    host: str = "0.0.0.0"
    """Listen address. All interfaces, because in a pod the kubelet probes the pod IP."""
    port: int = field(default=8080, metadata=check(lambda v: 0 <= v < 65536, "a port number"))
    """Listen port; 0 picks a free one (tests)."""
    metrics_port: int | None = field(
        default=None, metadata=check(lambda v: 0 < v < 65536, "a port number")
    )
    """Port of a listener of its own for ``/metrics``, which then leaves ``port``. Unset
    keeps ``/metrics`` beside the API, as before; in a cluster set it, so that a network
    policy can let Prometheus in on this port alone and nobody reads metrics through the
    public one."""
    shutdown_timeout: Seconds = field(default=20.0, metadata=positive())
    """How long background loops, and then the requests still in flight, may take to
    finish after SIGTERM. The pod's termination grace period must exceed twice this plus a
    quarter (loops that overrun are cancelled) plus ``drain_delay``, so that clients are
    closed before the SIGKILL."""
    drain_delay: Seconds = field(default=2.0, metadata=at_least(0))
    """Time between turning not-ready and closing the listener, so that load balancers stop
    sending new requests before the port closes (0 in tests)."""
    max_body_size: Bytes = field(default=1024**2, metadata=positive())
    """Largest request body accepted; larger ones get 413."""
    backlog: int = field(default=1024, metadata=positive())
    """Listen backlog; bursts of thousands of connections must not be refused."""
    reuse_port: bool = False
    """Listen with ``SO_REUSEPORT``, so that several processes on one host share ``port``
    and the kernel spreads new connections over those listening (Linux), as a Service
    spreads them over its pods: a replacement starts listening beside the old process,
    which then stops gracefully. Off in a pod, where each process has its own address.
    ``metrics_port`` is not shared: leave it unset with this, or the second process cannot
    start (``/metrics`` is then served on ``port``, each scrape by one of the processes)."""


@dataclass(frozen=True)
class PostgresSettings:
    """The checkpoint store."""

    dsn: str = field(
        default="postgresql://nexus@127.0.0.1:5432/nexus", repr=False, metadata=secret()
    )
    """libpq connection URI of the checkpoint database, with its password."""
    pool_min_size: int = field(default=2, metadata=at_least(1))
    """Connections kept open; the group-commit writer needs one, readers the rest."""
    pool_max_size: int = field(default=8, metadata=at_least(2))
    """Upper bound per process. Batching makes a few connections enough; more only costs
    the server memory and context switches."""
    command_timeout: Seconds = field(default=10.0, metadata=positive())
    """A statement that takes longer is cancelled and the caller gets a 503."""
    connect_timeout: Seconds = field(default=5.0, metadata=positive())
    """A new connection not made within this long counts as the store being down (503).
    asyncpg's own default, 60 s, would hold a request and a pool slot for a minute where
    a server vanished without refusing (a firewall dropping packets)."""
    acquire_timeout: Seconds = field(default=10.0, metadata=positive())
    """The longest a call waits for a pooled connection (all busy, or being made) before
    it is answered 503 with ``Retry-After``: no wait without a deadline. As long as a
    statement may take, so a pool kept busy by slow statements refuses, not queues."""
    batch_max_size: int = field(default=500, metadata=positive())
    """Largest number of writes group-committed in one round trip."""
    batch_max_delay: Seconds = field(default=0.01, metadata=at_least(0))
    """How long a new run's checkpoint may wait for company before its batch is sent,
    unless ``batch_min_size`` others join sooner. A client waits for it: 10 ms keeps p99
    well inside an HTTP client's patience and, at a few hundred runs a second, puts
    several runs in each statement (at 400 runs/s, 4 instead of 2)."""
    batch_min_size: int = field(default=16, metadata=positive())
    """A batch of writes goes out as soon as this many wait, whatever its delay: under
    load statements fill long before it, and nobody waits for the delay."""
    transition_max_delay: Seconds = field(default=0.03, metadata=at_least(0))
    """The same for lifecycle transitions (RUNNING, completions). Nobody waits on these
    but a container's completion call, so 30 ms buys batches several times larger at
    moderate load: fewer statements, less CPU per run."""
    transition_min_size: int = field(default=64, metadata=positive())
    """The ``batch_min_size`` of lifecycle transitions: under load they wait for this many
    (or ``transition_max_delay``) rather than 16. PostgreSQL spends some 700,000
    instructions on a statement whatever its rows (reading back the triggers' WHEN
    clauses and the CHECKs, starting the executor), a fifth of a completion's at 16 runs a
    statement: at 800 completions/s a batch holds 24 instead of 16 (189,000 -> 170,000
    instructions a run, ``benchmarks/transition_sql.py --batch``), for 10 ms more before
    a completion is recorded."""
    max_pending: int = field(default=20_000, metadata=positive())
    """Writes waiting for the store beyond this are refused (the API answers 503)."""
    migrate_at_start: bool = True
    """Apply pending schema migrations when a service starts (an advisory lock keeps
    concurrent starts safe). Turn it off where ``nexus migrate`` runs before the services
    (a Kubernetes Job): a service then only waits for the schema its code needs, and its
    database user needs no right to change the schema. ``nexus migrate`` always migrates."""
    schema_wait: Seconds = field(default=240.0, metadata=positive())
    """With ``migrate_at_start`` off, how long start-up waits for the schema to reach the
    version the code needs before it fails. Four minutes stays inside the five a pod's
    start-up probe allows, so the process says why it stops before it is killed."""


@dataclass(frozen=True)
class RedisSettings:
    """Virtual queues, throttle state, heartbeats and leases."""

    url: str = field(default="redis://127.0.0.1:6379/0", repr=False, metadata=secret())
    """redis:// URL (rediss:// for TLS), with its password if the server wants one."""
    key_prefix: str = "nexus"
    """Every key starts with this, so several deployments (or tests) can share a server."""
    max_connections: int = field(default=32, metadata=positive())
    """Connection pool size per process; commands are pipelined, so few are needed."""
    socket_timeout: Seconds = field(default=5.0, metadata=positive())
    """A command without an answer for this long counts as Redis being unavailable."""


@dataclass(frozen=True)
class StorageSettings:
    """S3-compatible object storage for inputs and results."""

    endpoint_url: str | None = None
    """S3 endpoint; unset means AWS."""
    presign_endpoint_url: str | None = None
    """Endpoint written into presigned URLs, when algorithm containers and clients reach
    storage by another address than Nexus does; unset means ``endpoint_url``."""
    client_presign_endpoint_url: str | None = None
    """Endpoint written into presigned URLs handed to API clients (result URLs, input
    redirects), when they reach storage by another address than algorithm containers do
    (a public address, containers using one inside their network); unset means
    ``presign_endpoint_url``."""
    region: str = "us-east-1"
    """Region that requests are signed for (SigV4)."""
    access_key_id: str = field(default="", repr=False, metadata=secret())
    """Access key of long-term credentials (an IAM user's, or the HMAC keys of an
    S3-compatible store: GCS interoperability, MinIO, Ceph...). Empty means botocore's
    default credential chain: ``AWS_*`` environment variables, a profile
    (``AWS_PROFILE``, ``credential_process``), web identity (EKS IRSA), container
    credentials (ECS, EKS Pod Identity), then the instance profile. Temporary credentials
    are renewed in the background; URLs signed with them expire with them. See
    docs/credentials.md for the identity each kind of cluster needs."""
    secret_access_key: str = field(default="", repr=False, metadata=secret())
    """Secret of ``access_key_id``."""
    bucket: str = "nexus"
    """Bucket holding inputs (``inputs/algorithm={name}/{id}``) and results."""
    prefix: str = ""
    """Key prefix inside the bucket, for sharing a bucket between deployments."""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    """Where the bucket goes in a URL. ``path`` (``endpoint/bucket/key``) works with every S3
    server, local ones included; ``virtual`` (``bucket.endpoint/key``) is what AWS
    recommends, and needs a bucket name that is a DNS label (no dots) and an endpoint
    named by host name (checked at start); ``auto`` is virtual on AWS and path
    elsewhere. Presigned URLs, uploads and downloads all use it."""
    max_connections: int = field(default=64, metadata=positive())
    """Concurrent connections to the storage endpoint per process."""
    request_timeout: Seconds = field(default=10.0, metadata=positive())
    """The longest an upload (retries included) or a read of an object may take before it
    counts as storage being unavailable (a submission then answers 503). Without it a
    store that accepts connections but does not answer — SeaweedFS starting, a frozen
    host — held submissions for as long as 90 s (three tries of 30 s) and the
    maintainer's sweeps with them."""


@dataclass(frozen=True)
class ShardSettings:
    """The Kubernetes clusters Nexus talks to."""

    kubeconfig_dir: Path = Path("/etc/nexus/shards")
    """Folder of ``<shard-name>.kubeconfig`` files, one per shard cluster."""
    controller_kubeconfig: Path | None = None
    """Kubeconfig of the controller cluster holding templates and workgroups; unset means
    in-cluster configuration."""
    controller_namespace: str = "nexus"
    """Namespace of the NexusAlgorithmTemplate and NexusAlgorithmWorkgroup resources."""
    runtime_namespace: str = "nexus"
    """Namespace on each shard where algorithm Jobs run."""
    create_rate: dict[str, float] = field(default_factory=dict)
    """Job creations per second allowed on a shard, by shard name, across all scheduler
    pods. Shards not named here get ``default_create_rate``."""
    default_create_rate: float = field(default=50.0, metadata=positive())
    """Kubernetes' default API Priority and Fairness budget for a workload is small; 50/s
    is safe for a dedicated API server and is raised per shard when measured."""
    request_timeout: Seconds = field(default=10.0, metadata=positive())
    """A call to a shard's API server that takes longer is treated as a network error."""


@dataclass(frozen=True)
class SigningSettings:
    """Keys for run tokens and signed links; the scheduler and the receiver share them."""

    keys: tuple[str, ...] = field(default=(), repr=False, metadata=secret())
    """HMAC keys, newest first: the first signs, all verify (so keys can rotate)."""


# -- loading -----------------------------------------------------------------------------


def load_settings(
    cls: type[S],
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> S:
    """Build ``cls`` from defaults, the optional file and the environment; validate all.

    ``cls`` is a frozen dataclass of sections. Raises :class:`ConfigError` naming the first
    offending key.
    """
    env = os.environ if env is None else env
    hints = get_type_hints(cls, include_extras=True)
    section_fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for section in section_fields:
        if not dataclasses.is_dataclass(hints[section.name]):
            raise TypeError(f"{cls.__name__}.{section.name} is not a settings section")
    names = {s.name: [f.name for f in dataclasses.fields(hints[s.name])] for s in section_fields}
    raw = raw_settings(names, env, config_file)
    sections: dict[str, Any] = {}
    for section in section_fields:
        base = None  # a service may give a section other defaults (e.g. another port)
        if section.default is not dataclasses.MISSING:
            base = section.default
        elif section.default_factory is not dataclasses.MISSING:
            base = section.default_factory()
        prefix = f"{ENV_PREFIX}{section.name.upper()}__"
        sections[section.name] = _build(hints[section.name], raw[section.name], prefix, base)
    return cls(**sections)


def _build(
    cls: type[Any],
    raw: Mapping[str, tuple[Any, str]],
    where: str,
    base: Any = None,
    *,
    secret: bool = False,
) -> Any:
    """``cls`` from ``raw`` (key → (value, origin)), other fields from ``base`` or the
    defaults; ``where`` prefixes names in errors; ``secret`` hides every value."""
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, (_, origin) in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin}: unknown setting (this section has: {known})")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        hidden = secret or is_secret(spec)
        if name in raw:
            value, origin = raw[name]
            values[name] = _convert(
                value, hints[name], origin, from_env=isinstance(value, str), secret=hidden
            )
        elif base is not None:
            values[name] = getattr(base, name)
            continue
        else:
            has_default = spec.default is not dataclasses.MISSING
            if not has_default and spec.default_factory is dataclasses.MISSING:
                missing = f"{where}{name.upper()}" if where.endswith("__") else f"{where}.{name}"
                raise ConfigError(f"{missing}: required setting is missing")
            continue
        checker = spec.metadata.get("check")
        if checker is not None:
            predicate, expected = checker
            if values[name] is not None and not predicate(values[name]):
                raise ConfigError(
                    f"{origin}: expected {expected}, got {_shown(values[name], hidden)}"
                )
    return cls(**values)


def _shown(value: Any, secret: bool) -> str:
    """``value`` as an error message may show it: a secret one is not shown at all."""
    return "a secret value (not shown)" if secret else repr(value)


def _convert(value: Any, hint: Any, origin: str, *, from_env: bool, secret: bool = False) -> Any:
    """``value`` as type ``hint``; ``ConfigError`` naming ``origin`` (and, unless
    ``secret``, showing the value) when it is not one."""
    unit = None
    if get_origin(hint) is Annotated:
        hint, unit, *_ = get_args(hint)
    kind = get_origin(hint)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{origin}: expected {expected}, got {_shown(value, secret)}")

    if kind in (types.UnionType, typing.Union):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (from_env and value == ""):
            return None
        return _convert(value, options[0], origin, from_env=from_env, secret=secret)
    if kind is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise fail("one of " + ", ".join(map(str, choices)))
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise fail("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return parse_size(value) if unit is BYTES else int(value.strip())
            except ValueError:
                pass
        raise fail("a size such as 1048576 or 1MiB" if unit is BYTES else "an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return parse_duration(value) if unit is SECONDS else float(value.strip())
            except ValueError:
                pass
        raise fail("a duration such as 30s, 5m or 24h" if unit is SECONDS else "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail("a string")
    if hint is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise fail("a path")
    if kind in (tuple, list, dict) or dataclasses.is_dataclass(hint):
        if from_env and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                if kind in (tuple, list):  # a plain comma-separated list is fine too
                    value = [part.strip() for part in value.split(",") if part.strip()]
                else:
                    raise fail("a JSON object") from None
        if kind in (tuple, list):
            if not isinstance(value, list | tuple):
                raise fail("a list")
            (item,) = get_args(hint)[:1]
            items = [
                _convert(v, item, f"{origin}[{i}]", from_env=False, secret=secret)
                for i, v in enumerate(value)
            ]
            return tuple(items)
        if kind is dict:
            if not isinstance(value, Mapping):
                raise fail("a mapping")
            key_hint, value_hint = get_args(hint)
            return {
                _convert(k, key_hint, origin, from_env=False, secret=secret): _convert(
                    v, value_hint, f"{origin}.{k}", from_env=False, secret=secret
                )
                for k, v in value.items()
            }
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        nested = {str(k): (v, f"{origin}.{k}") for k, v in value.items()}
        return _build(hint, nested, origin, secret=secret)
    raise TypeError(f"unsupported settings type {hint!r} at {origin}")
