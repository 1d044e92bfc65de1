"""The instance described for clients: Ray's ``ServeInstanceDetails`` (REST ``GET``,
``schooner status``), ``ServeStatus`` (``serve.status()``) and what a handle needs.

Ray's own CLI parses this with models that forbid unknown keys at the
instance, application and deployment levels, so those levels carry exactly
Ray's keys; replica and proxy entries are open and may say more.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from schooner.controller.state import ApplicationState, DeploymentState, ReplicaRecord
from schooner.logs import current_log_file

if TYPE_CHECKING:
    from schooner.controller.controller import Controller
    from schooner.controller.declarative import DeclarativeConfig

NODE_IP = "127.0.0.1"
CONTROLLER_ACTOR_NAME = "SERVE_CONTROLLER_ACTOR"


def instance_details(
    controller: Controller,
    declarative: DeclarativeConfig,
    *,
    http_options: dict[str, Any],
    grpc_options: dict[str, Any],
    proxy_location: str,
    controller_pid: int,
    api_type: str | None = None,
    include: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``ServeInstanceDetails`` as plain data; ``api_type`` keeps only that kind of app.

    ``include``: ``"traffic"``, each application also says its traffic policy under
    ``traffic``; ``"rollout"``, its latest rollout (or None) under ``rollout``.
    Schooner's extensions, asked for with ``?include=traffic,rollout``: Ray's models
    refuse unknown keys at the application level, so Ray's tools never get them."""
    node = controller.node_id
    logs = controller.session.logs
    apps = {
        app.name: application_details(app, declarative.app_configs.get(app.name), controller)
        for app in controller.apps.values()
        if api_type is None or app.spec.source == api_type
    }
    for name, app_details in apps.items():
        if "traffic" in include:
            app_details["traffic"] = traffic_of(controller, name)
        if "rollout" in include:
            rollout = controller.rollouts.status(name)
            app_details["rollout"] = rollout.to_dict() if rollout is not None else None
    return {
        "controller_info": {
            "node_id": node,
            "node_ip": controller.node_ips.get(node, NODE_IP),
            "actor_name": CONTROLLER_ACTOR_NAME,
            "worker_id": str(controller_pid),
            "log_file_path": str(current_log_file() or logs / "controller.log"),
        },
        "proxy_location": proxy_location,
        "http_options": http_options,
        "grpc_options": grpc_options,
        "proxies": {
            node_id: _proxy_details(
                node_id, status, controller.node_ips.get(node_id, NODE_IP), logs, controller
            )
            for node_id, status in controller.proxy_status.items()
        },
        "applications": apps,
        "target_capacity": declarative.target_capacity,
    }


def _proxy_details(
    node_id: str, status: str, node_ip: str, logs: Path, controller: Controller
) -> dict[str, Any]:
    info = controller.proxy_info.get(node_id, {})
    details: dict[str, Any] = {
        "node_id": node_id,
        "node_ip": node_ip,
        "actor_name": f"SERVE_PROXY_ACTOR-{node_id}",
        "log_file_path": info.get("log_file_path") or str(logs / "proxy.log"),
        "status": status,
    }
    if info.get("actor_id"):
        details["actor_id"] = info["actor_id"]
        details["worker_id"] = info["worker_id"]
    elif info.get("pid"):
        details["worker_id"] = str(info["pid"])
    return details


def application_details(
    app: ApplicationState, deployed_app_config: dict[str, Any] | None, controller: Controller
) -> dict[str, Any]:
    spec = app.spec
    built = bool(spec.ingress)
    return {
        "name": app.name,
        "route_prefix": spec.route_prefix if built else None,
        "docs_path": spec.docs_path,
        "status": app.status.value,
        "message": app.message,
        "last_deployed_time_s": app.last_deployed_time_s,
        "deployed_app_config": deployed_app_config,
        "source": spec.source,
        "deployments": {
            dep.id.name: deployment_details(dep, controller) for dep in app.deployments.values()
        },
        "external_scaler_enabled": spec.external_scaler_enabled,
        "deployment_topology": {
            "app_name": app.name,
            "nodes": {
                dep.id.name: {
                    "name": dep.id.name,
                    "app_name": app.name,
                    "outbound_deployments": [],
                    "is_ingress": dep.id.name == spec.ingress,
                }
                for dep in app.deployments.values()
            },
            "ingress_deployment": spec.ingress or None,
        },
    }


