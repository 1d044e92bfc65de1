"""serve.metrics: user-defined Counter, Gauge and Histogram, as a deployment records them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import schooner as serve
from schooner import context
from schooner.metrics import Counter, Gauge, Histogram, MetricSample, collect
from schooner.rpc.messages import DeploymentID


@pytest.fixture
def in_replica() -> Iterator[None]:
    replica_id = context.ReplicaID("r1", DeploymentID("Model", "shop"))
    context._set_replica_context(context.ReplicaContext(replica_id=replica_id))
    yield
    context._set_replica_context(None)


def _series(name: str) -> list[MetricSample]:
    return [s for s in collect() if s.name == name]


def test_the_module_is_reachable_from_the_package() -> None:
    assert serve.metrics.Counter is Counter


def test_counter_with_default_tags_counts_per_series() -> None:
    hits = Counter("t_hits", description="odd requests", tag_keys=("model",))
    hits.set_default_tags({"model": "a"})
    hits.inc()
    hits.inc(2)
    hits.inc(tags={"model": "b"})
    values = {s.tags["model"]: s.value for s in _series("t_hits")}
    assert values == {"a": 3.0, "b": 1.0}


def test_counter_refuses_non_positive_increments_and_unknown_tags() -> None:
    counter = Counter("t_strict", tag_keys=("model",))
    with pytest.raises(ValueError, match=">0"):
        counter.inc(0, tags={"model": "a"})
    with pytest.raises(ValueError, match="Missing value"):
        counter.inc()
    with pytest.raises(ValueError, match="Unrecognized"):
        counter.inc(tags={"model": "a", "colour": "red"})
    with pytest.raises(ValueError, match="Unrecognized"):
        counter.set_default_tags({"colour": "red"})
    with pytest.raises(TypeError, match="tuple"):
        Counter("t_list_keys", tag_keys=["model"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Empty name"):
        Counter("")


def test_gauge_keeps_the_last_value() -> None:
    gauge = Gauge("t_queue_len")
    gauge.set(4)
    gauge.set(2.5)
    assert [s.value for s in _series("t_queue_len")] == [2.5]


def test_histogram_counts_observations_per_bucket() -> None:
    latency = Histogram("t_latency", boundaries=[0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value)
    (sample,) = _series("t_latency")
    assert sample.bucket_counts == (2, 1, 1)
    assert sample.count == 4
    assert sample.value == pytest.approx(3.65)
    with pytest.raises(ValueError, match="boundaries"):
        Histogram("t_no_buckets")
    with pytest.raises(ValueError, match="positive"):
        Histogram("t_zero_bucket", boundaries=[0, 1])


@pytest.mark.usefixtures("in_replica")
def test_in_a_replica_the_serve_tags_are_added_and_reserved() -> None:
    counter = Counter("t_replica_hits", tag_keys=("model",))
    counter.set_default_tags({"model": "m"})
    counter.inc()
    (sample,) = _series("t_replica_hits")
    assert sample.tags == {
        "deployment": "Model",
        "replica": "r1",
        "application": "shop",
        "model": "m",
    }
    with pytest.raises(ValueError, match="reserved"):
        Gauge("t_reserved", tag_keys=("replica",))


@pytest.mark.usefixtures("in_replica")
def test_a_declared_route_tag_is_filled_from_the_request() -> None:
    gauge = Gauge("t_route", tag_keys=("route",))
    token = context._request_context.set(context.RequestContext(route="/shop"))
    try:
        gauge.set(1)
    finally:
        context._request_context.reset(token)
    (sample,) = _series("t_route")
    assert sample.tags["route"] == "/shop"
