"""The controller's conversations with one replica process, each a task of its own.

- :func:`initialize`: construct the user's object in a replica that registered;
- :func:`reconfigure`: apply reconfigure-cost options (``user_config``, ...) in place;
- :func:`drain_and_stop`: let routers forget the replica, drain it, then stop it;
- :func:`adopt_spare`: give a spare process (started ahead of need) its identity.

Each ends by changing the replica's record (its state, error or log file) and waking
the reconcile loop, which takes it from there; none raises for a replica that fails
or goes away (reaping counts that).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from schooner.controller.state import DeploymentState, ReplicaRecord
from schooner.logs import deployment_logging_config
from schooner.rpc.connection import Connection, ConnectionLost, RemoteCallError
from schooner.schema import ReplicaState

if TYPE_CHECKING:
    from schooner.controller.controller import Controller
    from schooner.controller.spares import Spare

__all__ = ["adopt_spare", "drain_and_stop", "initialize", "reconfigure"]

logger = logging.getLogger("schooner.controller")

#: How long routers get to learn that a stopping replica is gone before it drains.
ROUTERS_FORGET_S = 0.2


async def initialize(
    controller: Controller, dep: DeploymentState, replica: ReplicaRecord, conn: Connection
) -> None:
    spec = dep.spec
    reconfig_version = dep.reconfig_version
    rank, world_size = dep.ranks.get(replica.replica_id), dep.target_num_replicas
    try:
        await conn.call(
            "initialize",
            spec.code,
            spec.init_blob,
            spec.is_function,
            spec.config.user_config,
            int(spec.config.max_ongoing_requests),
            tuple(rank),
            world_size,
        )
    except RemoteCallError as exc:
        replica.error = exc.error.traceback or f"{exc.error.type_name}: {exc.error.message}"
        logger.warning("constructor of %s raised:\n%s", dep.id, replica.error)
        replica.process.terminate()
        return
    except ConnectionLost:
        return  # the process died; reaping counts the failure
    if replica.state == ReplicaState.STARTING:
        replica.state = ReplicaState.RUNNING
        replica.rank_delivered = (rank, world_size)
        replica.reconfig_version = reconfig_version
        dep.consecutive_failures = 0
        logger.info("replica %s of %s is running", replica.replica_id, dep.id)
    controller.wake()


async def reconfigure(controller: Controller, dep: DeploymentState, replica: ReplicaRecord) -> None:
    """Apply reconfigure-cost options (``user_config``, ...) to a live replica; one that
    fails is replaced."""
    target = dep.reconfig_version
    config = dep.spec.config
    assert replica.conn is not None
    try:
        log_file = await replica.conn.call(
            "update",
            config.user_config,
            int(config.max_ongoing_requests),
            deployment_logging_config(dep.spec.config.logging_config),
        )
    except (RemoteCallError, ConnectionLost) as exc:
        logger.warning(
            "reconfiguring replica %s of %s failed; replacing it: %s",
            replica.replica_id,
            dep.id,
            exc,
        )
        if replica.state == ReplicaState.UPDATING:
            replica.state = ReplicaState.RUNNING
            controller.stop_replica(dep, replica)
        return
    if log_file:
        replica.log_file = str(log_file)
    if replica.state == ReplicaState.UPDATING:
        replica.state = ReplicaState.RUNNING
        replica.reconfig_version = target
        logger.info("replica %s of %s reconfigured", replica.replica_id, dep.id)
    controller.wake()


async def drain_and_stop(dep: DeploymentState, replica: ReplicaRecord) -> None:
    """Ask the replica to finish what it has (its graceful shutdown options), then to
    exit; SIGTERM if it has not exited a second later."""
    config = dep.spec.config
    conn = replica.conn
    assert conn is not None
    # Routers learn at the next publish that the replica is gone; give them a moment.
    await asyncio.sleep(ROUTERS_FORGET_S)
    try:
        await asyncio.wait_for(
            conn.call(
                "prepare_shutdown",
                float(config.graceful_shutdown_wait_loop_s),
                float(config.graceful_shutdown_timeout_s),
            ),
            float(config.graceful_shutdown_timeout_s) + 2,
        )
        conn.notify("shutdown")
    except (TimeoutError, ConnectionLost, RemoteCallError, OSError):
        pass
    for _ in range(50):  # up to 1 s to exit on its own, then SIGTERM
        if replica.process.poll() is not None:
            return
        await asyncio.sleep(0.02)
    replica.process.terminate()


async def adopt_spare(
    controller: Controller,
    dep: DeploymentState,
    replica: ReplicaRecord,
    spare: Spare,
    env: dict[str, str],
    sys_path: list[str],
    timeout_s: float,
) -> None:
    """Wait (up to ``timeout_s``) for the spare to connect, give it the replica's identity
    and environment, then treat it as that replica registering."""
    conn = await controller.spares.connection(spare, timeout_s)
    if conn is None:
        return  # the startup deadline replaces it; a spare that died is reaped
    try:
        await conn.call("assign", replica.replica_id, dep.id.app_name, dep.id.name, env, sys_path)
    except (RemoteCallError, ConnectionLost) as exc:
        replica.error = f"The spare replica process could not take its identity: {exc}"
        replica.process.terminate()
        return
    controller.replica_registered(replica.replica_id, conn)
