"""Built-in metrics: recording, snapshots, and the head's Prometheus exposition."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schooner import context, metrics
from schooner.rpc.messages import DeploymentID
from schooner.telemetry import catalog, recorder
from schooner.telemetry.exposition import FORGET_AFTER_S, MetricsStore, write_service_discovery


@pytest.fixture(autouse=True)
def clean_recorder() -> Iterator[None]:
    saved = (list(recorder._metrics), list(recorder._collectors), recorder._replica_labels)
    saved_custom = list(metrics._registry)
    recorder._reset_for_tests()
    metrics._registry.clear()
    yield
    recorder._reset_for_tests()
    recorder._metrics.extend(saved[0])
    recorder._collectors.extend(saved[1])
    recorder._replica_labels = saved[2]
    metrics._registry[:] = saved_custom


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _find(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> list[float]:
    return [
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and labels.items() <= dict(sample_labels).items()
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_histogram_buckets_sum_and_derived_counter() -> None:
    latency = recorder.histogram(catalog.HTTP_LATENCY, count_as=catalog.HTTP_REQUESTS)
    labels = ("GET", "/", "app", "200")
    for value in (0.5, 1.0, 3.0, 700.0, 10**7):
        latency.observe(labels, value)
    store = MetricsStore("session_t", local=("proxy", "proxy-1", "10.0.0.1"))
    samples = _samples(store.render())
    bucket = "ray_serve_http_request_latency_ms_bucket"
    assert _find(samples, bucket, le="1.0") == [2.0]  # 0.5 and exactly 1.0
    assert _find(samples, bucket, le="5.0") == [3.0]
    assert _find(samples, bucket, le="1000.0") == [4.0]
    assert _find(samples, bucket, le="+Inf") == [5.0]
    assert _find(samples, "ray_serve_http_request_latency_ms_sum") == [0.5 + 1 + 3 + 700 + 10**7]
    assert _find(
        samples,
        "ray_serve_num_http_requests_total",
        route="/",
        method="GET",
        application="app",
        status_code="200",
        Component="proxy",
        WorkerId="proxy-1",
        NodeAddress="10.0.0.1",
        SessionName="session_t",
    ) == [5.0]


def test_count_as_must_share_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        recorder.histogram(catalog.HTTP_LATENCY, count_as=catalog.HTTP_ERRORS)


def test_replica_scoped_metrics_carry_the_replica_labels() -> None:
    requests = recorder.counter(catalog.REPLICA_STARTS)
    requests.inc(())
    assert recorder.snapshot() == []  # not a replica (yet): nothing to say
    recorder.set_replica_labels("Model", "abc123", "app1")
    (family,) = recorder.snapshot()
    name, kind, _, names, series = family
    assert (name, kind) == ("ray_serve_deployment_replica_starts", "counter")
    assert names == ("deployment", "replica", "application")
    assert series == [(("Model", "abc123", "app1"), 1.0)]


def test_collectors_are_read_at_snapshot_time() -> None:
    queued = {"n": 3}
    remove = recorder.add_collector(
        lambda: [(catalog.QUEUED_QUERIES, ("D", "app", "", "w1"), queued["n"])]
    )
    assert recorder.snapshot()[0][4] == [(("D", "app", "", "w1"), 3.0)]
    queued["n"] = 0
    assert recorder.snapshot()[0][4] == [(("D", "app", "", "w1"), 0.0)]
    remove()
    assert recorder.snapshot() == []


def test_custom_metrics_are_exported_with_rays_prefix_and_replica_tags() -> None:
    replica = context.ReplicaContext(
        context.ReplicaID("r1", DeploymentID("Model", "app1")), servable_object=None
    )
    saved, context._replica_context = context._replica_context, replica
    try:
        hits = metrics.Counter("my_hits", description="hits", tag_keys=("kind",))
        hits.inc(2, tags={"kind": "a"})
        size = metrics.Gauge("queue_size")
        size.set(7)
        latency = metrics.Histogram("my_latency_ms", boundaries=[10, 100])
        latency.observe(5)
        latency.observe(50)
    finally:
        context._replica_context = saved
    store = MetricsStore("s", local=("replica", "app1#Model#r1", "127.0.0.1"))
    samples = _samples(store.render())
    assert _find(
        samples, "ray_my_hits_total", kind="a", deployment="Model", replica="r1", application="app1"
    ) == [2.0]
    assert _find(samples, "ray_queue_size", replica="r1") == [7.0]
    assert _find(samples, "ray_my_latency_ms_bucket", le="10.0") == [1.0]
    assert _find(samples, "ray_my_latency_ms_bucket", le="+Inf") == [2.0]
    assert _find(samples, "ray_my_latency_ms_count") == [2.0]


def test_each_process_reports_its_own_series() -> None:
    clock = Clock()
    store = MetricsStore("s", clock=clock)
    family = ("ray_serve_num_router_requests", "counter", "", ("deployment",), [(("D",), 4.0)])
    store.update("proxy-a", "proxy", "10.0.0.1", [family])
    store.update("proxy-b", "proxy", "10.0.0.2", [family])
    samples = _samples(store.render())
    assert sorted(_find(samples, "ray_serve_num_router_requests_total", deployment="D")) == [4, 4]
    assert _find(samples, "ray_serve_num_router_requests_total", NodeAddress="10.0.0.2") == [4.0]


def test_a_process_not_heard_from_is_forgotten() -> None:
    clock = Clock()
    store = MetricsStore("s", clock=clock)
    family = ("ray_serve_replica_processing_queries", "gauge", "", (), [((), 1.0)])
    store.update("gone", "replica", "n", [family])
    clock.now += FORGET_AFTER_S - 1
    store.update("alive", "replica", "n", [family])
    assert len(_find(_samples(store.render()), "ray_serve_replica_processing_queries")) == 2
    clock.now += 2
    assert (
        _find(_samples(store.render()), "ray_serve_replica_processing_queries", WorkerId="gone")
        == []
    )
    assert store.sources == ["alive"]


def test_conflicting_kinds_keep_the_first_and_render_valid_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MetricsStore("s")
    store.update("a", "replica", "n", [("ray_x", "counter", "", ("k",), [(("1",), 1.0)])])
    store.update("b", "replica", "n", [("ray_x", "gauge", "", ("k",), [(("2",), 5.0)])])
    samples = _samples(store.render())
    assert _find(samples, "ray_x_total") == [1.0]
    assert _find(samples, "ray_x") == []
    assert "different types or label names" in caplog.text


def test_service_discovery_file(tmp_path: Path) -> None:
    path = tmp_path / "prom_metrics_service_discovery.json"
    write_service_discovery(path, ["127.0.0.1:8265", "127.0.0.1:9100"])
    assert json.loads(path.read_text()) == [
        {"labels": {"job": "schooner"}, "targets": ["127.0.0.1:8265", "127.0.0.1:9100"]}
    ]
