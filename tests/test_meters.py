"""The hot paths' counters and histograms expose what prometheus_client's would."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from nexus.core.meters import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.0025, 0.01, 0.1, 1, 10)
SEEN = (0.0005, 0.001, 0.002, 0.0025, 0.5, 1.0, 3.0, 11.0, 1e9, 0.0)


def exposition(registry: CollectorRegistry) -> str:
    """A scrape, with the creation times (which differ by when each was made) blanked."""
    return re.sub(r"^(\S*_created.*) \S+$", r"\1 T", generate_latest(registry).decode(), flags=re.M)


def test_a_histogram_scrapes_as_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram(
        "x_seconds", "Time.", ["route", "status"], buckets=BUCKETS, registry=theirs
    )
    lean = LoopHistogram("x_seconds", "Time.", ["route", "status"], BUCKETS, registry=ours)
    for i, amount in enumerate(SEEN):
        labels = ("/a/{b}", "200" if i % 3 else "404")
        reference.labels(*labels).observe(amount)
        lean.labels(*labels).observe(amount)

    assert exposition(ours) == exposition(theirs)
    assert 'x_seconds_bucket{le="+Inf",route="/a/{b}",status="200"} 6.0' in exposition(ours)
    assert ours.get_sample_value("x_seconds_count", {"route": "/a/{b}", "status": "404"}) == 4


def test_a_counter_scrapes_as_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("y_total", "Calls.", ["shard", "outcome"], registry=theirs)
    lean = LoopCounter("y_total", "Calls.", ["shard", "outcome"], registry=ours)
    for labels, amount in ((("s0", "created"), 1), (("s0", "failed"), 2.5), (("s1", "created"), 1)):
        reference.labels(*labels).inc(amount)
        lean.labels(*labels).inc(amount)
    reference.labels("s0", "created").inc()
    lean.labels("s0", "created").inc()

    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("y_total", {"shard": "s0", "outcome": "created"}) == 2


def test_unlabelled_metrics_and_kept_children() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    Counter("z_total", "Z.", registry=theirs).inc(3)
    LoopCounter("z_total", "Z.", registry=ours).inc(3)
    Histogram("w", "W.", buckets=(1.0, math.inf), registry=theirs).observe(2)
    LoopHistogram("w", "W.", (), (1.0, math.inf), registry=ours).observe(2)
    assert exposition(ours) == exposition(theirs)

    counter = LoopCounter("v_total", "V.", ["a"], registry=None)
    assert counter.labels("x") is counter.labels("x")


def test_bad_use_is_refused() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("u_total", "U.", ["a"], registry=registry)
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("x", "y")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopCounter("u_total", "Again.", ["a"], registry=registry)
