"""The controller's records of applications, deployments and replicas.

Plain data plus the small pure decisions on it (status rules); the reconcile
loop in :mod:`schooner.controller.controller` acts on them.
"""

from __future__ import annotations

import enum
import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from schooner.config import UPDATE_TYPES
from schooner.controller.ranks import DeploymentRanks, Rank
from schooner.rpc.connection import Connection
from schooner.rpc.messages import AppSpec, DeploymentID, DeploymentSpec
from schooner.runtime.launcher import ProcessHandle
from schooner.runtime.resources import Allocation
from schooner.schema import (
    ApplicationStatus,
    DeploymentStatus,
    DeploymentStatusTrigger,
    ReplicaState,
)


def _options_of_cost(spec: DeploymentSpec, cost: str) -> str:
    values = spec.config.model_dump(mode="json")
    chosen = {k: v for k, v in values.items() if UPDATE_TYPES.get(k) == cost}
    return json.dumps(chosen, sort_keys=True, default=str)


def replica_version(spec: DeploymentSpec) -> str:
    """A replica is replaced when this changes: code, init args or restart-cost options."""
    return spec.code_version + ":" + _options_of_cost(spec, "restart")


def reconfigure_version(spec: DeploymentSpec) -> str:
    """A live replica is reconfigured in place when this changes (``user_config``, ...)."""
    return _options_of_cost(spec, "reconfigure")


def target_replicas(config: Any) -> int:
    """How many replicas a deployment starts with (autoscaling starts at initial/min)."""
    auto = config.autoscaling_config
    if auto is not None:
        initial = auto.initial_replicas
        return int(initial if initial is not None else auto.min_replicas)
    return int(config.num_replicas)


class Phase(enum.Enum):
    """Why a deployment is not yet where it should be."""

    STEADY = "steady"
    UPDATING = "updating"  # a new spec is being rolled out


