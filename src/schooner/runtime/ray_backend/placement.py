"""Choosing the node of each replica on a Ray cluster, and saying why none fits.

The view of the cluster is the alive nodes and their total resources (from
Ray) minus what this instance has placed on each; the replica's actor is then
pinned to the chosen node, so ``max_replicas_per_node`` holds and a replica
that fits nowhere waits with a reason instead of sitting in Ray's queue. Pure
logic: the node list comes from a function, so it is unit-tested without Ray.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from schooner.runtime.resources import Allocation

_EPS = 1e-9
#: How often the node list is read again from Ray.
REFRESH_S = 1.0
#: A node where a replica actor was lost with its node gets no replicas for this long,
#: unless Ray removes it first (Ray takes some seconds to declare a node dead).
QUARANTINE_S = 30.0


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    total: dict[str, float]
    is_head: bool = False


@dataclass
class Placement:
    """What this instance has placed, per node."""

    used: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    per_group: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))


def _fmt(name: str, amount: float) -> str:
    if name == "memory":
        return f"{amount / 2**20:.0f} MiB"
    return f"{amount:g}"


class ClusterPlacement:
    """Nodes of the cluster and this instance's replicas on them."""

    def __init__(self, list_nodes: Callable[[], list[Node]], clock: Callable[[], float]) -> None:
        self._list_nodes = list_nodes
        self._clock = clock
        self._nodes: list[Node] = []
        self._read_at = float("-inf")
        self.placed = Placement()
        self._quarantined: dict[str, float] = {}

    # -- the node list -----------------------------------------------------------
    def nodes(self, fresh: bool = False) -> list[Node]:
        now = self._clock()
        if fresh or now - self._read_at >= REFRESH_S:
            self._nodes = self._list_nodes()
            self._read_at = now
            for node_id, until in list(self._quarantined.items()):
                if now >= until:
                    del self._quarantined[node_id]
        return self._nodes

    def quarantine(self, node_id: str) -> None:
        """Place nothing on ``node_id`` for :data:`QUARANTINE_S` (it looks dead)."""
        self._quarantined[node_id] = self._clock() + QUARANTINE_S

    def usable(self, fresh: bool = False) -> list[Node]:
        return [n for n in self.nodes(fresh) if n.node_id not in self._quarantined]

    def free(self, node: Node) -> dict[str, float]:
        used = self.placed.used.get(node.node_id, {})
        return {k: v - used.get(k, 0.0) for k, v in node.total.items()}

    # -- placing -----------------------------------------------------------------
    def _missing(
        self, node: Node, request: dict[str, float], group: str, max_per_node: int | None
    ) -> list[str]:
        missing = []
        placed_here = self.placed.per_group[(group, node.node_id)]
        if max_per_node is not None and placed_here >= max_per_node:
            missing.append(f"already {max_per_node} replica(s) there (max_replicas_per_node)")
        free = self.free(node)
        for name, amount in request.items():
            if amount <= 0:
                continue
            have = free.get(name, 0.0)
            if amount > have + _EPS:
                total = node.total.get(name)
                if total is None:
                    missing.append(f"{name}: needs {_fmt(name, amount)}, the node has none")
                else:
                    missing.append(
                        f"{name}: needs {_fmt(name, amount)}, "
                        f"{_fmt(name, max(have, 0.0))} of {_fmt(name, total)} free"
                    )
        return missing

    def allocate(
        self, request: dict[str, float], group: str, max_per_node: int | None = None
    ) -> Allocation | None:
        """Pick a node for one replica (the one with most free CPU among those it fits,
        spreading replicas); None if it fits on no node."""
        fitting = [n for n in self.usable() if not self._missing(n, request, group, max_per_node)]
        if not fitting:
            fitting = [
                n
                for n in self.usable(fresh=True)
                if not self._missing(n, request, group, max_per_node)
            ]
            if not fitting:
                return None
        node = max(
            fitting,
            key=lambda n: (
                -self.placed.per_group[(group, n.node_id)],
                self.free(n).get("CPU", 0.0),
                n.node_id,
            ),
        )
        allocation = Allocation(request=dict(request), node_id=node.node_id, group=group)
        self.restore(allocation)
        return allocation

    def why_not(self, request: dict[str, float], group: str, max_per_node: int | None) -> str:
        nodes = self.nodes()
        if not nodes:
            return "Waiting for resources: the Ray cluster has no alive node."
        parts = []
        for node in nodes:
            if node.node_id in self._quarantined:
                parts.append(f"node {node.node_id[:8]} ({node.ip}): lost a replica with its node")
                continue
            missing = self._missing(node, request, group, max_per_node)
            parts.append(f"node {node.node_id[:8]} ({node.ip}): " + ", ".join(missing))
        return "Waiting for resources: no node fits the replica (" + "; ".join(parts) + ")."

    def release(self, allocation: Allocation) -> None:
        node = allocation.node_id
        if node is None:
            return
        used = self.placed.used[node]
        for name, amount in allocation.request.items():
            used[name] = max(0.0, used.get(name, 0.0) - amount)
        key = (allocation.group, node)
        self.placed.per_group[key] = max(0, self.placed.per_group[key] - 1)

    def restore(self, allocation: Allocation) -> None:
        node = allocation.node_id
        if node is None:
            return
        used = self.placed.used[node]
        for name, amount in allocation.request.items():
            used[name] = used.get(name, 0.0) + amount
        self.placed.per_group[(allocation.group, node)] += 1
