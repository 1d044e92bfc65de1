"""ResourcePool: soft or hard CPUs, GPUs by index (fractions share one), custom resources."""

from __future__ import annotations

import pytest

from schooner.exceptions import RayServeException
from schooner.runtime.resources import ResourcePool, check_num_gpus, detect_gpus, visible_gpu_ids


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
    assert pool.cuda_visible_devices(a) == "0"
    assert pool.cuda_visible_devices(b) == "1,2"
    assert pool.allocate({"GPU": 1}) is None
    reason = pool.why_not({"GPU": 1})
    assert reason is not None and "GPU: needs 1, 0 of 3 free" in reason
    assert pool.used["GPU"] == 3


def test_no_gpu_request_sees_no_gpu() -> None:
    pool = ResourcePool({"CPU": 1, "GPU": 2})
    a = pool.allocate({"CPU": 1})
    assert a is not None and pool.cuda_visible_devices(a) == "" and a.gpus == []


def test_fractional_gpus_share_a_device() -> None:
    pool = ResourcePool({"CPU": 4, "GPU": 2})
    halves = [pool.allocate({"GPU": 0.5}) for _ in range(4)]
    assert [pool.cuda_visible_devices(h) for h in halves if h is not None] == ["0", "0", "1", "1"]
    assert pool.allocate({"GPU": 0.5}) is None
    reason = pool.why_not({"GPU": 0.25})
    assert reason is not None and "GPU" in reason and "0 of 2 free" in reason


def test_fraction_fits_where_room_is_left() -> None:
    pool = ResourcePool({"GPU": 2})
    assert pool.allocate({"GPU": 0.7}) is not None  # device 0: 0.3 left
    b = pool.allocate({"GPU": 0.5})
    assert b is not None and pool.cuda_visible_devices(b) == "1"  # does not fit on device 0
    c = pool.allocate({"GPU": 0.3})
    assert c is not None and pool.cuda_visible_devices(c) == "0"  # exactly what is left


def test_whole_gpu_needs_a_device_with_no_fraction_taken() -> None:
    pool = ResourcePool({"GPU": 2})
    assert pool.allocate({"GPU": 0.1}) is not None  # device 0 partly used
    a = pool.allocate({"GPU": 1})
    assert a is not None and pool.cuda_visible_devices(a) == "1"
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
    assert a is not None and pool.cuda_visible_devices(a) == "0,1"
    assert pool.allocate({"GPU": 0.5}) is None
    pool.release(a)
    assert pool.available() == {"CPU": 2, "GPU": 2, "x": 1}
    b = pool.allocate({"CPU": 2, "GPU": 2, "x": 1})
    assert b is not None and pool.cuda_visible_devices(b) == "0,1"


def test_release_of_fractions_frees_the_device() -> None:
    pool = ResourcePool({"GPU": 1})
    parts = [pool.allocate({"GPU": 0.25}) for _ in range(4)]
    assert pool.allocate({"GPU": 0.25}) is None
    for p in parts:
        assert p is not None
        pool.release(p)
    whole = pool.allocate({"GPU": 1})
    assert whole is not None and pool.cuda_visible_devices(whole) == "0"


def test_visible_gpu_ids() -> None:
    assert visible_gpu_ids(None) is None  # unset: not a list of none
    assert visible_gpu_ids("") == []
    assert visible_gpu_ids("3,5,7") == ["3", "5", "7"]
    assert visible_gpu_ids(" 3, 5 ,") == ["3", "5"]
    assert visible_gpu_ids("GPU-abc,GPU-def") == ["GPU-abc", "GPU-def"]
    assert visible_gpu_ids("2,-1,4") == ["2"]  # as CUDA: -1 hides itself and what follows
    assert visible_gpu_ids("-1") == []


def test_detect_gpus_follows_cuda_visible_devices() -> None:
    assert detect_gpus("0,2") == 2
    assert detect_gpus("") == 0
    assert detect_gpus("-1") == 0
    assert detect_gpus("GPU-abc") == 1
    assert ResourcePool.detect(num_cpus=1, cuda_visible_devices="3,5,7").capacity["GPU"] == 3
    assert ResourcePool.detect(num_cpus=1, cuda_visible_devices="").capacity["GPU"] == 0


def test_gpu_slots_map_to_the_parents_device_ids() -> None:
    pool = ResourcePool.detect(num_cpus=4, cuda_visible_devices="3,5,7")
    a = pool.allocate({"GPU": 1})
    b = pool.allocate({"GPU": 2})
    none = pool.allocate({"CPU": 1})
    assert a is not None and b is not None and none is not None
    assert pool.cuda_visible_devices(a) == "3"  # the first slot is device 3, not "0"
    assert pool.cuda_visible_devices(b) == "5,7"
    assert pool.cuda_visible_devices(none) == ""


def test_gpu_slots_map_to_uuids_and_fractions_share_them() -> None:
    pool = ResourcePool.detect(num_cpus=4, cuda_visible_devices="GPU-abc,GPU-def")
    halves = [pool.allocate({"GPU": 0.5}) for _ in range(3)]
    assert [pool.cuda_visible_devices(h) for h in halves if h is not None] == [
        "GPU-abc",
        "GPU-abc",
        "GPU-def",
    ]


def test_num_gpus_takes_the_first_listed_devices() -> None:
    pool = ResourcePool.detect(num_cpus=1, num_gpus=1, cuda_visible_devices="6,2")
    assert pool.capacity["GPU"] == 1
    a = pool.allocate({"GPU": 1})
    assert a is not None and pool.cuda_visible_devices(a) == "6"
    assert pool.allocate({"GPU": 1}) is None


def test_num_gpus_beyond_the_listed_devices_is_refused() -> None:
    with pytest.raises(RayServeException, match=r"num_gpus is 3, but CUDA_VISIBLE_DEVICES='3,5'"):
        ResourcePool.detect(num_cpus=1, num_gpus=3, cuda_visible_devices="3,5")
    check_num_gpus(2, "3,5")
    check_num_gpus(4, None)  # unset: the operator says how many there are
