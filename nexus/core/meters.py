"""Counters and histograms for the hot paths, exposed exactly as prometheus_client's.

A prometheus_client ``Histogram`` child takes a lock for each of its values and checks its
labels on every observation: about 9,000 instructions an ``observe``, 4,500 a ``Counter``
``inc``, and ``Counter.labels(...)`` 8,000 more (callgrind, Python 3.11). Every accepted
run, every completion and every Job creation pays several of them. Nexus' services write
their metrics from the event loop's one thread, so the metrics here keep plain numbers:
an ``observe`` is a bisection and two additions (about 1,000 instructions).

Guarantees:

* **The same exposition.** A :class:`LoopCounter` or :class:`LoopHistogram` registers in
  the same registry under the same name, help, label names and buckets as the
  prometheus_client metric it stands for, and a scrape reads the same samples: ``_total``
  and ``_created`` of a counter; ``_bucket`` (cumulative, ``le`` spelt as
  prometheus_client spells it, ``+Inf`` added), ``_count``, ``_sum`` and ``_created`` of a
  histogram (tests/test_meters.py compares the two expositions).
* **One writer thread.** ``inc`` and ``observe`` take no lock: call them from the thread of
  the event loop (every writer in Nexus does). A scrape from another thread reads each
  number whole, as with prometheus_client, whose values are locked one by one, not
  together.
* **Children kept.** ``labels(*values)`` returns the same child for the same values (one
  dictionary look-up once made), so a caller may look it up on every call.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["CounterChild", "HistogramChild", "LoopCounter", "LoopHistogram"]

_spelt: Callable[[float], str] = floatToGoString  # how prometheus_client spells an ``le``


class CounterChild:
    """One label combination's count."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramChild:
    """One label combination's observations, by bucket (not yet cumulative)."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound it does not exceed."""
        self.sum += amount
        self.counts[bisect_left(self._bounds, amount)] += 1


class _Labelled(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)

    def _check(self, values: tuple[str, ...]) -> None:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")


class LoopCounter(_Labelled):
    """A counter, written from one thread (``name`` ends in ``_total`` or gets it)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self._children: dict[tuple[str, ...], CounterChild] = {}
        if not self._labelnames:
            self._children[()] = CounterChild()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> CounterChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = CounterChild()
        return child

    def inc(self, amount: float = 1.0) -> None:
        """Count an unlabelled counter."""
        self.labels().inc(amount)

    def describe(self) -> Iterable[Metric]:
        """The family without samples: the registry refuses a second metric of its names."""
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created)
        yield family


class LoopHistogram(_Labelled):
    """A histogram, written from one thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        if not self._labelnames:
            self._children[()] = HistogramChild(self._bounds)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        child = self._children.get(values)
        if child is None:
            self._check(values)
            child = self._children[values] = HistogramChild(self._bounds)
        return child

    def observe(self, amount: float) -> None:
        """Observe with an unlabelled histogram."""
        self.labels().observe(amount)

    def describe(self) -> Iterable[Metric]:
        """The family without samples: the registry refuses a second metric of its names."""
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        spelt = [_spelt(bound) for bound in self._bounds]
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(spelt, list(child.counts), strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, child.sum)
            labels = dict(zip(self._labelnames, values, strict=True))
            family.samples.append(Sample(f"{self._name}_created", labels, child.created))
        yield family