def deployment_details(dep: DeploymentState, controller: Controller) -> dict[str, Any]:
    config = dep.spec.config
    details = {
        "name": dep.id.name,
        "status": dep.status.value,
        "status_trigger": dep.status_trigger.value,
        "message": dep.message,
        "deployment_config": deployment_config(dep),
        "target_num_replicas": 0 if dep.deleting else dep.target_num_replicas,
        "required_resources": config.required_resources(),
        "replicas": [
            replica_details(dep, r, controller)
            for r in sorted(dep.replicas.values(), key=lambda r: r.start_time_s)
        ],
    }
    scaling = controller.autoscaler.detail(dep)
    if scaling is not None:
        details["autoscaling_detail"] = scaling
    return details


def deployment_config(dep: DeploymentState) -> dict[str, Any]:
    """The resolved options, in the shape of a config file's ``deployments:`` entry.

    Options left unset (``None``) are omitted, as Ray omits them."""
    from schooner.schema import config_entry  # not at import: the head starts faster

    entry = config_entry(dep.id.name, dep.spec.config)
    return {k: v for k, v in entry.items() if v is not None or k == "user_config"}


def replica_details(
    dep: DeploymentState, replica: ReplicaRecord, controller: Controller
) -> dict[str, Any]:
    where = replica.placement  # filled on a Ray cluster
    details = {
        "node_id": where.get("node_id") or controller.node_id,
        "node_ip": where.get("node_ip") or NODE_IP,
        "actor_name": f"SERVE_REPLICA::{dep.id}#{replica.replica_id}",
        "worker_id": where.get("worker_id") or str(replica.pid),
        "log_file_path": replica.log_file,
        "replica_id": replica.replica_id,
        "state": replica.state.value,
        "pid": replica.pid,
        "start_time_s": replica.start_time_s,
    }
    if where.get("actor_id"):
        details["actor_id"] = where["actor_id"]
    return details


def serve_status(controller: Controller) -> dict[str, Any]:
    """The instance's status in the shape of Ray's ``ServeStatus`` (as plain data)."""
    apps: dict[str, Any] = {}
    for app in controller.apps.values():
        apps[app.name] = {
            "status": app.status.value,
            "message": app.message,
            "last_deployed_time_s": app.last_deployed_time_s,
            "deployments": {
                dep.id.name: {
                    "status": dep.status.value,
                    "status_trigger": dep.status_trigger.value,
                    "replica_states": dep.replica_states(),
                    "message": dep.message,
                    "autoscaling": controller.autoscaler.summary(dep),
                }
                for dep in app.deployments.values()
            },
            "traffic": traffic_of(controller, app.name),
        }
    return {"proxies": dict(controller.proxy_status), "applications": apps, "target_capacity": None}


def traffic_of(controller: Controller, name: str) -> dict[str, Any] | None:
    """Application ``name``'s traffic policy as set (``{"split": ..., "shadows": ...}``),
    or None when it has none."""
    policy = controller.traffic.describe(name)
    return policy if policy["split"] or policy["shadows"] else None


def app_info(controller: Controller, name: str) -> dict[str, Any] | None:
    """What a handle needs to know of application ``name`` (None if there is none)."""
    app = controller.apps.get(name)
    if app is None or app.deleting:
        return None
    return {
        "name": app.name,
        "ingress": app.spec.ingress,
        "route_prefix": app.spec.route_prefix,
        "status": app.status.value,
        "deployments": list(app.deployments),
    }
