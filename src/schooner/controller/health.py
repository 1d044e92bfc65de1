"""Health checks of replicas: ``check_health()`` every ``health_check_period_s``.

After ``HEALTH_CHECK_FAILURES`` failures in a row, or one check that does not
answer within ``health_check_timeout_s``, the replica leaves routing at once
(the controller publishes without it), is stopped without a drain (it may be
hung) and the reconcile loop replaces it. The deployment is UNHEALTHY
meanwhile, with a message naming the replica and the error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from schooner.controller.state import DeploymentState, ReplicaRecord
from schooner.rpc.connection import ConnectionLost, RemoteCallError
from schooner.schema import ReplicaState

if TYPE_CHECKING:
    from schooner.controller.controller import Controller

logger = logging.getLogger("schooner.controller")

#: Consecutive failed health checks after which a replica is replaced (as in Ray Serve).
HEALTH_CHECK_FAILURES = 3


class HealthChecks:
    """Runs the controller's health checks (called from each reconcile step)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def maybe_check(self, dep: DeploymentState, replica: ReplicaRecord, now: float) -> None:
        """Start a health check of a serving replica every ``health_check_period_s``."""
        if replica.state not in (ReplicaState.RUNNING, ReplicaState.UPDATING):
            return
        if replica.conn is None or replica.health_check_running:
            return
        if now - replica.last_health_check < float(dep.spec.config.health_check_period_s):
            return
        replica.last_health_check = now
        replica.health_check_running = True
        self.controller.spawn(self._check(dep, replica))

    async def _check(self, dep: DeploymentState, replica: ReplicaRecord) -> None:
        """Call the replica's ``check_health``; replace it after too many failures or a hang."""
        timeout_s = float(dep.spec.config.health_check_timeout_s)
        assert replica.conn is not None
        try:
            await asyncio.wait_for(replica.conn.call("check_health"), timeout_s)
        except TimeoutError:
            self._replace(
                dep,
                replica,
                f"did not answer its health check within {timeout_s:g} s (health_check_timeout_s)",
            )
            return
        except RemoteCallError as exc:
            replica.health_failures += 1
            error = f"{exc.error.type_name}: {exc.error.message}"
            logger.warning(
                "health check %d of replica %s of %s failed: %s",
                replica.health_failures,
                replica.replica_id,
                dep.id,
                error,
            )
            if replica.health_failures >= HEALTH_CHECK_FAILURES:
                self._replace(
                    dep,
                    replica,
                    f"failed {replica.health_failures} health checks in a row; last error: {error}",
                )
            return
        except ConnectionLost:
            return  # the process died: reaping replaces it
        finally:
            replica.health_check_running = False
        replica.health_failures = 0

    def _replace(self, dep: DeploymentState, replica: ReplicaRecord, why: str) -> None:
        if replica.state not in (ReplicaState.RUNNING, ReplicaState.UPDATING):
            return
        reason = f"Replica {replica.replica_id} of deployment '{dep.id.name}' {why}. Replacing it."
        logger.warning("%s", reason)
        dep.unhealthy_reason = reason
        # Out of routing at once; it gets no graceful drain (it may be hung).
        replica.state = ReplicaState.STOPPING
        replica.stop_requested_at = self.controller.clock()
        replica.process.terminate()
        dep.update_status()
        self.controller.apps[dep.id.app_name].update_status()
        self.controller.publish()  # callers stop routing to it now, not at the next tick
        self.controller.wake()
