"""Replica ranks and world size, as user code sees them in real replicas."""

from __future__ import annotations

import os
import signal
from typing import Any

from helpers import wait_for

import schooner as serve
from schooner import api
from schooner.schema import ReplicaRank


@serve.deployment(num_replicas=3, max_ongoing_requests=1)
class Ranked:
    def __init__(self) -> None:
        ctx = serve.get_replica_context()
        self.rank_in_init = ctx.rank.rank if ctx.rank is not None else None
        self.reconfigured: list[int] = []

    def reconfigure(self, config: Any, rank: ReplicaRank) -> None:
        self.reconfigured.append(rank.rank)

    def info(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        assert ctx.rank is not None
        return {
            "id": ctx.replica_tag,
            "pid": os.getpid(),
            "rank": ctx.rank.rank,
            "local_rank": ctx.rank.local_rank,
            "node_rank": ctx.rank.node_rank,
            "world_size": ctx.world_size,
            "rank_in_init": self.rank_in_init,
            "reconfigured": list(self.reconfigured),
        }


def _running_ids() -> set[str]:
    """Ids of the RUNNING replicas of the test's deployment (from the instance details)."""
    details = api._controller_call("details")
    deployment = details["applications"]["ranks"]["deployments"]["Ranked"]
    return {r["replica_id"] for r in deployment["replicas"] if r["state"] == "RUNNING"}


def _replicas(handle: serve.DeploymentHandle, count: int) -> dict[str, dict[str, Any]]:
    """Call until ``count`` distinct replicas answered (max_ongoing_requests=1 spreads calls)."""
    seen: dict[str, dict[str, Any]] = {}

    def all_seen() -> bool:
        responses = [handle.info.remote() for _ in range(count * 4)]
        for response in responses:
            info = response.result(timeout_s=30)
            seen[info["id"]] = info
        return len(seen) >= count

    wait_for(all_seen, message=f"{count} replicas to answer")
    return seen


def test_ranks_are_dense_and_follow_scale_down_and_replica_death(clean) -> None:
    handle = serve.run(Ranked.bind(), name="ranks", route_prefix=None)
    infos = _replicas(handle, 3)
    assert sorted(i["rank"] for i in infos.values()) == [0, 1, 2]
    assert sorted(i["local_rank"] for i in infos.values()) == [0, 1, 2]
    assert {i["node_rank"] for i in infos.values()} == {0}
    assert {i["world_size"] for i in infos.values()} == {3}
    for info in infos.values():  # known in the constructor, and given to reconfigure at start
        assert info["rank_in_init"] == info["rank"]
        assert info["reconfigured"][0] == info["rank"]

    handle = serve.run(Ranked.options(num_replicas=2).bind(), name="ranks", route_prefix=None)

    def dense_after_downscale() -> dict[str, dict[str, Any]] | None:
        now = _replicas(handle, 2)
        live = {k: v for k, v in now.items() if k in _running_ids()}
        ranks = sorted(v["rank"] for v in live.values())
        sizes = {v["world_size"] for v in live.values()}
        return live if ranks == [0, 1] and sizes == {2} else None

    live = wait_for(dense_after_downscale, message="ranks 0..1 with world_size 2")
    for info in live.values():  # a replica that moved was reconfigured with its new rank
        assert info["reconfigured"][-1] == info["rank"]

    victim = next(i for i in live.values() if i["rank"] == 0)
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> bool:
        ids = _running_ids()
        if victim["id"] in ids or len(ids) != 2:
            return False
        now = _replicas(handle, 2)
        return sorted(v["rank"] for k, v in now.items() if k in ids) == [0, 1]

    wait_for(replaced, timeout_s=60, message="the dead replica's rank to go to its replacement")
