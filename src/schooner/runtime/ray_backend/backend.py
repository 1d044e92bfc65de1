"""The controller's side of the Ray backend: replica actors, placement, proxies per node.

:class:`RayBackend` is what :class:`schooner.controller.controller.Controller`
calls instead of the local launcher and resource pool when the instance runs
on a Ray cluster (see :class:`schooner.runtime.backend.ClusterBackend`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from schooner.rpc.messages import DeploymentID
from schooner.rpc.transport import forwarded_environment
from schooner.runtime.ray_backend.names import NAMESPACE, replica_actor_name
from schooner.runtime.ray_backend.placement import ClusterPlacement, Node
from schooner.runtime.ray_backend.proxies import ProxyFleet
from schooner.runtime.ray_backend.replica_actor import ReplicaActor, ReplicaLaunch
from schooner.runtime.resources import Allocation

logger = logging.getLogger("schooner.controller")

#: Methods Ray calls on a replica actor at once (``wait_stopped`` blocks one of them).
_ACTOR_CONCURRENCY = 4

_RemoteReplica = ray.remote(ReplicaActor)
#: How often Ray is asked why a replica actor is not placed yet.
_ASK_EVERY_S = 2.0


def list_nodes() -> list[Node]:
    """The alive nodes of the cluster and their total resources."""
    nodes = []
    for entry in ray.nodes():
        if not entry.get("Alive"):
            continue
        total = {k: float(v) for k, v in entry.get("Resources", {}).items()}
        nodes.append(
            Node(
                node_id=entry["NodeID"],
                ip=entry.get("NodeManagerAddress", ""),
                total={k: v for k, v in total.items() if not k.startswith("node:")},
                is_head="node:__internal_head__" in total,
            )
        )
    return nodes


def _node_lost(exc: BaseException) -> bool:
    """Whether Ray says the actor died with (or could not be placed on) its node."""
    if isinstance(exc, ActorUnschedulableError):
        return True
    if isinstance(exc, RayActorError) and not exc.actor_init_failed:
        text = str(exc).lower()
        return "node" in text and any(w in text for w in ("died", "dead", "removed", "failed"))
    return False


class RayReplica:
    """A replica actor as the controller sees a process (``poll``, ``terminate``, ``kill``)."""

    def __init__(
        self,
        actor: Any,
        name: str,
        group: PlacementGroup | None = None,
        pid: int = 0,
        on_death: Callable[[RayReplica], None] | None = None,
        node_id: str | None = None,
    ) -> None:
        self.actor = actor
        self.name = name
        self.group = group
        self.node_id = node_id
        self._pid = pid
        self._stopped = actor.wait_stopped.remote()
        self._code: int | None = None
        self._on_death = on_death
        #: Why the actor died (Ray's words), and whether its node went away with it: then
        #: the replica's failure to start is the cluster's, not its code's.
        self.exit_reason: str | None = None
        self.node_lost = False
        #: Why Ray has not placed it yet, and when that was last asked (see waiting_reason).
        self.waiting: str | None = None
        self.asked_at = float("-inf")

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        if self._code is None:
            ready, _ = ray.wait([self._stopped], timeout=0)
            if ready:
                try:
                    ray.get(ready[0])
                    self._code = 0
                except Exception as exc:  # the actor died (RayActorError): its node, a kill
                    self._code = -1
                    self.exit_reason = "The replica actor died: " + str(exc).strip()
                    self.node_lost = _node_lost(exc)
                    if self._on_death is not None:
                        self._on_death(self)
                self._release()
        return self._code

    def terminate(self) -> None:
        with contextlib.suppress(Exception):
            self.actor.stop.remote()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)

    def _release(self) -> None:
        self.kill()  # its process exits, its resources return to Ray
        if self.group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.group)
            self.group = None


class RayBackend:
    """Replica actors and proxies of one Schooner instance on the connected Ray cluster."""

    def __init__(
        self,
        instance: str,
        controller_address: str,
        secret: bytes,
        proxies: ProxyFleet | None = None,
    ) -> None:
        self.instance = instance
        self.controller_address = controller_address
        self.secret = secret
        self.placement = ClusterPlacement(list_nodes, time.monotonic)
        self.proxies = proxies
        self.node_id = ray.get_runtime_context().get_node_id()

    # -- placement ---------------------------------------------------------------
    def place(self, dep: DeploymentID, config: Any) -> Allocation | str:
        """An allocation for one more replica of ``dep``, or why there is none."""
        request = config.required_resources()
        if config.placement_group_bundles:
            return Allocation(request=request, node_id=None, group=str(dep))
        max_per_node = config.max_replicas_per_node
        allocation = self.placement.allocate(request, str(dep), max_per_node)
        if allocation is None:
            return self.placement.why_not(request, str(dep), max_per_node)
        return allocation

    def release(self, allocation: Allocation) -> None:
        self.placement.release(allocation)

    def restore(self, allocation: Allocation) -> None:
        self.placement.restore(allocation)

    # -- replicas ----------------------------------------------------------------
    def start_replica(
        self,
        replica_id: str,
        dep: DeploymentID,
        config: Any,
        env: dict[str, str],
        sys_path: list[str],
        allocation: Allocation,
        ray_runtime_env: dict[str, Any],
    ) -> RayReplica:
        name = replica_actor_name(dep.app_name, dep.name, replica_id)
        options = self._actor_options(config, allocation)
        if ray_runtime_env:
            options["runtime_env"] = dict(ray_runtime_env)
        group = None
        if config.placement_group_bundles:
            group = placement_group(
                config.placement_group_bundles,
                strategy=config.placement_group_strategy or "PACK",
            )
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                group,
                placement_group_bundle_index=0,
                placement_group_capture_child_tasks=True,
            )
        launch = ReplicaLaunch(
            instance=self.instance,
            controller_address=self.controller_address,
            secret=self.secret,
            replica_id=replica_id,
            app=dep.app_name,
            deployment=dep.name,
            env={**forwarded_environment(), **env},
            sys_path=sys_path,
        )
        actor = _RemoteReplica.options(name=name, **options).remote(launch)
        return RayReplica(actor, name, group, on_death=self._died, node_id=allocation.node_id)

    def _died(self, replica: RayReplica) -> None:
        """A replica actor died: if its node is suspect, place nothing there for a while
        (Ray takes some seconds to declare a node dead)."""
        if replica.node_id is not None and replica.node_lost:
            self.placement.quarantine(replica.node_id)
        logger.warning("%s: %s", replica.name, replica.exit_reason)

    def _actor_options(self, config: Any, allocation: Allocation) -> dict[str, Any]:
        opts = dict(config.ray_actor_options or {})
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "max_restarts": 0,
            "max_concurrency": _ACTOR_CONCURRENCY,
            "num_cpus": 1.0 if opts.get("num_cpus") is None else float(opts["num_cpus"]),
        }
        for key in ("num_gpus", "memory", "resources", "accelerator_type"):
            if opts.get(key) is not None:
                options[key] = opts[key]
        if allocation.node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                allocation.node_id, soft=False
            )
        return options

    def adopt(self, dep: DeploymentID, replica_id: str, pid: int) -> RayReplica | None:
        """The replica actor a previous head started, if it still exists."""
        name = replica_actor_name(dep.app_name, dep.name, replica_id)
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
        return RayReplica(actor, name, pid=pid)

    def stop_strays(self, known: set[str]) -> None:
        """Kill replica actors of this instance that no record owns (started by a crashed
        head after its last checkpoint)."""
        try:
            # The GCS's actor table (Ray's state API would need the dashboard).
            from ray._private.state import actors as actor_table

            entries = list(actor_table().values())
        except Exception as exc:
            logger.warning("could not list replica actors to stop strays: %r", exc)
            return
        for entry in entries:
            name = entry.get("Name") or ""
            if entry.get("State") != "ALIVE" or not name.startswith("SERVE_REPLICA::"):
                continue
            if name.rsplit("#", 1)[-1] in known:
                continue
            try:  # only ours: Ray Serve's replicas have such names too, in its own namespace
                actor = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            logger.warning("stopping replica actor %s that no record owns", name)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    # -- proxies -----------------------------------------------------------------
    def tick(self) -> None:
        if self.proxies is not None:
            self.proxies.reconcile(self.placement.nodes())

    def waiting_reason(self, process: object, request: dict[str, float]) -> str | None:
        """Why Ray has not yet placed a replica actor that Schooner placed (other Ray work
        on the cluster holds the resources), or None if it has."""
        if not isinstance(process, RayReplica):
            return None
        now = time.monotonic()
        if now - process.asked_at < _ASK_EVERY_S:  # the GCS is asked once in a while
            return process.waiting
        process.asked_at = now
        process.waiting = self._ask_why_waiting(process, request)
        return process.waiting

    def _ask_why_waiting(self, process: RayReplica, request: dict[str, float]) -> str | None:
        try:
            from ray._private.state import actors, available_resources_per_node

            state = actors(process.actor._actor_id.hex()).get("State")
            if state not in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"):
                return None
            free = available_resources_per_node().get(process.node_id or "", {})
        except Exception:
            return None
        short = [
            f"{name}: needs {amount:g}, {free.get(name, 0.0):g} free"
            for name, amount in request.items()
            if amount > 0 and free.get(name, 0.0) < amount
        ]
        where = f"node {process.node_id[:8]}" if process.node_id else "the cluster"
        reported = f" (Ray reports {'; '.join(short)} there)" if short else ""
        return f"Waiting for Ray to place it on {where}{reported}."

    def node_ips(self) -> dict[str, str]:
        return {n.node_id: n.ip for n in self.placement.nodes()}

    def proxy_nodes(self) -> set[str]:
        return set(self.proxies.actors) if self.proxies is not None else set()

    def stop_proxies(self) -> None:
        if self.proxies is not None:
            self.proxies.stop_all()
