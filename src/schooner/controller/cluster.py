"""Starting replicas on a cluster backend (Ray), and saying why one waits."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from schooner.controller.state import DeploymentState, new_replica_id
from schooner.logs import LOGGING_CONFIG_ENV, deployment_logging_config
from schooner.runtime.backend import ClusterBackend
from schooner.schema import ReplicaState

if TYPE_CHECKING:
    from schooner.controller.controller import Controller

logger = logging.getLogger("schooner.controller")

#: A replica a cluster backend has not started after this long gets its reason asked for.
PLACEMENT_PATIENCE_S = 3.0


def start_on_cluster(controller: Controller, dep: DeploymentState, backend: ClusterBackend) -> bool:
    """Ask the cluster for one more replica of ``dep``; False if it does not fit now
    (``dep.pending_reason`` says why) or could not be started."""
    config = dep.spec.config
    allocation = backend.place(dep.id, config)
    if isinstance(allocation, str):
        dep.pending_reason = f"Deployment '{dep.id.name}' has replicas waiting to start. "
        dep.pending_reason += allocation
        return False
    replica_id = new_replica_id()
    process_env = dep.spec.process_env
    sys_path = [*process_env.sys_path, *controller.apps[dep.id.app_name].spec.sys_path]
    env = dict(process_env.env_vars)
    if process_env.cwd is not None:
        env["SCHOONER_CWD"] = process_env.cwd
    env[LOGGING_CONFIG_ENV] = json.dumps(deployment_logging_config(config.logging_config))
    try:
        process = backend.start_replica(
            replica_id, dep.id, config, env, sys_path, allocation, process_env.ray_fields
        )
    except Exception as exc:
        backend.release(allocation)
        dep.record_startup_failure(f"Could not start a replica actor: {exc!r}")
        return False
    controller.record_replica(dep, replica_id, process, allocation)
    logger.info("starting replica actor %s of %s", replica_id, dep.id)
    return True


def explain_waiting(dep: DeploymentState, backend: ClusterBackend, now: float) -> None:
    """A replica the cluster was asked for but has not started for a while: say why."""
    for replica in dep.replicas.values():
        if (
            replica.state == ReplicaState.STARTING
            and replica.conn is None
            and now - replica.started_monotonic > PLACEMENT_PATIENCE_S
        ):
            reason = backend.waiting_reason(replica.process, replica.allocation.request)
            if reason:
                dep.pending_reason = (
                    f"Deployment '{dep.id.name}' has replicas waiting to start. {reason}"
                )
                return
