"""How an application is doing, from the metrics its processes report to the head.

A :class:`AppSample` is one reading of an application's cumulative counts: the
HTTP requests the proxies answered for it (with their 5xx answers and the
latency histogram) and the calls its ingress deployment's replicas finished
(with those that raised and the processing-time histogram). Two readings give
the :class:`AppWindow` between them: request rate, error rate and p99 latency.
Counts are kept per reporting process, so a process that starts in between
counts from zero and one that went away drops out instead of making a total go
backwards. This is what ``schooner traffic`` shows and what a rollout checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schooner.telemetry import catalog, recorder

__all__ = ["AppSample", "AppWindow", "quantile", "sample_app", "window"]


@dataclass
class _Counts:
    requests: float = 0.0
    errors: float = 0.0
    buckets: list[float] = field(default_factory=list)
    bounds: tuple[float, ...] = ()

    def add_histogram(self, value: Any) -> None:
        counts, _total, bounds = value
        if not self.buckets:
            self.buckets = [0.0] * len(counts)
            self.bounds = tuple(bounds)
        if len(counts) == len(self.buckets):
            for i, count in enumerate(counts):
                self.buckets[i] += count

    def minus(self, before: _Counts | None) -> _Counts:
        if before is None:
            return self
        buckets = self.buckets
        if len(before.buckets) == len(buckets):
            buckets = [max(0.0, a - b) for a, b in zip(buckets, before.buckets, strict=True)]
        return _Counts(
            max(0.0, self.requests - before.requests),
            max(0.0, self.errors - before.errors),
            buckets,
            self.bounds,
        )

    def plus(self, other: _Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        if other.buckets:
            if not self.buckets:
                self.buckets, self.bounds = list(other.buckets), other.bounds
            elif len(other.buckets) == len(self.buckets):
                self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


@dataclass
class AppSample:
    """Cumulative counts of one application at time ``at``, per reporting process:
    ``http`` as the proxies saw it, ``calls`` as its ingress replicas did."""

    at: float
    http: dict[str, _Counts] = field(default_factory=dict)
    calls: dict[str, _Counts] = field(default_factory=dict)


@dataclass(frozen=True)
class AppWindow:
    """An application between two samples."""

    seconds: float
    requests: float
    errors: float
    p99_ms: float | None

    @property
    def request_rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "requests": int(self.requests),
            "errors": int(self.errors),
            "request_rate": round(self.request_rate, 3),
            "error_rate": round(self.error_rate, 6),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


def _index(names: Sequence[str], name: str) -> int:
    return names.index(name) if name in names else -1


def sample_app(
    snapshots: Iterable[tuple[str, list[recorder.Family]]],
    app_name: str,
    ingress: str,
    at: float,
) -> AppSample:
    """Read ``app_name``'s counts (``ingress``: its ingress deployment's name) from the
    processes' metric snapshots (see :meth:`MetricsStore.snapshots`)."""
    result = AppSample(at)
    for source, families in snapshots:
        for name, _kind, _description, names, series in families:
            target = _target(name)
            if target is None:
                continue
            app_at = _index(names, "application")
            if app_at < 0:
                continue
            dep_at = _index(names, "deployment")
            code_at = _index(names, "status_code")
            book = result.http if target.startswith("http") else result.calls
            for values, value in series:
                if values[app_at] != app_name:
                    continue
                if target.startswith("call") and (dep_at < 0 or values[dep_at] != ingress):
                    continue
                counts = book.setdefault(source, _Counts())
                if target == "http_requests":
                    counts.requests += value
                    if code_at >= 0 and values[code_at].startswith("5"):
                        counts.errors += value
                elif target == "call_requests":
                    counts.requests += value
                elif target == "call_errors":
                    counts.errors += value
                else:
                    counts.add_histogram(value)
    return result


def _target(name: str) -> str | None:
    return {
        catalog.HTTP_REQUESTS.name: "http_requests",
        catalog.HTTP_LATENCY.name: "http_latency",
        catalog.DEPLOYMENT_REQUESTS.name: "call_requests",
        catalog.DEPLOYMENT_ERRORS.name: "call_errors",
        catalog.PROCESSING_LATENCY.name: "call_latency",
    }.get(name)


def _delta(after: dict[str, _Counts], before: dict[str, _Counts]) -> _Counts:
    total = _Counts()
    for source, counts in after.items():
        total.plus(counts.minus(before.get(source)))
    return total


def window(before: AppSample, after: AppSample) -> AppWindow:
    """What happened to the application between two samples. The busier view (HTTP at
    the proxies, or calls at the ingress replicas, which also counts handle calls) gives
    the request count; the error rate and p99 are the worse of the two views."""
    http = _delta(after.http, before.http)
    calls = _delta(after.calls, before.calls)
    requests = max(http.requests, calls.requests)
    rate = max(
        http.errors / http.requests if http.requests else 0.0,
        calls.errors / calls.requests if calls.requests else 0.0,
    )
    p99s = [
        q for q in (quantile(c.buckets, c.bounds, 0.99) for c in (http, calls)) if q is not None
    ]
    return AppWindow(
        seconds=max(0.0, after.at - before.at),
        requests=requests,
        errors=rate * requests,
        p99_ms=max(p99s) if p99s else None,
    )


def quantile(buckets: Sequence[float], bounds: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of a histogram (per-bucket counts, the last one the overflow),
    interpolated inside its bucket as Prometheus's ``histogram_quantile`` does; None
    when it is empty. A quantile in the overflow bucket is the largest bound."""
    total = sum(buckets)
    if total <= 0 or not bounds:
        return None
    rank = q * total
    cumulative = 0.0
    for i, count in enumerate(buckets):
        if cumulative + count >= rank and count > 0:
            if i >= len(bounds) or math.isinf(bounds[i]):
                return float(bounds[-1]) if not math.isinf(bounds[-1]) else float(bounds[-2])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * (rank - cumulative) / count
        cumulative += count
    return float(bounds[-1])
