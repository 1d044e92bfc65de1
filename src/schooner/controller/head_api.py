"""What the head answers: the admin API's backend (:class:`AdminAPI`, behind
:mod:`schooner.admin.server`) and the RPC surface for clients, replicas and proxies
(:class:`ControllerSession`, one per connection to the controller socket).

Both are thin: they validate and translate, then act on the :class:`Head` and
its controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from schooner.admin.server import (
    ReplicaLogsUnavailable,
    ReplicaNotFound,
    ScaleNotFound,
    ScaleRejected,
    TrafficNotFound,
)
from schooner.controller.details import app_info, serve_status
from schooner.controller.traffic_config import policy_from_body
from schooner.exceptions import ServeConfigError
from schooner.logs import recent_lines
from schooner.rpc.connection import Connection, ConnectionLost, RemoteCallError
from schooner.rpc.messages import AppSpec

if TYPE_CHECKING:
    from schooner.controller.head import Head

logger = logging.getLogger("schooner.controller")

REPLICA_LOGS_TIMEOUT_S = 2.0
"""How long the dashboard's log tail waits for a replica's lines."""


class AdminAPI:
    """What the admin REST API asks of the head (see :mod:`schooner.admin.server`)."""

    def __init__(self, head: Head) -> None:
        self.head = head

    def details(
        self, api_type: str | None, include: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        return self.head.details(api_type, include)

    def _traffic_owner(self, app: str) -> None:
        state = self.head.controller.apps.get(app)
        if state is None or state.deleting:
            raise TrafficNotFound(
                f"There is no application '{app}'"
                + (" (it is being deleted)." if state is not None else ".")
            )

    def get_traffic(self, app: str) -> dict[str, Any]:
        self._traffic_owner(app)
        policy = self.head.controller.traffic.describe(app)
        involved = [app, *policy["split"], *policy["shadows"]]
        rates = {name: self.head.rates.rates(name) for name in dict.fromkeys(involved)}
        return {**policy, "rates": rates}

    def put_traffic(self, app: str, body: Any) -> Awaitable[None]:
        self._traffic_owner(app)
        split, shadows = policy_from_body(body)
        controller = self.head.controller
        controller.traffic.set_policy(controller.apps, app, split, shadows)
        controller.publish()
        return self.head.flush()

    def put_config(self, body: Any) -> Awaitable[None]:
        doc = self.head.declarative.apply(body)
        self._warn_fixed_options(doc.model_fields_set)
        return self.head.flush()

    def _warn_fixed_options(self, given: set[str]) -> None:
        for key in ("http_options", "grpc_options", "proxy_location"):
            if key in given:
                logger.info("%s in a config only takes effect when the instance starts", key)

    async def delete_all(self) -> None:
        await self.head.delete_all()
        await self.head.flush()

    def scale(self, app: str, deployment: str, target_num_replicas: int) -> None:
        state = self.head.controller.apps.get(app)
        dep = state.deployments.get(deployment) if state is not None else None
        if state is None or dep is None:
            raise ScaleNotFound("Application or Deployment not found")
        if dep.deleting or state.deleting:
            raise ScaleRejected("Deployment is deleted")
        if not state.spec.external_scaler_enabled:
            raise ScaleRejected(
                f"Application '{app}' does not allow external scaling: set "
                "external_scaler_enabled: true for it in the config."
            )
        self.head.controller.scale(dep, target_num_replicas)

    async def start_rollout(self, app: str, body: Any) -> dict[str, Any]:
        """``POST /api/schooner/rollouts/{app}``: body ``{"to": ..., options}``."""
        if not isinstance(body, dict) or not isinstance(body.get("to"), str):
            raise ServeConfigError(
                'The body must be a JSON object with "to" (the application to roll out to) '
                'and optional "steps", "interval_s", "max_error_rate", "max_p99_ms", '
                '"min_requests", "retire".'
            )
        options = {k: v for k, v in body.items() if k != "to"}
        return await self.head.start_rollout(app, body["to"], options)

    def rollout_status(self, app: str) -> dict[str, Any] | None:
        status = self.head.controller.rollouts.status(app)
        return status.to_dict() if status is not None else None

    async def rollout_control(self, app: str, action: str) -> dict[str, Any]:
        return await self.head.rollout_control(app, action)

    def version_info(self) -> dict[str, str]:
        from importlib.metadata import version

        return {
            "session_name": self.head.session.root.name,
            "schooner_version": version("schooner"),
        }

    def instance_info(self) -> dict[str, Any]:
        return self.head.instance_info()

    def metrics_text(self) -> bytes:
        return self.head.metrics.render()

    async def shutdown(self) -> None:
        self.head.explicit_stop = True
        self.head.stop_requested.set()

    def controller_logs(self, limit: int) -> list[str]:
        return recent_lines(limit)

    async def replica_logs(self, replica_id: str, limit: int) -> list[str]:
        """Asked of the replica over the controller's connection to it (``recent_logs``)."""
        found = [
            replica
            for app in self.head.controller.apps.values()
            for dep in app.deployments.values()
            for replica in dep.replicas.values()
            if replica.replica_id == replica_id
        ]
        if not found:
            raise ReplicaNotFound(f"There is no replica with id '{replica_id}'.")
        conn = found[0].conn
        if conn is None:
            raise ReplicaLogsUnavailable(
                f"Replica {replica_id} is {found[0].state.value} and not connected yet."
            )
        try:
            lines = await asyncio.wait_for(conn.call("recent_logs", limit), REPLICA_LOGS_TIMEOUT_S)
        except (ConnectionLost, RemoteCallError) as exc:
            raise ReplicaLogsUnavailable(
                f"Replica {replica_id} did not send its log lines: {exc}"
            ) from exc
        return [str(line) for line in lines]


