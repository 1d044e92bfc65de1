"""The controller's own metrics: each replica's health, and its reconcile loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schooner.controller.details import CONTROLLER_ACTOR_NAME
from schooner.schema import ReplicaState
from schooner.telemetry import catalog, recorder

if TYPE_CHECKING:
    from schooner.controller.controller import Controller
    from schooner.controller.state import DeploymentState


def controller_series(controller: Controller) -> list[recorder.Series]:
    """``ray_serve_deployment_replica_healthy`` per live replica (1: running and passing
    its health checks), and the control loop's duration and count."""
    series: list[recorder.Series] = [
        (catalog.CONTROL_LOOP_DURATION, (), controller.last_tick_s),
        (catalog.NUM_CONTROL_LOOPS, (CONTROLLER_ACTOR_NAME,), float(controller.num_ticks)),
    ]
    for app in list(controller.apps.values()):
        for dep in list(app.deployments.values()):
            series.extend(_autoscaling_series(controller, dep))
            for replica in list(dep.replicas.values()):
                if not replica.live:
                    continue
                healthy = replica.state == ReplicaState.RUNNING and replica.health_failures == 0
                labels = (dep.id.name, replica.replica_id, app.name)
                series.append((catalog.REPLICA_HEALTHY, labels, 1.0 if healthy else 0.0))
    return series


def _autoscaling_series(controller: Controller, dep: DeploymentState) -> list[recorder.Series]:
    """The autoscaler's view of an autoscaled deployment (nothing for others)."""
    config = dep.spec.config.autoscaling_config
    scaling = controller.autoscaler.series(dep)
    if config is None or scaling is None:
        return []
    labels = (dep.id.name, dep.id.app_name)
    return [
        (catalog.AUTOSCALING_TARGET_REPLICAS, labels, float(dep.target_num_replicas)),
        (catalog.AUTOSCALING_DESIRED_REPLICAS, labels, float(scaling.desired_num_replicas)),
        (catalog.AUTOSCALING_TOTAL_REQUESTS, labels, scaling.total_num_requests),
        (
            catalog.AUTOSCALING_POLICY_TIME,
            (*labels, scaling.policy_scope),
            scaling.policy_time_ms,
        ),
        (catalog.AUTOSCALING_TARGET_ONGOING, labels, config.get_target_ongoing_requests()),
        (catalog.AUTOSCALING_DECISIONS, (*labels, "up"), float(scaling.upscales)),
        (catalog.AUTOSCALING_DECISIONS, (*labels, "down"), float(scaling.downscales)),
    ]
