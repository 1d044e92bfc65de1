"""Replica ranks: each replica's place in its deployment, as Ray 2.60 assigns them.

A replica gets a rank when it is started and keeps it until its process is
gone. Three numberings are kept (Ray's ``DeploymentRankManager``): ``rank``
over the deployment's replicas, ``node_rank`` over the nodes they run on, and
``local_rank`` over the deployment's replicas on one node. A new replica takes
the smallest rank free, so ranks stay dense while a deployment only grows.

When replicas go (downscale, a replica that died), gaps appear. Once the
deployment is HEALTHY again with no replica starting, and the set of replicas
changed since the last pass, ranks are made dense (0..n-1) again with the
fewest changes: replicas whose rank is in range keep it, the others take the
free ones in order. Each replica is told its rank and the deployment's
``world_size`` (its target number of replicas) whenever either changes; it
calls ``reconfigure(user_config, rank=...)`` when the rank changed and its
``reconfigure`` takes a ``rank`` parameter.

Ranks are part of the checkpoint, so a head that re-adopts replicas after a
crash recovers them instead of numbering afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from schooner.rpc.connection import ConnectionLost, RemoteCallError
from schooner.schema import DeploymentStatus, ReplicaState

if TYPE_CHECKING:
    from schooner.controller.state import DeploymentState, ReplicaRecord

__all__ = ["DeploymentRanks", "Rank", "RankCounter", "deliver_rank", "sync_ranks"]

logger = logging.getLogger("schooner.controller")


class Rank(NamedTuple):
    """A replica's rank as the controller keeps it and sends it (``ReplicaRank`` fields)."""

    rank: int
    node_rank: int
    local_rank: int


class RankCounter:
    """Dense ranks for a set of keys: a new key takes the smallest free rank."""

    def __init__(self) -> None:
        self._ranks: dict[str, int] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._ranks

    def __len__(self) -> int:
        return len(self._ranks)

    def assign(self, key: str) -> int:
        if key in self._ranks:
            return self._ranks[key]
        taken = set(self._ranks.values())
        rank = next(r for r in range(len(taken) + 1) if r not in taken)
        self._ranks[key] = rank
        return rank

    def recover(self, key: str, rank: int) -> None:
        self._ranks[key] = rank

    def release(self, key: str) -> None:
        self._ranks.pop(key, None)

    def get(self, key: str) -> int:
        return self._ranks[key]

    def compact(self, keys: Iterable[str]) -> list[str]:
        """Make the ranks of ``keys`` exactly 0..n-1 with the fewest changes; returns the
        keys whose rank changed. Keys not in ``keys`` are dropped."""
        keys = [k for k in keys if k in self._ranks]
        for stale in set(self._ranks) - set(keys):
            del self._ranks[stale]
        wanted = set(range(len(keys)))
        keeping: set[int] = set()
        moving: list[str] = []
        for key in sorted(keys, key=lambda k: self._ranks[k]):
            rank = self._ranks[key]
            if rank in wanted and rank not in keeping:
                keeping.add(rank)
            else:
                moving.append(key)
        free = sorted(wanted - keeping)
        for key, rank in zip(moving, free, strict=True):
            self._ranks[key] = rank
        return moving


@dataclass
class DeploymentRanks:
    """The ranks of one deployment's replicas: global, per node and of the nodes."""

    replicas: RankCounter = field(default_factory=RankCounter)
    nodes: RankCounter = field(default_factory=RankCounter)
    local: dict[str, RankCounter] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)
    #: The replicas the last compaction saw (it runs again when this set changes).
    membership: frozenset[str] = frozenset()

    def assign(self, replica_id: str, node_id: str) -> Rank:
        if replica_id in self.node_of:
            return self.get(replica_id)
        self.node_of[replica_id] = node_id
        self.replicas.assign(replica_id)
        self.nodes.assign(node_id)
        self.local.setdefault(node_id, RankCounter()).assign(replica_id)
        return self.get(replica_id)

    def recover(self, replica_id: str, node_id: str, rank: Rank) -> None:
        """Take back the rank a replica had under a previous head."""
        self.node_of[replica_id] = node_id
        self.replicas.recover(replica_id, rank.rank)
        if node_id not in self.nodes:
            self.nodes.recover(node_id, rank.node_rank)
        self.local.setdefault(node_id, RankCounter()).recover(replica_id, rank.local_rank)

    def release(self, replica_id: str) -> None:
        node_id = self.node_of.pop(replica_id, None)
        if node_id is None:
            return
        self.replicas.release(replica_id)
        local = self.local[node_id]
        local.release(replica_id)
        if not len(local):
            del self.local[node_id]
            self.nodes.release(node_id)

    def get(self, replica_id: str) -> Rank:
        node_id = self.node_of[replica_id]
        return Rank(
            self.replicas.get(replica_id),
            self.nodes.get(node_id),
            self.local[node_id].get(replica_id),
        )

    def has(self, replica_id: str) -> bool:
        return replica_id in self.node_of

    def compact(self, replica_ids: Iterable[str]) -> set[str]:
        """Make all three numberings dense; the replicas whose rank changed."""
        ids = [r for r in replica_ids if r in self.node_of]
        changed = set(self.replicas.compact(ids))
        by_node: dict[str, list[str]] = {}
        for replica_id in ids:
            by_node.setdefault(self.node_of[replica_id], []).append(replica_id)
        for node_id, on_node in by_node.items():
            changed.update(self.local[node_id].compact(on_node))
        for node_id in self.nodes.compact(by_node):
            changed.update(by_node[node_id])
        return changed


def sync_ranks(dep: DeploymentState, send: Callable[[ReplicaRecord, Rank, int], Any]) -> None:
    """After a reconcile step: make ranks dense when the deployment has settled, and
    ``send(replica, rank, world_size)`` to each live replica whose rank or world size it
    has not yet been told."""
    ranks = dep.ranks
    held = [r for r in dep.replicas.values() if ranks.has(r.replica_id)]
    settled = dep.status == DeploymentStatus.HEALTHY and not any(
        r.state == ReplicaState.STARTING for r in held
    )
    membership = frozenset(r.replica_id for r in held)
    if settled and membership != ranks.membership:
        ranks.compact(sorted(membership))
        ranks.membership = membership
    world_size = dep.target_num_replicas
    for replica in held:
        if replica.state not in (ReplicaState.RUNNING, ReplicaState.UPDATING):
            continue
        if replica.conn is None or replica.rank_sending:
            continue
        rank = ranks.get(replica.replica_id)
        if replica.rank_delivered != (rank, world_size):
            send(replica, rank, world_size)


async def deliver_rank(replica: ReplicaRecord, rank: Rank, world_size: int) -> None:
    """Tell a replica its rank and world size (``rpc_set_rank``); retried at the next tick
    if it fails (a replica that died is reaped and its rank released meanwhile)."""
    assert replica.conn is not None
    replica.rank_sending = True
    try:
        await replica.conn.call("set_rank", tuple(rank), world_size)
    except (RemoteCallError, ConnectionLost) as exc:
        logger.warning("telling replica %s its rank failed: %s", replica.replica_id, exc)
    else:
        replica.rank_delivered = (rank, world_size)
    finally:
        replica.rank_sending = False
