"""User-defined metrics: ``serve.metrics.Counter``, ``Gauge`` and ``Histogram``.

The same API as ``ray.serve.metrics``: a metric has a name, a description and
tag keys; ``set_default_tags`` fixes some tag values, and each record call
(``inc``, ``set``, ``observe``) supplies the rest. Inside a replica the
``deployment``, ``replica`` and ``application`` tags are added and filled in
automatically (user code may not declare them); a declared ``route`` tag is
filled from the current request unless given.

Values are kept in this process, per metric and tag values, readable with
:func:`collect` (the hook a metrics exporter reads from). Recording is cheap
and thread-safe: sync deployment methods record from worker threads.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from schooner import context

__all__ = ["Counter", "Gauge", "Histogram", "MetricSample", "collect"]

DEPLOYMENT_TAG = "deployment"
REPLICA_TAG = "replica"
APPLICATION_TAG = "application"
ROUTE_TAG = "route"
_RESERVED = (DEPLOYMENT_TAG, REPLICA_TAG, APPLICATION_TAG)

TagValues = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MetricSample:
    """One series of a metric as :func:`collect` reports it."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    description: str
    tags: dict[str, str]
    value: float  # counter total, gauge value, histogram sum
    count: int = 0  # histogram: observations
    bucket_counts: tuple[int, ...] = ()  # histogram: per boundary, then the overflow bucket
    boundaries: tuple[float, ...] = ()


_registry_lock = threading.Lock()
_registry: list[_Metric] = []


def collect() -> list[MetricSample]:
    """Every series recorded in this process so far."""
    with _registry_lock:
        metrics = list(_registry)
    samples: list[MetricSample] = []
    for metric in metrics:
        samples.extend(metric._samples())
    return samples


def _serve_tag_keys(tag_keys: tuple[str, ...]) -> tuple[str, ...]:
    replica = context._replica_context
    if replica is None:
        return tag_keys
    for key in _RESERVED:
        if key in tag_keys:
            raise ValueError(f"'{key}' tag is reserved for Ray Serve metrics")
    serve_keys: tuple[str, ...] = (DEPLOYMENT_TAG, REPLICA_TAG)
    if replica.app_name:
        serve_keys += (APPLICATION_TAG,)
    return serve_keys + tag_keys


def _serve_default_tags(default_tags: Mapping[str, str]) -> dict[str, str]:
    tags = dict(default_tags)
    replica = context._replica_context
    if replica is None:
        return tags
    for key in _RESERVED:
        if key in tags:
            raise ValueError(f"'{key}' tag is reserved for Ray Serve metrics")
    tags[DEPLOYMENT_TAG] = replica.deployment
    tags[REPLICA_TAG] = replica.replica_tag
    if replica.app_name:
        tags[APPLICATION_TAG] = replica.app_name
    return tags


class _Metric:
    kind: ClassVar[str]

    def __init__(
        self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None
    ) -> None:
        if not name:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        if tag_keys is None:
            tag_keys = ()
        if not isinstance(tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(tag_keys)}")
        for key in tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
        self._name = name
        self._description = description
        self._tag_keys = _serve_tag_keys(tag_keys)
        self._default_tags: dict[str, str] = {}
        self._lock = threading.Lock()
        self.set_default_tags({})
        with _registry_lock:
            _registry.append(self)

    @property
    def info(self) -> dict[str, object]:
        return {
            "name": self._name,
            "description": self._description,
            "tag_keys": self._tag_keys,
            "default_tags": dict(self._default_tags),
        }

    def set_default_tags(self, default_tags: Mapping[str, str]) -> _Metric:
        """Tag values used when a record call does not give them."""
        tags = _serve_default_tags(default_tags)
        for key, value in tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key!r}.")
            if not isinstance(value, str):
                raise TypeError(f"Tag values must be str, got {type(value)}.")
        self._default_tags = tags
        return self

    def _series(self, tags: Mapping[str, str] | None) -> TagValues:
        merged = dict(self._default_tags)
        if ROUTE_TAG in self._tag_keys and (tags is None or ROUTE_TAG not in tags):
            merged[ROUTE_TAG] = context.current_request().route
        if tags:
            for key, value in tags.items():
                if key not in self._tag_keys:
                    raise ValueError(f"Unrecognized tag key {key!r}.")
                if not isinstance(value, str):
                    raise TypeError(f"Tag values must be str, got {type(value)}.")
            merged.update(tags)
        missing = [key for key in self._tag_keys if key not in merged]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {', '.join(missing)}.")
        return tuple((key, merged[key]) for key in self._tag_keys)

    def _samples(self) -> Iterable[MetricSample]:
        raise NotImplementedError