_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_replica_id() -> str:
    """A replica's unique id within its deployment (8 random lowercase letters and digits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


@dataclass
class ReplicaRecord:
    replica_id: str
    version: str
    state: ReplicaState
    process: ProcessHandle
    allocation: Allocation
    address: str
    log_file: str
    start_time_s: float
    started_monotonic: float
    conn: Connection | None = None
    error: str | None = None
    reconfig_version: str = ""
    stop_requested_at: float | None = None
    #: Health checks (``check_health``): when the last one started, whether one is running,
    #: and how many failed in a row.
    last_health_check: float = 0.0
    health_check_running: bool = False
    health_failures: int = 0
    #: A replica re-adopted from a checkpoint (after a head restart) must reconnect
    #: before this (clock time) or it is replaced.
    rejoin_deadline: float | None = None
    #: The rank and world size the replica was last told (None: not yet), and whether a
    #: message telling it is under way (see :mod:`schooner.controller.ranks`).
    rank_delivered: tuple[Rank, int] | None = None
    rank_sending: bool = False
    #: Ray backend: where the replica runs, as it registered (``node_id``, ``node_ip``,
    #: ``actor_id``, ``actor_name``, ``worker_id``, ``pid``, ``local_address``).
    placement: dict[str, Any] = field(default_factory=dict)
    #: Multiplexed models the replica last reported holding (loaded or loading), sorted;
    #: published to routers for model-aware routing. A new replica starts with none.
    model_ids: tuple[str, ...] = ()

    @property
    def pid(self) -> int:
        return int(self.placement.get("pid") or self.process.pid)

    @property
    def live(self) -> bool:
        return self.state in (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UPDATING)


@dataclass
class DeploymentState:
    id: DeploymentID
    spec: DeploymentSpec
    version: str
    target_num_replicas: int
    reconfig_version: str = ""
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)
    status: DeploymentStatus = DeploymentStatus.UPDATING
    status_trigger: DeploymentStatusTrigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
    message: str = ""
    phase: Phase = Phase.UPDATING
    consecutive_failures: int = 0
    failed: bool = False
    pending_reason: str | None = None
    deleting: bool = False
    #: Set when a replica failed its health checks and is being replaced; cleared once the
    #: deployment is back at its target. The deployment is UNHEALTHY meanwhile.
    unhealthy_reason: str | None = None
    ranks: DeploymentRanks = field(default_factory=DeploymentRanks)
    #: The autoscaler's reason for the current target (shown while scaling).
    scaling_reason: str = ""

    @classmethod
    def new(cls, app: str, spec: DeploymentSpec) -> DeploymentState:
        return cls(
            id=DeploymentID(spec.name, app),
            spec=spec,
            version=replica_version(spec),
            target_num_replicas=target_replicas(spec.config),
            reconfig_version=reconfigure_version(spec),
        )

    def apply_spec(self, spec: DeploymentSpec) -> None:
        """Take a new goal; replicas of another version get rolled over.

        An autoscaled deployment keeps its current count (within the new bounds) unless
        its autoscaling config changed and sets ``initial_replicas``, as in Ray."""
        old = self.spec.config.autoscaling_config
        new = spec.config.autoscaling_config
        if new is None:
            self.target_num_replicas = target_replicas(spec.config)
        elif new.initial_replicas is not None and old != new:
            self.target_num_replicas = new.initial_replicas
        else:
            self.target_num_replicas = max(
                new.min_replicas, min(new.max_replicas, self.target_num_replicas)
            )
        self.spec = spec
        self.version = replica_version(spec)
        self.reconfig_version = reconfigure_version(spec)
        self.phase = Phase.UPDATING
        self.failed = False
        self.consecutive_failures = 0
        self.status = DeploymentStatus.UPDATING
        self.status_trigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
        self.message = ""

    @property
    def failure_threshold(self) -> int:
        retries = int(getattr(self.spec.config, "max_constructor_retry_count", 20))
        return max(1, min(retries, 3 * max(self.target_num_replicas, 1)))

    def current(self) -> list[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.live and r.version == self.version]

    def outdated(self) -> list[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.live and r.version != self.version]

    def running(self) -> list[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.state == ReplicaState.RUNNING]

    def serving(self) -> list[ReplicaRecord]:
        """Replicas that take requests (running, or being reconfigured in place)."""
        return [
            r
            for r in self.replicas.values()
            if r.state in (ReplicaState.RUNNING, ReplicaState.UPDATING)
        ]

    def record_startup_failure(self, error: str) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold and not self.failed:
            self.failed = True
            self.status = DeploymentStatus.DEPLOY_FAILED
            self.status_trigger = DeploymentStatusTrigger.REPLICA_STARTUP_FAILED
            self.message = (
                f"Deployment '{self.id.name}' failed to start a replica "
                f"{self.consecutive_failures} times in a row; it will not retry until it is "
                f"redeployed. Last error:\n{error}"
            )

    def update_status(self) -> None:
        """Derive status from replicas (called at the end of each reconcile step)."""
        if self.failed:
            return
        current = self.current()
        running = [r for r in current if r.state == ReplicaState.RUNNING]
        # As in Ray, a deployment is not settled while a replica it stopped is still
        # draining: until that replica is gone, a router that has not yet heard of the
        # change may send it a request, and it would answer with the old code.
        stopping = any(r.state == ReplicaState.STOPPING for r in self.replicas.values())
        settled = (
            len(running) == self.target_num_replicas == len(current)
            and not self.outdated()
            and not stopping
        )
        if self.unhealthy_reason is not None:
            if not settled:
                self.status = DeploymentStatus.UNHEALTHY
                self.status_trigger = DeploymentStatusTrigger.HEALTH_CHECK_FAILED
                self.message = self.unhealthy_reason
                if self.pending_reason:  # why the replacement cannot start yet
                    self.message += " " + self.pending_reason
                return
            self.unhealthy_reason = None
        if settled:
            if self.status != DeploymentStatus.HEALTHY:
                self.status_trigger = {
                    DeploymentStatus.UPSCALING: DeploymentStatusTrigger.UPSCALE_COMPLETED,
                    DeploymentStatus.DOWNSCALING: DeploymentStatusTrigger.DOWNSCALE_COMPLETED,
                }.get(self.status, DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED)
            self.status = DeploymentStatus.HEALTHY
            self.phase = Phase.STEADY
            self.message = ""
            if self.target_num_replicas == 0 and self.spec.config.autoscaling_config is not None:
                self.message = (
                    "Scaled to zero replicas (min_replicas=0); the next request starts one."
                )
            return
        if self.phase == Phase.UPDATING:
            self.status = DeploymentStatus.UPDATING
        elif len(current) < self.target_num_replicas or len(running) < len(current):
            self.status = DeploymentStatus.UPSCALING
        else:
            self.status = DeploymentStatus.DOWNSCALING
        self.message = self.pending_reason or self.scaling_reason

    def replica_states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for replica in self.replicas.values():
            counts[replica.state.value] = counts.get(replica.state.value, 0) + 1
        return counts


@dataclass
class ApplicationState:
    spec: AppSpec
    deployments: dict[str, DeploymentState]
    last_deployed_time_s: float
    status: ApplicationStatus = ApplicationStatus.DEPLOYING
    message: str = ""
    deleting: bool = False
    #: A config entry for this application is being built (imported) in a builder process.
    building: bool = False
    #: Why the latest config entry could not be built; the previous version keeps serving.
    build_error: str | None = None
    #: Keys of its config entry that nothing reads (likely typos); shown in the message.
    config_warnings: list[str] = field(default_factory=list)
    #: Set when a rollout retired it (its deployments were scaled to 0): says so in the
    #: message; the autoscaler leaves it alone until it is redeployed.
    retired: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def update_status(self) -> None:
        """First match wins: DELETING, DEPLOY_FAILED, UNHEALTHY, DEPLOYING, RUNNING.

        Config warnings (unknown keys) are appended to the message."""
        self._derive_status()
        if self.retired is not None and not self.deleting:
            self.message = f"{self.message}\n{self.retired}" if self.message else self.retired
        if self.config_warnings and not self.deleting:
            note = "Config warnings: " + "; ".join(self.config_warnings)
            self.message = f"{self.message}\n{note}" if self.message else note

    def _derive_status(self) -> None:
        deps = list(self.deployments.values())
        if self.deleting:
            self.status, self.message = ApplicationStatus.DELETING, ""
            return
        if self.build_error is not None:
            self.status, self.message = ApplicationStatus.DEPLOY_FAILED, self.build_error
            return
        if self.building:
            self.status, self.message = ApplicationStatus.DEPLOYING, ""
            return
        failed = [d for d in deps if d.status == DeploymentStatus.DEPLOY_FAILED]
        if failed:
            self.status = ApplicationStatus.DEPLOY_FAILED
            self.message = (
                f"Failed to update the deployments {[d.id.name for d in failed]}.\n"
                + "\n".join(d.message for d in failed)
            )
            return
        unhealthy = [d.id.name for d in deps if d.status == DeploymentStatus.UNHEALTHY]
        if unhealthy:
            self.status = ApplicationStatus.UNHEALTHY
            self.message = f"The deployments {unhealthy} are UNHEALTHY."
            return
        if any(d.status == DeploymentStatus.UPDATING for d in deps):
            self.status = ApplicationStatus.DEPLOYING
            waiting = [d.message for d in deps if d.message]
            self.message = "\n".join(waiting)
            return
        self.status, self.message = ApplicationStatus.RUNNING, ""
