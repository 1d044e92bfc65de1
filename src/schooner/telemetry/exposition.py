"""The head's view of every process's metrics, in the Prometheus text format.

Each process of the instance (controller, proxies, replicas, drivers) reports a
snapshot of its metrics every few seconds (:mod:`schooner.telemetry.reporter`);
:class:`MetricsStore` keeps the latest one per process and renders them all with
``prometheus_client``. Every series gets labels naming the process it came from,
as Ray's exporter adds them (``Component``, ``WorkerId``, ``NodeAddress``,
``SessionName``): two proxies never report the same series, and a process that
restarts starts new series instead of making a counter go backwards. A process
that stops reporting is forgotten after :data:`FORGET_AFTER_S`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from schooner.telemetry import recorder
from schooner.telemetry.catalog import COUNTER, HISTOGRAM

__all__ = ["CONTENT_TYPE", "MetricsStore", "write_service_discovery"]

logger = logging.getLogger("schooner.metrics")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: A process not heard from for this long is dropped (it died, or was stopped).
FORGET_AFTER_S = 60.0
SOURCE_LABELS = ("Component", "WorkerId", "NodeAddress", "SessionName")


@dataclass
class _Report:
    labels: tuple[str, str, str, str]
    families: list[recorder.Family]
    at: float


class MetricsStore:
    """The latest snapshot of each process, and the exporter that renders them."""

    def __init__(
        self,
        session_name: str,
        local: tuple[str, str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``local``: (component, worker id, node address) of this process, whose own
        metrics are read at each render."""
        self.session_name = session_name
        self._local = local
        self._clock = clock
        self._reports: dict[str, _Report] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        self._warned: set[str] = set()

    def update(self, source: str, component: str, node: str, families: list[Any]) -> None:
        """Keep ``families`` as the latest snapshot of ``source``."""
        labels = (component, source, node, self.session_name)
        self._reports[source] = _Report(labels, families, self._clock())

    def forget(self, source: str) -> None:
        self._reports.pop(source, None)

    @property
    def sources(self) -> list[str]:
        return list(self._reports)

    def snapshots(self) -> list[tuple[str, list[recorder.Family]]]:
        """(source, families) of every process heard from recently (this one included)."""
        return [(report.labels[1], report.families) for report in self._current()]

    def render(self) -> bytes:
        """Every process's metrics in the Prometheus text format."""
        return generate_latest(self._registry)

    def _current(self) -> list[_Report]:
        now = self._clock()
        for source, report in list(self._reports.items()):
            if now - report.at > FORGET_AFTER_S:
                del self._reports[source]
        reports = list(self._reports.values())
        if self._local is not None and recorder.ENABLED:
            component, worker, node = self._local
            labels = (component, worker, node, self.session_name)
            reports.append(_Report(labels, recorder.snapshot(), self._clock()))
        return reports

    def families(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        shapes: dict[str, tuple[str, tuple[str, ...]]] = {}
        for report in self._current():
            for name, kind, description, names, series in report.families:
                label_names = (*names, *SOURCE_LABELS)
                shape = shapes.setdefault(name, (kind, label_names))
                if shape != (kind, label_names):
                    self._warn_once(name, kind, shape[0])
                    continue
                metric = merged.get(name)
                if metric is None:
                    metric = merged[name] = _new_family(name, kind, description, label_names)
                for values, value in series:
                    _add(metric, kind, (*values, *report.labels), value)
        yield from merged.values()

    def _warn_once(self, name: str, kind: str, first: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "metric %s is reported with different types or label names by different "
                "processes (%s, %s); only the first kind is exported",
                name,
                first,
                kind,
            )


class _Collector:
    def __init__(self, store: MetricsStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        return self._store.families()


def _new_family(name: str, kind: str, description: str, labels: tuple[str, ...]) -> Metric:
    if kind == COUNTER:
        return CounterMetricFamily(name, description, labels=list(labels))
    if kind == HISTOGRAM:
        return HistogramMetricFamily(name, description, labels=list(labels))
    return GaugeMetricFamily(name, description, labels=list(labels))


def _add(metric: Metric, kind: str, labels: tuple[str, ...], value: Any) -> None:
    if kind == HISTOGRAM:
        counts, total, bounds = value
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(bounds, counts, strict=False):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        cumulative += counts[len(bounds)] if len(counts) > len(bounds) else 0
        buckets.append(("+Inf", cumulative))
        metric.add_metric(list(labels), buckets, total)  # type: ignore[attr-defined]
    else:
        metric.add_metric(list(labels), value)  # type: ignore[attr-defined]


def _le(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


def write_service_discovery(path: Path, targets: list[str]) -> None:
    """Write a Prometheus ``file_sd_configs`` file listing ``targets`` (``host:port``),
    as Ray writes ``prom_metrics_service_discovery.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"labels": {"job": "schooner"}, "targets": targets}], indent=2))
    tmp.replace(path)