class Counter(_Metric):
    """A cumulative count that only goes up (Prometheus counter)."""

    kind = "counter"

    def __init__(
        self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None
    ) -> None:
        self._values: dict[TagValues, float] = {}
        super().__init__(name, description, tag_keys)

    def inc(self, value: float = 1.0, tags: Mapping[str, str] | None = None) -> None:
        """Add ``value`` (> 0) to the series named by ``tags`` and the default tags."""
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        series = self._series(tags)
        with self._lock:
            self._values[series] = self._values.get(series, 0.0) + value

    def _samples(self) -> Iterable[MetricSample]:
        with self._lock:
            values = dict(self._values)
        for series, total in values.items():
            yield MetricSample(self._name, self.kind, self._description, dict(series), total)


class Gauge(_Metric):
    """A value that is set, keeping only the last one (Prometheus gauge)."""

    kind = "gauge"

    def __init__(
        self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None
    ) -> None:
        self._values: dict[TagValues, float] = {}
        super().__init__(name, description, tag_keys)

    def set(self, value: float | None, tags: Mapping[str, str] | None = None) -> None:
        """Set the series named by ``tags`` and the default tags to ``value``."""
        if value is None:
            return
        series = self._series(tags)
        with self._lock:
            self._values[series] = float(value)

    def _samples(self) -> Iterable[MetricSample]:
        with self._lock:
            values = dict(self._values)
        for series, value in values.items():
            yield MetricSample(self._name, self.kind, self._description, dict(series), value)


@dataclass
class _Buckets:
    counts: list[int]
    total: float = 0.0
    count: int = 0


class Histogram(_Metric):
    """Observations counted in buckets by upper boundary (Prometheus histogram)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: list[float] | None = None,
        tag_keys: tuple[str, ...] | None = None,
    ) -> None:
        if not boundaries:
            raise ValueError(
                "boundaries argument should be provided when using the Histogram class. "
                "e.g., Histogram(boundaries=[1.0, 2.0])"
            )
        for index, boundary in enumerate(boundaries):
            if boundary <= 0:
                raise ValueError(
                    f"Invalid `boundaries` argument at index {index}, {boundaries}. Use "
                    "positive values for the arguments."
                )
        self._boundaries = tuple(float(b) for b in boundaries)
        self._buckets: dict[TagValues, _Buckets] = {}
        super().__init__(name, description, tag_keys)

    @property
    def info(self) -> dict[str, object]:
        return {**super().info, "boundaries": list(self._boundaries)}

    def observe(self, value: float, tags: Mapping[str, str] | None = None) -> None:
        """Count ``value`` in its bucket of the series named by ``tags``."""
        series = self._series(tags)
        index = bisect.bisect_left(self._boundaries, value)
        with self._lock:
            buckets = self._buckets.get(series)
            if buckets is None:
                buckets = self._buckets[series] = _Buckets([0] * (len(self._boundaries) + 1))
            buckets.counts[index] += 1
            buckets.total += value
            buckets.count += 1

    def _samples(self) -> Iterable[MetricSample]:
        with self._lock:
            snapshot = {s: (tuple(b.counts), b.total, b.count) for s, b in self._buckets.items()}
        for series, (counts, total, count) in snapshot.items():
            yield MetricSample(
                self._name,
                self.kind,
                self._description,
                dict(series),
                total,
                count,
                counts,
                self._boundaries,
            )
