"""This process's built-in metrics: counters and histograms updated where things happen,
and collectors that read gauges (and counts kept elsewhere) when a snapshot is taken.

Recording is a dict update on the caller's thread: no lock shared with another
process, no system call, nothing formatted. Built-in call sites run on the
process's event loop; :class:`Counter` takes ``lock=True`` where calls may come
from several threads (handles called from user threads).

:func:`snapshot` turns everything (including the user's custom metrics from
:mod:`schooner.metrics`) into plain tuples that the reporter sends to the head::

    (name, kind, description, label_names, [(label_values, value), ...])

where ``value`` is a float for counters and gauges, and
``(bucket_counts, sum, boundaries)`` for histograms (``bucket_counts`` per
boundary, then the overflow bucket; not cumulative).

Metrics are on unless ``SCHOONER_METRICS=0`` is in the environment (the switch
the benchmark's A/B uses); off, call sites skip recording (:data:`ENABLED`).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from schooner.telemetry.catalog import COUNTER, GAUGE, HISTOGRAM, REPLICA_LABELS, Spec

__all__ = [
    "ENABLED",
    "Counter",
    "Histogram",
    "Series",
    "add_collector",
    "counter",
    "histogram",
    "set_replica_labels",
    "snapshot",
]

#: Environment switch: ``SCHOONER_METRICS=0`` turns built-in metrics off in every process
#: of an instance (processes inherit it from the head).
METRICS_ENV = "SCHOONER_METRICS"
ENABLED = os.environ.get(METRICS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")

Labels = tuple[str, ...]
Family = tuple[str, str, str, Labels, list[tuple[Labels, Any]]]
#: What a collector yields: (spec, label values, value) for a counter or gauge.
Series = tuple[Spec, Labels, float]


class Counter:
    """A built-in counter: a total per label values."""

    __slots__ = ("_lock", "spec", "values")

    def __init__(self, spec: Spec, *, lock: bool = False) -> None:
        self.spec = spec
        self.values: dict[Labels, float] = {}
        self._lock = threading.Lock() if lock else None

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        if self._lock is None:
            values[labels] = values.get(labels, 0.0) + amount
            return
        with self._lock:
            values[labels] = values.get(labels, 0.0) + amount

    def _family(self) -> list[tuple[Labels, Any]]:
        return list(self.values.items())


class Histogram:
    """A built-in histogram per label values; ``count_as`` also exports its counts as a
    counter (Ray's request counter is the latency histogram's count)."""

    __slots__ = ("bounds", "count_as", "series", "spec")

    def __init__(self, spec: Spec, count_as: Spec | None = None) -> None:
        if count_as is not None and count_as.labels != spec.labels:
            raise ValueError(f"{count_as.name} must have the labels of {spec.name}")
        self.spec = spec
        self.bounds = spec.buckets
        self.count_as = count_as
        #: label values -> [per-bucket counts (last: above every bound), sum]
        self.series: dict[Labels, list[Any]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        entry = self.series.get(labels)
        if entry is None:
            entry = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        entry[0][bisect.bisect_left(self.bounds, value)] += 1
        entry[1] += value

    def _family(self) -> list[tuple[Labels, Any]]:
        return [(labels, (tuple(e[0]), e[1], self.bounds)) for labels, e in self.series.items()]

    def _counts(self) -> list[tuple[Labels, Any]]:
        return [(labels, float(sum(e[0]))) for labels, e in self.series.items()]


_metrics: list[Counter | Histogram] = []
_collectors: list[Callable[[], Iterable[Series]]] = []
_replica_labels: Labels | None = None


def counter(spec: Spec, *, lock: bool = False) -> Counter:
    """A counter of ``spec`` registered in this process."""
    metric = Counter(spec, lock=lock)
    _metrics.append(metric)
    return metric


def histogram(spec: Spec, count_as: Spec | None = None) -> Histogram:
    """A histogram of ``spec`` registered in this process."""
    metric = Histogram(spec, count_as)
    _metrics.append(metric)
    return metric


def add_collector(collect: Callable[[], Iterable[Series]]) -> Callable[[], None]:
    """Call ``collect`` at each snapshot for counters and gauges kept elsewhere (queue
    lengths, in-flight counts). Returns a function that removes it."""
    _collectors.append(collect)

    def remove() -> None:
        if collect in _collectors:
            _collectors.remove(collect)

    return remove


def set_replica_labels(deployment: str, replica: str, application: str) -> None:
    """This process is a replica: its replica-scoped metrics carry these labels."""
    global _replica_labels
    _replica_labels = (deployment, replica, application)


def snapshot() -> list[Family]:
    """Every built-in and custom metric of this process, as plain tuples (see module doc)."""
    families: dict[str, Family] = {}

    def add(spec: Spec, series: list[tuple[Labels, Any]], kind: str | None = None) -> None:
        names = spec.labels
        if spec.replica_scoped:
            if _replica_labels is None:
                return
            names = REPLICA_LABELS + names
            series = [(_replica_labels + labels, value) for labels, value in series]
        family = families.get(spec.name)
        if family is None:
            families[spec.name] = (spec.name, kind or spec.kind, spec.description, names, series)
        else:
            family[4].extend(series)

    for metric in list(_metrics):
        if isinstance(metric, Histogram):
            add(metric.spec, metric._family())
            if metric.count_as is not None:
                add(metric.count_as, metric._counts())
        else:
            add(metric.spec, metric._family())
    for collect in list(_collectors):
        grouped: dict[Spec, list[tuple[Labels, Any]]] = {}
        for spec, labels, value in collect():
            grouped.setdefault(spec, []).append((labels, float(value)))
        for spec, series in grouped.items():
            add(spec, series)
    result = [family for family in families.values() if family[4]]
    result.extend(_custom_metrics())
    return result


def _custom_metrics() -> list[Family]:
    """The user's ``schooner.metrics`` values, named as Ray exports them (``ray_`` prefix)."""
    from schooner import metrics

    families: dict[str, Family] = {}
    for sample in metrics.collect():
        name = "ray_" + sample.name
        names = tuple(sample.tags)
        values = tuple(sample.tags[key] for key in names)
        if sample.kind == HISTOGRAM:
            value: Any = (sample.bucket_counts, sample.value, sample.boundaries)
        else:
            value = sample.value
        family = families.get(name)
        if family is None:
            kind = sample.kind if sample.kind in (COUNTER, GAUGE, HISTOGRAM) else GAUGE
            families[name] = (name, kind, sample.description, names, [(values, value)])
        elif family[3] == names:
            family[4].append((values, value))
    return list(families.values())


def _reset_for_tests() -> None:
    global _replica_labels
    _metrics.clear()
    _collectors.clear()
    _replica_labels = None
