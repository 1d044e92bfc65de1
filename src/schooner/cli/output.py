"""What the CLI prints: status, configs and generated config files, as YAML.

Pure functions of plain data (the admin API's ``ServeInstanceDetails`` or
an :class:`~schooner.rpc.messages.AppSpec`), so they are unit-tested alone.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import yaml

from schooner.rpc.messages import AppSpec
from schooner.schema import config_entry


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def status_document(details: dict[str, Any], app_name: str | None = None) -> dict[str, Any]:
    """``schooner status``: per application its status, message, last deployed time and
    deployments with status, trigger, replica counts by state and message."""
    apps: dict[str, Any] = {}
    for name, app in details.get("applications", {}).items():
        if app_name is not None and name != app_name:
            continue
        deployments: dict[str, Any] = {}
        for dep_name, dep in app.get("deployments", {}).items():
            counts: dict[str, int] = {}
            for replica in dep.get("replicas", []):
                counts[replica["state"]] = counts.get(replica["state"], 0) + 1
            deployments[dep_name] = {
                "status": dep["status"],
                "status_trigger": dep["status_trigger"],
                "replica_states": counts,
                "message": dep["message"],
            }
            scaling = dep.get("autoscaling_detail")
            if scaling:
                deployments[dep_name]["autoscaling"] = _autoscaling_lines(scaling)
        apps[name] = {
            "status": app["status"],
            "message": app["message"],
            "last_deployed_time_s": app["last_deployed_time_s"],
            "deployments": deployments,
        }
        if app.get("traffic"):
            apps[name]["traffic"] = _traffic_lines(app["traffic"])
        if app.get("rollout"):
            apps[name]["rollout"] = rollout_line(app["rollout"])
    if app_name is not None:
        missing: dict[str, Any] = {"status": "NOT_STARTED", "message": "", "deployments": {}}
        chosen: dict[str, Any] = apps.get(app_name, missing)
        return chosen
    return {
        "proxies": {node: p.get("status") for node, p in details.get("proxies", {}).items()},
        "applications": apps,
        "target_capacity": details.get("target_capacity"),
    }


def _traffic_lines(policy: dict[str, Any]) -> dict[str, Any]:
    """An application's traffic policy (``?include=traffic``): its split and shadows."""
    shown: dict[str, Any] = {}
    if policy.get("split"):
        shown["split"] = dict(policy["split"])
    if policy.get("shadows"):
        shown["shadows"] = dict(policy["shadows"])
    return shown


def rollout_line(rollout: dict[str, Any]) -> str:
    """An application's latest rollout (``?include=rollout``) in one line: where it stands
    and why (``to app_v2 (RUNNING, 25% of requests): step 2 of 4: ...``)."""
    line = f"to {rollout['to']} ({rollout['state']}, {rollout['weight_percent']:g}% of requests)"
    return f"{line}: {rollout['message']}" if rollout.get("message") else line


def _autoscaling_lines(scaling: dict[str, Any]) -> dict[str, Any]:
    """An autoscaled deployment's counts, bounds, demand and last decision."""
    metrics = scaling.get("metrics") or {}
    shown: dict[str, Any] = {
        "replicas": f"{metrics.get('current_num_replicas')} running, target "
        f"{metrics.get('target_num_replicas')} (min {metrics.get('min_replicas')}, "
        f"max {metrics.get('max_replicas')})",
        "scaling_status": scaling.get("scaling_status"),
        "ongoing_requests": metrics.get("total_num_requests"),
    }
    decisions = scaling.get("decisions") or []
    if decisions:
        last = decisions[-1]
        when = datetime.datetime.fromtimestamp(last["timestamp_s"]).strftime("%Y-%m-%d %H:%M:%S")
        shown["last_decision"] = f"{when}: {last['reason']}"
    if scaling.get("errors"):
        shown["errors"] = scaling["errors"][-3:]
    return shown


def config_documents(details: dict[str, Any], app_name: str | None = None) -> list[dict[str, Any]]:
    """``schooner config``: the latest config entry received for each (declarative) app."""
    docs = []
    for name, app in details.get("applications", {}).items():
        if app_name is not None and name != app_name:
            continue
        if app.get("deployed_app_config") is not None:
            docs.append(app["deployed_app_config"])
    return docs


def build_document(
    apps: Sequence[tuple[str, AppSpec, dict[str, Any] | None]],
    *,
    http_host: str = "0.0.0.0",
    http_port: int = 8000,
) -> dict[str, Any]:
    """``schooner build``: a multi-application config with every deployment and setting.

    ``apps`` holds (import path, built spec, builder args or None).
    """
    applications = []
    for import_path, spec, args in apps:
        app: dict[str, Any] = {
            "name": spec.name,
            "route_prefix": spec.route_prefix,
            "import_path": import_path,
            "runtime_env": {},
        }
        if args:
            app["args"] = args
        app["deployments"] = [config_entry(d.name, d.config) for d in spec.deployments]
        applications.append(app)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": http_host, "port": http_port},
        "logging_config": {
            "encoding": "TEXT",
            "log_level": "INFO",
            "logs_dir": None,
            "enable_access_log": True,
        },
        "applications": applications,
    }
