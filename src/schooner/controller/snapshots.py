"""What the controller publishes to routers: each deployment's replica set, the route table.

Pure functions of the controller's records (see :meth:`Controller.publish`).
"""

from __future__ import annotations

from collections.abc import Iterable

from schooner.controller.state import ApplicationState, DeploymentState
from schooner.rpc.messages import ReplicaInfo, ReplicaSet, Route


def replica_set(app_name: str, dep: DeploymentState) -> ReplicaSet:
    """The replicas routers may send to (sorted by id) and the deployment's routing limits."""
    replicas = tuple(
        ReplicaInfo(
            r.replica_id,
            r.address,
            dep.id,
            r.placement.get("node_id", ""),
            r.placement.get("local_address", ""),
            r.model_ids,
        )
        for r in sorted(dep.serving(), key=lambda r: r.replica_id)
    )
    unavailable = ""
    if dep.failed and not replicas:
        unavailable = (
            f"Deployment '{dep.id.name}' of application '{app_name}' has no "
            "running replicas: it failed to deploy (see `serve.status()`)."
        )
    config = dep.spec.config
    backpressure = config.backpressure_config
    return ReplicaSet(
        replicas,
        int(config.max_ongoing_requests),
        int(config.max_queued_requests),
        unavailable,
        int(backpressure.status_code),
        backpressure.retry_after_s,
        autoscaling=config.autoscaling_config is not None,
    )


def route_table(apps: Iterable[ApplicationState]) -> dict[str, Route]:
    """Route prefix -> application and its ingress deployment (apps being deleted drop out)."""
    routes: dict[str, Route] = {}
    for app in apps:
        ingress = app.deployments.get(app.spec.ingress)
        if app.spec.route_prefix is not None and not app.deleting and ingress is not None:
            routes[app.spec.route_prefix] = Route(app.spec.route_prefix, app.name, ingress.id)
    return routes
