"""The local Ray cluster fixture itself: its nodes, and adding and killing one."""

from __future__ import annotations

import pytest
from ray_cluster import LocalRayCluster, alive

pytestmark = pytest.mark.ray


def _alive_nodes() -> dict[str, dict[str, float]]:
    import ray

    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}


def test_head_and_two_workers_with_their_own_resources(ray_cluster: LocalRayCluster) -> None:
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    try:
        nodes = _alive_nodes()
        assert set(nodes) == {n.node_id for n in ray_cluster.nodes}
        for node in ray_cluster.nodes:
            for name, amount in node.resources.items():
                assert nodes[node.node_id][name] == amount
            assert nodes[node.node_id]["CPU"] == node.num_cpus
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_killed_node_leaves_no_process_and_the_cluster_notices(
    ray_cluster: LocalRayCluster,
) -> None:
    import ray
    from helpers import wait_for

    extra = ray_cluster.add_worker({"node_extra": 1}, num_cpus=1)
    ray.init(address=ray_cluster.address, log_to_driver=False)
    try:

        @ray.remote(num_cpus=0, resources={"node_extra": 1})
        class Pinned:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        actor = Pinned.remote()  # type: ignore[attr-defined]
        assert ray.get(actor.node.remote(), timeout=60) == extra.node_id
        pids = extra.pids()
        assert len(pids) > 3  # raylet, agents, and the actor's worker
        ray_cluster.kill_node(extra)
        assert not [pid for pid in pids if alive(pid)]
        wait_for(lambda: extra.node_id not in _alive_nodes(), timeout_s=30, message="node death")
    finally:
        ray.shutdown()
        if extra in ray_cluster.workers:
            ray_cluster.kill_node(extra)
