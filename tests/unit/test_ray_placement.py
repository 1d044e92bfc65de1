"""Choosing nodes for replicas on a Ray cluster (pure logic: a fake node list and clock)."""

from __future__ import annotations

from schooner.runtime.ray_backend.placement import QUARANTINE_S, ClusterPlacement, Node


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cluster(*nodes: Node) -> tuple[ClusterPlacement, list[Node], Clock]:
    listed = list(nodes)
    clock = Clock()
    return ClusterPlacement(lambda: list(listed), clock), listed, clock


HEAD = Node("head", "10.0.0.1", {"CPU": 2.0}, is_head=True)
GPU = Node("gpu", "10.0.0.2", {"CPU": 4.0, "GPU": 1.0, "node_b": 10.0})


def test_a_replica_goes_to_the_node_that_has_its_resource() -> None:
    placement, _, _ = cluster(HEAD, GPU)
    allocation = placement.allocate({"CPU": 1.0, "GPU": 0.5}, "app#d")
    assert allocation is not None and allocation.node_id == "gpu"
    again = placement.allocate({"CPU": 1.0, "GPU": 0.5}, "app#d")
    assert again is not None and again.node_id == "gpu"
    assert placement.allocate({"CPU": 1.0, "GPU": 0.5}, "app#d") is None  # the GPU is taken


def test_released_resources_can_be_placed_again() -> None:
    placement, _, _ = cluster(HEAD)
    first = placement.allocate({"CPU": 2.0}, "a#d")
    assert first is not None
    assert placement.allocate({"CPU": 1.0}, "a#d") is None
    placement.release(first)
    assert placement.allocate({"CPU": 1.0}, "a#d") is not None


def test_replicas_spread_and_max_replicas_per_node_holds() -> None:
    placement, _, _ = cluster(HEAD, GPU)
    nodes = [placement.allocate({"CPU": 0.1}, "a#d", max_per_node=1) for _ in range(2)]
    assert sorted(a.node_id for a in nodes if a is not None) == ["gpu", "head"]
    assert placement.allocate({"CPU": 0.1}, "a#d", max_per_node=1) is None
    why = placement.why_not({"CPU": 0.1}, "a#d", 1)
    assert "max_replicas_per_node" in why
    # another deployment is not limited by this one's replicas
    assert placement.allocate({"CPU": 0.1}, "a#other", max_per_node=1) is not None


def test_why_not_names_the_resource_and_what_each_node_has_free() -> None:
    placement, _, _ = cluster(HEAD, GPU)
    assert placement.allocate({"CPU": 3.0}, "a#d") is not None  # on gpu (the only fit)
    why = placement.why_not({"CPU": 3.0, "accelerator_type:A100": 0.001}, "a#d", None)
    assert "node head (10.0.0.1): CPU: needs 3, 2 of 2 free" in why
    assert "node gpu (10.0.0.2): CPU: needs 3, 1 of 4 free" in why
    assert "accelerator_type:A100: needs 0.001, the node has none" in why


def test_a_node_that_joins_is_used_at_once() -> None:
    placement, listed, _ = cluster(HEAD)
    assert placement.allocate({"node_b": 1.0}, "a#d") is None
    listed.append(GPU)  # read again when nothing fits, without waiting for the refresh
    allocation = placement.allocate({"node_b": 1.0}, "a#d")
    assert allocation is not None and allocation.node_id == "gpu"


def test_a_node_that_lost_a_replica_gets_none_while_quarantined() -> None:
    placement, _, clock = cluster(HEAD, GPU)
    placement.quarantine("gpu")
    allocation = placement.allocate({"CPU": 0.5}, "a#d")
    assert allocation is not None and allocation.node_id == "head"
    assert placement.allocate({"node_b": 1.0}, "a#d") is None
    assert "lost a replica with its node" in placement.why_not({"node_b": 1.0}, "a#d", None)
    clock.now += QUARANTINE_S + 1
    allocation = placement.allocate({"node_b": 1.0}, "a#d")
    assert allocation is not None and allocation.node_id == "gpu"


def test_memory_is_shown_in_mebibytes() -> None:
    placement, _, _ = cluster(Node("n", "10.0.0.3", {"CPU": 1.0, "memory": 2.0 * 2**30}))
    why = placement.why_not({"memory": 4.0 * 2**30}, "a#d", None)
    assert "memory: needs 4096 MiB, 2048 MiB of 2048 MiB free" in why
