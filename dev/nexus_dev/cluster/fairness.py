"""API Priority and Fairness, emulated: rate and concurrency limits that answer 429.

A real API server sheds load it cannot take with ``429 Too Many Requests``, a
``Retry-After: 1`` header and a ``Status`` of reason ``TooManyRequests``; Nexus's
throttle must stay under the limit and honour those answers (DESIGN §7.3). This module
gives each shard configurable limits with the same answer:

* mutating requests (create, update, patch, delete) per second — a token bucket with a
  configurable burst — and mutating requests in flight;
* optionally the same two limits for reads (get, list); watches are long-running and,
  as in Kubernetes, are not counted against the in-flight limit.

Every request is counted, accepted or rejected, per verb and resource, in a per-shard
:class:`prometheus_client.CollectorRegistry` (several shards live in one process; a
global registry would mix them) served at ``GET /metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nexus_dev.cluster.statuses import ApiError

MUTATING_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Limits:
    """Load a shard's API server accepts before answering 429; ``None`` means unlimited."""

    mutating_rate: float | None = None
    """Mutating requests per second, sustained (token bucket refill rate)."""
    mutating_burst: int | None = None
    """Mutating requests accepted at once after a quiet spell; default: one second's worth."""
    mutating_inflight: int | None = None
    """Mutating requests being served at the same time (``--max-mutating-requests-inflight``)."""
    read_rate: float | None = None
    """Reads (get, list) per second."""
    read_burst: int | None = None
    """Reads accepted at once; default: one second's worth."""
    read_inflight: int | None = None
    """Reads being served at the same time (``--max-requests-inflight``)."""


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; :meth:`take` spends one if there is one."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int | None) -> None:
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, round(rate)))
        self.tokens = self.burst
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Gauges(Collector):
    """Gauges computed when scraped (object counts, watchers, requests in flight)."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, documentation, labels, value in self.read():
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(
                    name, documentation, labels=list(labels)
                )
            family.add_metric(list(labels.values()), value)
        return list(families.values())


class Fairness:
    """Admission of one shard's requests under its :class:`Limits`, with counters."""

    def __init__(self, limits: Limits, registry: CollectorRegistry) -> None:
        self.limits = limits
        self.mutating_bucket = (
            TokenBucket(limits.mutating_rate, limits.mutating_burst)
            if limits.mutating_rate
            else None
        )
        self.read_bucket = (
            TokenBucket(limits.read_rate, limits.read_burst) if limits.read_rate else None
        )
        self.inflight = {True: 0, False: 0}
        self._accepted = Counter(
            "devcluster_requests_accepted_total",
            "Requests admitted by the emulated API Priority and Fairness, by verb and resource.",
            ["verb", "resource"],
            registry=registry,
        )
        self._rejected = Counter(
            "devcluster_requests_rejected_total",
            "Requests answered 429 by the emulated API Priority and Fairness, by verb, "
            "resource and the limit that was hit (rate or concurrency).",
            ["verb", "resource", "reason"],
            registry=registry,
        )
        self._accepted_children: dict[tuple[str, str], Counter] = {}
        self._rejected_children: dict[tuple[str, str, str], Counter] = {}

    def admit(self, verb: str, resource: str) -> bool:
        """Admit a request or raise the 429 a real server sends; True means "release me".

        Watches are admitted without counting them in flight (long-running requests).
        """
        mutating = verb in MUTATING_VERBS
        limits = self.limits
        if mutating:
            inflight_limit, bucket = limits.mutating_inflight, self.mutating_bucket
        elif verb == "watch":
            inflight_limit, bucket = None, None
        else:
            inflight_limit, bucket = limits.read_inflight, self.read_bucket
        if inflight_limit is not None and self.inflight[mutating] >= inflight_limit:
            self._reject(verb, resource, "concurrency")
        if bucket is not None and not bucket.take():
            self._reject(verb, resource, "rate")
        child = self._accepted_children.get((verb, resource))
        if child is None:
            child = self._accepted_children[(verb, resource)] = self._accepted.labels(
                verb, resource
            )
        child.inc()
        if verb == "watch":
            return False
        self.inflight[mutating] += 1
        return True

    def release(self, verb: str) -> None:
        self.inflight[verb in MUTATING_VERBS] -= 1

    def _reject(self, verb: str, resource: str, reason: str) -> None:
        key = (verb, resource, reason)
        child = self._rejected_children.get(key)
        if child is None:
            child = self._rejected_children[key] = self._rejected.labels(*key)
        child.inc()
        raise ApiError.too_many_requests()

    def gauges(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        for mutating, label in ((True, "mutating"), (False, "readOnly")):
            yield (
                "apiserver_current_inflight_requests",
                "Requests being served, by kind (mutating or readOnly), as the API server counts.",
                {"request_kind": label},
                float(self.inflight[mutating]),
            )


def gauge_collector(
    read: Callable[[], Iterable[tuple[str, str, dict[str, str], float]]],
) -> Collector:
    """A collector that reports ``(name, help, labels, value)`` tuples when scraped."""
    return _Gauges(read)
