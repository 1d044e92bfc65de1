"""What the controller asks of a cluster backend (the Ray backend) instead of its local
launcher and resource pool.

On the embedded runtime the controller starts replica processes itself
(:mod:`schooner.runtime.launcher`) and accounts this node's resources
(:mod:`schooner.runtime.resources`); on a cluster, a :class:`ClusterBackend`
places and starts replicas (:mod:`schooner.runtime.ray_backend.backend`).
"""

from __future__ import annotations

from typing import Any, Protocol

from schooner.rpc.messages import DeploymentID
from schooner.runtime.launcher import ProcessHandle
from schooner.runtime.resources import Allocation


class ClusterBackend(Protocol):
    #: The node the head runs on.
    node_id: str
    #: What every TCP connection to the instance must prove it knows.
    secret: bytes

    def place(self, dep: DeploymentID, config: Any) -> Allocation | str:
        """Resources (and a node) for one more replica of ``dep``, or why there are none."""

    def release(self, allocation: Allocation) -> None: ...

    def restore(self, allocation: Allocation) -> None: ...

    def start_replica(
        self,
        replica_id: str,
        dep: DeploymentID,
        config: Any,
        env: dict[str, str],
        sys_path: list[str],
        allocation: Allocation,
        ray_runtime_env: dict[str, Any],
    ) -> ProcessHandle:
        """Start one replica; ``ray_runtime_env``: runtime_env fields the cluster sets up."""

    def adopt(self, dep: DeploymentID, replica_id: str, pid: int) -> ProcessHandle | None:
        """The replica a previous head started, if it still runs."""

    def stop_strays(self, known: set[str]) -> None:
        """Stop replicas of this instance whose ids are not in ``known``."""

    def tick(self) -> None:
        """Once per reconcile tick (proxies on joining and leaving nodes)."""

    def waiting_reason(self, process: object, request: dict[str, float]) -> str | None:
        """Why the cluster has not started a replica it was asked to start, if it says."""

    def node_ips(self) -> dict[str, str]:
        """The IP address of each alive node."""

    def proxy_nodes(self) -> set[str]:
        """The nodes where the backend runs a proxy (started or starting)."""

    def stop_proxies(self) -> None:
        """Stop the proxies the backend started on other nodes (at shutdown)."""
