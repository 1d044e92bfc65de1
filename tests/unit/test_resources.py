"""ResourcePool: soft or hard CPUs, GPUs by index (fractions share one), custom resources."""

from __future__ import annotations

import pytest

from schooner.runtime.resources import ResourcePool, detect_gpus


def test_cpu_is_soft_by_default() -> None:
    pool = ResourcePool({"CPU": 2, "GPU": 0})
    allocations = [pool.allocate({"CPU": 1}) for _ in range(5)]
    assert all(a is not None for a in allocations)
    assert pool.used["CPU"] == 5  # recorded, oversubscribed
    assert pool.why_not({"CPU": 100}) is None


def test_cpu_is_hard_when_num_cpus_given() -> None:
    pool = ResourcePool.detect(num_cpus=2, num_gpus=0)
    assert pool.hard_cpu
    assert pool.capacity["CPU"] == 2
    assert pool.allocate({"CPU": 1}) is not None
    assert pool.allocate({"CPU": 1}) is not None
    assert pool.allocate({"CPU": 0.5}) is None
    reason = pool.why_not({"CPU": 1})
    assert reason is not None and "CPU: needs 1, 0 of 2 free" in reason


def test_detect_without_num_cpus_is_soft() -> None:
    pool = ResourcePool.detect(num_gpus=0)
    assert not pool.hard_cpu
    assert pool.capacity["CPU"] >= 1


def test_whole_gpus_are_assigned_by_index() -> None:
    pool = ResourcePool({"CPU": 8, "GPU": 3})
    a = pool.allocate({"CPU": 1, "GPU": 1})
    b = pool.allocate({"CPU": 1, "GPU": 2})
    assert a is not None and b is not None
    assert a.cuda_visible_devices == "0"
    assert b.cuda_visible_devices == "1,2"
    assert pool.allocate({"GPU": 1}) is None
    reason = pool.why_not({"GPU": 1})
    assert reason is not None and "GPU: needs 1, 0 of 3 free" in reason
    assert pool.used["GPU"] == 3


def test_no_gpu_request_has_no_cuda_visible_devices() -> None:
    pool = ResourcePool({"CPU": 1, "GPU": 2})
    a = pool.allocate({"CPU": 1})
    assert a is not None and a.cuda_visible_devices is None and a.gpus == []


def test_fractional_gpus_share_a_device() -> None:
    pool = ResourcePool({"CPU": 4, "GPU": 2})
    halves = [pool.allocate({"GPU": 0.5}) for _ in range(4)]
    assert [h.cuda_visible_devices for h in halves if h is not None] == ["0", "0", "1", "1"]
    assert pool.allocate({"GPU": 0.5}) is None
    reason = pool.why_not({"GPU": 0.25})
    assert reason is not None and "GPU" in reason and "0 of 2 free" in reason


def test_fraction_fits_where_room_is_left() -> None:
    pool = ResourcePool({"GPU": 2})
    assert pool.allocate({"GPU": 0.7}) is not None  # device 0: 0.3 left
    b = pool.allocate({"GPU": 0.5})
    assert b is not None and b.cuda_visible_devices == "1"  # does not fit on device 0
    c = pool.allocate({"GPU": 0.3})
    assert c is not None and c.cuda_visible_devices == "0"  # exactly what is left


def test_whole_gpu_needs_a_device_with_no_fraction_taken() -> None:
    pool = ResourcePool({"GPU": 2})
    assert pool.allocate({"GPU": 0.1}) is not None  # device 0 partly used
    a = pool.allocate({"GPU": 1})
    assert a is not None and a.cuda_visible_devices == "1"
    assert pool.allocate({"GPU": 1}) is None  # 0.9 free on device 0 is not a whole GPU


def test_gpu_request_on_a_node_without_gpus() -> None:
    pool = ResourcePool({"CPU": 4, "GPU": 0})
    assert pool.allocate({"CPU": 1, "GPU": 1}) is None
    reason = pool.why_not({"GPU": 1})
    assert reason is not None
    assert reason.startswith("Waiting for resources (")
    assert "GPU: needs 1, this node has none" in reason


def test_custom_resources_are_hard_limits() -> None:
    pool = ResourcePool({"CPU": 1, "GPU": 0, "accelerator": 2})
    a = pool.allocate({"CPU": 1, "accelerator": 1.5})
    assert a is not None
    assert pool.available()["accelerator"] == pytest.approx(0.5)
    assert pool.allocate({"accelerator": 1}) is None
    reason = pool.why_not({"accelerator": 1})
    assert reason is not None and "accelerator: needs 1, 0.5 of 2 free" in reason
    missing = pool.why_not({"tpu": 1})
    assert missing is not None and "tpu: needs 1, this node has none" in missing
    # A zero request of an unknown resource is no request.
    assert pool.why_not({"tpu": 0}) is None


def test_why_not_lists_every_missing_resource() -> None:
    pool = ResourcePool({"CPU": 1, "GPU": 0, "memory": 1000})
    reason = pool.why_not({"GPU": 1, "memory": 2000, "CPU": 64})
    assert reason is not None
    assert "GPU" in reason and "memory: needs 2000, 1000 of 1000 free" in reason
    assert "CPU" not in reason  # soft


def test_failed_allocation_takes_nothing() -> None:
    pool = ResourcePool({"CPU": 4, "GPU": 1, "x": 1})
    assert pool.allocate({"CPU": 1, "GPU": 1, "x": 2}) is None
    assert pool.used == {"CPU": 0.0, "GPU": 0.0, "x": 0.0}
    assert pool.allocate({"GPU": 1}) is not None


def test_release_returns_everything() -> None:
    pool = ResourcePool({"CPU": 2, "GPU": 2, "x": 1}, hard_cpu=True)
    a = pool.allocate({"CPU": 2, "GPU": 1.5, "x": 1})
    assert a is not None and a.cuda_visible_devices == "0,1"
    assert pool.allocate({"GPU": 0.5}) is None
    pool.release(a)
    assert pool.available() == {"CPU": 2, "GPU": 2, "x": 1}
    b = pool.allocate({"CPU": 2, "GPU": 2, "x": 1})
    assert b is not None and b.cuda_visible_devices == "0,1"


def test_release_of_fractions_frees_the_device() -> None:
    pool = ResourcePool({"GPU": 1})
    parts = [pool.allocate({"GPU": 0.25}) for _ in range(4)]
    assert pool.allocate({"GPU": 0.25}) is None
    for p in parts:
        assert p is not None
        pool.release(p)
    whole = pool.allocate({"GPU": 1})
    assert whole is not None and whole.cuda_visible_devices == "0"


def test_detect_gpus_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert detect_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert detect_gpus() == 0
    assert ResourcePool.detect(num_cpus=1).capacity["GPU"] == 0