class ControllerSession:
    """RPC handler for one connection to the controller (driver, proxy or replica)."""

    def __init__(self, head: Head) -> None:
        self.head = head
        self.controller = head.controller
        self.conn: Connection | None = None

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn

    def rpc_ping(self) -> str:
        return "pong"

    def rpc_instance_info(self) -> dict[str, Any]:
        return self.head.instance_info()

    async def rpc_deploy_app(self, spec: AppSpec) -> None:
        self.controller.deploy_app(spec)
        await self.head.flush()

    async def rpc_apply_config(
        self, document: Any, force: bool = False, merge: bool = False
    ) -> list[str]:
        """Apply a config document; returns the names of its applications. ``merge``: add
        them to the current config instead of replacing it (``schooner run``)."""
        doc = self.head.declarative.apply(document, force=force, merge=merge)
        await self.head.flush()
        return [app.name for app in doc.applications]

    def rpc_details(self, api_type: str | None = None) -> dict[str, Any]:
        return self.head.details(api_type)

    async def rpc_delete_app(self, name: str) -> bool:
        deleted = self.head.delete_app(name)
        await self.head.flush()
        return deleted

    async def rpc_delete_all(self) -> None:
        await self.head.delete_all()
        await self.head.flush()

    async def rpc_wait_app(self, name: str, timeout_s: float, until: str) -> str:
        status = await self.controller.wait_app(name, timeout_s, until)
        # What the client is told (RUNNING, deleted) is in the checkpoint first: a head
        # that crashes right after recovers that, not an older state (still deploying).
        await self.head.flush()
        return status

    def rpc_status(self) -> dict[str, Any]:
        return serve_status(self.controller)

    def rpc_app_info(self, name: str) -> dict[str, Any] | None:
        return app_info(self.controller, name)

    async def rpc_set_traffic(self, app_name: str, weights: dict[str, float] | None) -> None:
        self.controller.traffic.set_split(self.controller.apps, app_name, weights)
        self.controller.publish()
        await self.head.flush()

    async def rpc_shadow_traffic(self, app_name: str, shadow: str, fraction: float) -> None:
        self.controller.traffic.set_shadow(self.controller.apps, app_name, shadow, fraction)
        self.controller.publish()
        await self.head.flush()

    def rpc_get_traffic(self, app_name: str) -> dict[str, Any]:
        return self.controller.traffic.describe(app_name)

    async def rpc_start_rollout(
        self, app_name: str, to: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Start a rollout of ``app_name`` to ``to``; returns its status (as data)."""
        return await self.head.start_rollout(app_name, to, options)

    async def rpc_rollout_status(self, app_name: str) -> dict[str, Any] | None:
        """The latest rollout of ``app_name`` (None if it never had one)."""
        status = self.controller.rollouts.status(app_name)
        await self.head.flush()
        return status.to_dict() if status is not None else None

    async def rpc_rollout_control(self, app_name: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort`` the rollout of ``app_name``."""
        return await self.head.rollout_control(app_name, action)

    def rpc_app_names(self) -> list[str]:
        return [n for n, a in self.controller.apps.items() if not a.deleting]

    async def rpc_listen(
        self, known: dict[str, int], timeout_s: float
    ) -> dict[str, tuple[int, Any]]:
        return await self.controller.long_poll.listen(known, timeout_s)

    def rpc_register_replica(self, replica_id: str, endpoint: dict[str, Any] | None = None) -> None:
        assert self.conn is not None
        self.controller.replica_registered(replica_id, self.conn, endpoint)

    def rpc_rejoin_replica(self, replica_id: str, initialized: bool) -> None:
        """A replica reconnected after this head replaced a crashed one."""
        assert self.conn is not None
        self.controller.replica_rejoined(replica_id, self.conn, initialized)

    def rpc_report_metrics(
        self, worker_id: str, component: str, node: str, families: list[Any]
    ) -> None:
        """A process's latest metrics (see :mod:`schooner.telemetry.reporter`)."""
        self.head.metrics.update(worker_id, component, node, families)
        self.head.rates.maybe_sample(self.controller.apps)

    def rpc_report_demand(
        self, source: str, report: dict[str, list[tuple[float, float]]], urgent: bool
    ) -> None:
        """A caller's requests to autoscaled deployments (see :mod:`schooner.router.demand`);
        ``urgent``: one waits for a deployment with no replicas."""
        for key, samples in report.items():
            self.controller.demand.record(key, source, samples)
        if urgent:
            self.controller.wake()

    def rpc_report_models(self, replica_id: str, model_ids: tuple[str, ...] | list[str]) -> None:
        """The multiplexed models a replica holds, sent when they change (model-aware
        routing; see :mod:`schooner.replica.models`)."""
        self.controller.replica_models(replica_id, model_ids)

    def rpc_register_spare(self, spare_id: str) -> None:
        assert self.conn is not None
        self.controller.spare_registered(spare_id, self.conn)

    def rpc_register_proxy(
        self, node_id: str | None = None, info: dict[str, Any] | None = None
    ) -> None:
        """A proxy is serving (on the head's node, or on ``node_id`` of a cluster); ``info``:
        its pid, and on a cluster its actor and worker ids."""
        node = node_id or self.controller.node_id
        self.controller.proxy_status[node] = "HEALTHY"
        self.controller.proxy_info[node] = dict(info or {})
        if node_id is None or node_id == self.controller.node_id:
            self.controller.proxy_ready.set()

    async def rpc_shutdown(self) -> None:
        """Stop everything; returns when every process of the instance has exited."""
        self.head.explicit_stop = True
        self.head.stop_requested.set()
        await self.controller.stopped.wait()
