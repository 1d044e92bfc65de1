"""An application's request rate, error rate and p99 from the processes' metric reports."""

from __future__ import annotations

from typing import Any

import pytest

from schooner.controller.app_stats import quantile, sample_app, window
from schooner.telemetry import catalog

BOUNDS = catalog.LATENCY_BUCKETS_MS
HTTP_NAMES = catalog.HTTP_REQUESTS.labels
LAT_NAMES = catalog.HTTP_LATENCY.labels
CALL_NAMES = catalog.REPLICA_LABELS + catalog.DEPLOYMENT_REQUESTS.labels
ERR_NAMES = catalog.REPLICA_LABELS + catalog.DEPLOYMENT_ERRORS.labels


def _hist(latencies_ms: list[float]) -> tuple[list[int], float, tuple[float, ...]]:
    counts = [0] * (len(BOUNDS) + 1)
    for ms in latencies_ms:
        i = next((i for i, b in enumerate(BOUNDS) if ms <= b), len(BOUNDS))
        counts[i] += 1
    return counts, sum(latencies_ms), BOUNDS


def _proxy(app: str, ok: int, failed: int, latencies: list[float]) -> list[Any]:
    return [
        (
            catalog.HTTP_REQUESTS.name, "counter", "", HTTP_NAMES,
            [(("GET", "/", app, "200"), float(ok)), (("GET", "/", app, "500"), float(failed))],
        ),
        (
            catalog.HTTP_LATENCY.name, "histogram", "", LAT_NAMES,
            [(("GET", "/", app, "200"), _hist(latencies))],
        ),
    ]  # fmt: skip


def _replica(app: str, deployment: str, done: int, raised: int) -> list[Any]:
    return [
        (
            catalog.DEPLOYMENT_REQUESTS.name, "counter", "", CALL_NAMES,
            [((deployment, "r1", app, "/"), float(done))],
        ),
        (
            catalog.DEPLOYMENT_ERRORS.name, "counter", "", ERR_NAMES,
            [((deployment, "r1", app, "/", "ValueError"), float(raised))],
        ),
    ]  # fmt: skip


def test_window_between_two_samples_of_http_traffic() -> None:
    before = sample_app([("proxy-1", _proxy("a", 100, 0, [3.0] * 100))], "a", "Ingress", 10.0)
    after_lat = [3.0] * 100 + [3.0] * 180 + [150.0] * 20
    after = sample_app([("proxy-1", _proxy("a", 290, 10, after_lat))], "a", "Ingress", 20.0)
    w = window(before, after)
    assert w.requests == 200 and w.errors == 10
    assert w.request_rate == pytest.approx(20.0)
    assert w.error_rate == pytest.approx(0.05)
    assert w.p99_ms is not None and 100.0 < w.p99_ms <= 200.0  # the slow 10% is in (100, 200]


def test_other_applications_and_deployments_are_not_counted() -> None:
    reports = [
        ("proxy-1", _proxy("b", 500, 500, [1.0])),
        ("replica-1", _replica("a", "Other", 50, 50)),
        ("replica-2", _replica("a", "Ingress", 40, 4)),
    ]
    w = window(sample_app([], "a", "Ingress", 0.0), sample_app(reports, "a", "Ingress", 1.0))
    assert w.requests == 40 and w.error_rate == pytest.approx(0.1)


def test_a_process_that_appears_or_goes_away_never_makes_counts_negative() -> None:
    before = sample_app([("replica-1", _replica("a", "I", 1000, 0))], "a", "I", 0.0)
    after = sample_app([("replica-2", _replica("a", "I", 30, 3))], "a", "I", 5.0)
    w = window(before, after)
    assert w.requests == 30 and w.errors == pytest.approx(3)


def test_no_traffic_is_no_error_and_no_latency() -> None:
    w = window(sample_app([], "a", "I", 0.0), sample_app([], "a", "I", 1.0))
    assert (w.requests, w.error_rate, w.p99_ms) == (0, 0.0, None)


def test_quantile_interpolates_like_prometheus() -> None:
    counts, _, bounds = _hist([15.0] * 100)  # all in the (10, 20] bucket
    assert quantile(counts, bounds, 0.5) == pytest.approx(15.0)
    assert quantile(counts, bounds, 0.99) == pytest.approx(19.9)
    overflow, _, _ = _hist([10**7])
    assert quantile(overflow, bounds, 0.99) == BOUNDS[-1]
