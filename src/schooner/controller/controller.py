"""The controller: owns the goal state and reconciles replicas to it.

Clients (drivers, the CLI, later the admin API) change the goal through RPCs
(``deploy_app``, ``delete_app``, ``shutdown``). A reconcile loop runs every
``TICK_S`` (and at once when woken) and, per deployment, in numbered steps:

1. reap replica processes that exited (a replica that never became ready
   counts as a startup failure);
2. roll over replicas of an outdated version: start new ones first, stop old
   ones as new ones become ready;
3. scale the current version to its target count, within the node's resources;
4. derive the deployment's and then the application's status.

Each deployment's step is isolated: an exception is logged and the loop goes
on. After each tick the replica sets and route table are published to
subscribers (routers in proxies, drivers and replicas) through long-poll.

The launcher, clock and resource pool are passed in, so the loop can be
unit-tested without processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from schooner.controller.autoscaler import Autoscaler, Change
from schooner.controller.cluster import explain_waiting, start_on_cluster
from schooner.controller.demand import DemandStore
from schooner.controller.health import HealthChecks
from schooner.controller.long_poll import LongPollHost
from schooner.controller.ranks import Rank, deliver_rank, sync_ranks
from schooner.controller.replica_calls import adopt_spare, drain_and_stop, initialize, reconfigure
from schooner.controller.rollout import RolloutManager
from schooner.controller.snapshots import replica_set, route_table
from schooner.controller.spares import Spares
from schooner.controller.state import (
    ApplicationState,
    DeploymentState,
    ReplicaRecord,
    new_replica_id,
)
from schooner.controller.traffic import TRAFFIC_KEY, TrafficManager
from schooner.exceptions import ServeConfigError
from schooner.logs import (
    LOGGING_CONFIG_ENV,
    deployment_logging_config,
    log_file_path,
    replica_file_stem,
)
from schooner.router.router import DELETED
from schooner.rpc.connection import Connection
from schooner.rpc.messages import AppSpec
from schooner.runtime.launcher import (
    AdoptedProcess,
    Launcher,
    ProcessHandle,
    ProcessSpec,
    is_session_process,
    session_processes,
)
from schooner.runtime.resources import Allocation, ResourcePool
from schooner.runtime.session import Session
from schooner.schema import (
    ApplicationStatus,
    DeploymentStatus,
    DeploymentStatusTrigger,
    ReplicaState,
)

if TYPE_CHECKING:
    from schooner.controller.checkpoint import ReplicaCheckpoint
    from schooner.runtime.backend import ClusterBackend

logger = logging.getLogger("schooner.controller")

TICK_S = 0.1
#: A replica that has not become ready this long after its process started is replaced.
STARTUP_TIMEOUT_S = 600.0
#: After asking a replica to stop, how long it may take on top of its graceful timeout.
STOP_GRACE_S = 5.0
#: After a head restart, how long a re-adopted replica has to reconnect before it is replaced.
REJOIN_TIMEOUT_S = 10.0
_REPLICA_MODULE = "schooner.replica.main"


def _rollout_batch(target: int, fraction: float) -> int:
    """How many new-version replicas a rolling update starts at once (``fraction`` of the
    target: ``rolling_update_percentage``, 20% by default; at least one)."""
    return max(1, math.ceil(target * fraction))


class Controller:
    """Goal state, reconcile loop and the RPC surface for clients and replicas."""

    def __init__(
        self,
        session: Session,
        launcher: Launcher,
        resources: ResourcePool,
        lifeline_fd: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        backend: ClusterBackend | None = None,
    ) -> None:
        """``backend``: a cluster backend (Ray) that places and starts replicas; None: this
        machine's ``launcher`` and ``resources``."""
        self.session = session
        self.backend = backend
        self.launcher = launcher
        self.resources = resources
        self.lifeline_fd = lifeline_fd
        self.clock = clock
        self.wall_clock = wall_clock
        self.apps: dict[str, ApplicationState] = {}
        self.long_poll = LongPollHost()
        self._replica_index: dict[str, DeploymentState] = {}
        self._wake = asyncio.Event()
        self._ticked = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shutting_down = False
        self.stopped = asyncio.Event()
        self.proxy_ready = asyncio.Event()
        self.proxy_status: dict[str, str] = {}
        #: What each proxy said of itself (pid; on a Ray cluster its actor and worker ids).
        self.proxy_info: dict[str, dict[str, Any]] = {}
        #: IP address of each node with a proxy (a Ray cluster's nodes; default NODE_IP).
        self.node_ips: dict[str, str] = {}
        self.node_id = backend.node_id if backend else "node-" + secrets.token_hex(8)
        self.spares = Spares(
            launcher,
            lambda identity: self._replica_process_spec(identity, {}),
            clock,
            new_replica_id,
        )
        self.health = HealthChecks(self)
        #: Callers' reported demand per deployment, and the autoscaler deciding from it.
        self.demand = DemandStore(clock)
        self.autoscaler = Autoscaler(self.demand, wall_clock)
        #: Called after every reconcile tick (the checkpointer watches for changes).
        self.after_tick: list[Callable[[], None]] = []
        #: How long the last reconcile pass took, and how many there were (metrics).
        self.last_tick_s = 0.0
        self.num_ticks = 0
        #: After a recovery: when to stop replica processes of this session nobody adopted.
        self._sweep_at: float | None = None
        #: Traffic splits and shadows per application (published to every router).
        self.traffic = TrafficManager()
        #: Rollouts moving an application's traffic step by step (the head sets its
        #: ``sample`` to read the reported metrics).
        self.rollouts = RolloutManager(self.apps, self.traffic, wall_clock, scale=self.scale)
        self.long_poll.publish("routes", {})
        self.long_poll.publish(TRAFFIC_KEY, {})

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Reconcile until shut down."""
        while not self.stopped.is_set():
            started = time.perf_counter()
            try:
                self.tick()
            except Exception:
                logger.exception("reconcile tick failed")
            self.last_tick_s = time.perf_counter() - started
            self.num_ticks += 1
            self._ticked.set()
            self._ticked = asyncio.Event()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            except TimeoutError:
                pass

    def wake(self) -> None:
        self._wake.set()

    def tick(self) -> None:
        self.spares.check(self._shutting_down)
        if self.backend is not None:
            try:
                self.backend.tick()
                self.node_ips = self.backend.node_ips()
                proxies = self.backend.proxy_nodes()
                for gone in set(self.proxy_status) - proxies:
                    del self.proxy_status[gone]  # its node left, or its proxy is restarting
                    self.proxy_info.pop(gone, None)
                for node in proxies:
                    self.proxy_status.setdefault(node, "STARTING")
            except Exception:
                logger.exception("cluster backend tick failed")
        for app in list(self.apps.values()):
            try:
                for change in self.autoscaler.decide(app) if app.retired is None else ():
                    self._autoscale(change)
            except Exception:
                logger.exception("autoscaling application %s failed", app.name)
            for dep in list(app.deployments.values()):
                try:
                    self._reconcile_deployment(dep)
                except Exception:
                    logger.exception("reconciling deployment %s failed", dep.id)
            self._forget_deleted_deployments(app)
            app.update_status()
            if app.deleting and not app.deployments:
                del self.apps[app.name]
        try:
            self.rollouts.tick()  # may change splits: before they are published
        except Exception:
            logger.exception("checking rollouts failed")
        self.publish()
        self._sweep_strays()
        for callback in self.after_tick:
            callback()
        if self._shutting_down and not self.apps:
            self.stopped.set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------- reconcile
    def _reconcile_deployment(self, dep: DeploymentState) -> None:
        now = self.clock()
        # 1. Reap exited processes.
        for replica in list(dep.replicas.values()):
            code = replica.process.poll()
            if code is None:
                self._enforce_deadlines(dep, replica, now)
                continue
            del dep.replicas[replica.replica_id]
            dep.ranks.release(replica.replica_id)
            self._replica_index.pop(replica.replica_id, None)
            self._release(replica.allocation)
            if replica.state == ReplicaState.STARTING and getattr(
                replica.process, "node_lost", False
            ):
                logger.warning(  # the cluster's failure, not the code's: not counted
                    "replica %s of %s was lost with its node before it was ready; replacing it",
                    replica.replica_id,
                    dep.id,
                )
            elif replica.state == ReplicaState.STARTING:
                error = (
                    replica.error
                    or getattr(replica.process, "exit_reason", None)
                    or (
                        f"The replica process exited with code {code} before it was ready. "
                        f"See its log: {replica.log_file}"
                    )
                )
                logger.warning(
                    "replica %s of %s failed to start: %s", replica.replica_id, dep.id, error
                )
                dep.record_startup_failure(error)
            elif replica.state != ReplicaState.STOPPING:
                if replica.version == dep.version:  # as Ray: its health check would fail
                    dep.unhealthy_reason = (
                        f"Replica {replica.replica_id} died unexpectedly; the deployment is "
                        "UNHEALTHY until its replacement is running."
                    )
                logger.warning(
                    "replica %s of %s died (exit code %s); replacing it",
                    replica.replica_id,
                    dep.id,
                    code,
                )
        target = 0 if dep.deleting else dep.target_num_replicas
        # 2. Roll over outdated replicas: keep enough old ones to cover what new ones can't yet.
        current = dep.current()
        outdated = dep.outdated()
        if outdated:
            new_running = sum(1 for r in current if r.state == ReplicaState.RUNNING)
            keep = 0 if dep.deleting else max(0, target - new_running)
            if dep.failed:
                keep = len(outdated)  # a failed rollout leaves the old version serving
            ranked = sorted(
                outdated, key=lambda r: (r.state != ReplicaState.RUNNING, -r.started_monotonic)
            )
            for replica in ranked[keep:]:
                self.stop_replica(dep, replica)
        # 3. Reconfigure live replicas in place when only user_config-like options changed.
        for replica in current:
            if (
                replica.state == ReplicaState.RUNNING
                and replica.conn is not None
                and replica.reconfig_version != dep.reconfig_version
            ):
                replica.state = ReplicaState.UPDATING
                self.spawn(reconfigure(self, dep, replica))
        # 4. Scale the current version.
        dep.pending_reason = None
        if len(current) < target and not dep.failed:
            missing = target - len(current)
            if outdated:  # rolling update: a few new replicas at a time, old ones serve meanwhile
                starting = sum(1 for r in current if r.state == ReplicaState.STARTING)
                batch = _rollout_batch(target, dep.spec.config.rolling_update_percentage)
                missing = min(missing, max(0, batch - starting))
            for _ in range(missing):
                if not self._start_replica(dep):
                    self._make_room_for_rollout(dep, outdated, current)
                    break
        elif len(current) > target:
            extra = sorted(
                current, key=lambda r: (r.state == ReplicaState.RUNNING, -r.started_monotonic)
            )
            for replica in extra[: len(current) - target]:
                self.stop_replica(dep, replica)
        if self.backend is not None and dep.pending_reason is None:
            explain_waiting(dep, self.backend, now)
        # 5. Status, then ranks (dense again once settled; replicas told of changes).
        dep.update_status()
        sync_ranks(dep, lambda r, rank, size: self.spawn(deliver_rank(r, rank, size)))

    def _make_room_for_rollout(
        self, dep: DeploymentState, outdated: list[ReplicaRecord], current: list[ReplicaRecord]
    ) -> None:
        """A new replica does not fit while old ones hold the resources (GPUs, say): stop
        one old replica so the rollout can go on (capacity dips by one meanwhile)."""
        if not outdated or dep.failed or dep.deleting:
            return
        if any(r.state == ReplicaState.STARTING for r in current):
            return  # one is on its way; wait for it
        if any(r.state == ReplicaState.STOPPING for r in dep.replicas.values()):
            return  # resources are being freed already
        live = [r for r in outdated if r.state != ReplicaState.STOPPING]
        if live:
            self.stop_replica(dep, min(live, key=lambda r: r.started_monotonic))

    def _enforce_deadlines(self, dep: DeploymentState, replica: ReplicaRecord, now: float) -> None:
        self.health.maybe_check(dep, replica, now)
        if replica.rejoin_deadline is not None and now > replica.rejoin_deadline:
            logger.warning(
                "replica %s of %s (pid %d) did not reconnect after the head restarted; "
                "replacing it",
                replica.replica_id,
                dep.id,
                replica.pid,
            )
            replica.rejoin_deadline = None
            replica.process.kill()
            return
        if replica.state == ReplicaState.STOPPING and replica.stop_requested_at is not None:
            timeout = float(dep.spec.config.graceful_shutdown_timeout_s) + STOP_GRACE_S
            if now - replica.stop_requested_at > timeout:
                replica.process.kill()
        elif (
            replica.state == ReplicaState.STARTING
            and now - replica.started_monotonic > STARTUP_TIMEOUT_S
        ):
            replica.error = f"The replica did not become ready within {STARTUP_TIMEOUT_S:.0f} s."
            replica.process.kill()

    # ------------------------------------------------------------------ spare
    def launch_spare(self) -> None:
        """Start a replica process ahead of need (the next replica adopts it)."""
        if not self._shutting_down and self.backend is None:
            self.spares.launch()

    def _replica_process_spec(self, identity: list[str], env: dict[str, str]) -> ProcessSpec:
        """``python -m schooner.replica.main`` for this session, tied to the head's lifeline."""
        return ProcessSpec(
            module="schooner.replica.main",
            args=[
                "--session",
                str(self.session.root),
                *identity,
                "--lifeline-fd",
                str(self.lifeline_fd),
            ],
            env=env,
            pass_fds=(self.lifeline_fd,),
        )

    def spare_registered(self, spare_id: str, conn: Connection) -> None:
        self.spares.registered(spare_id, conn)

    def _autoscale(self, change: Change) -> None:
        dep = change.deployment
        logger.info("deployment %s: %s", dep.id, change.reason)
        dep.scaling_reason = change.reason
        self.scale(dep, change.num_replicas)

    def _forget_deleted_deployments(self, app: ApplicationState) -> None:
        for name, dep in list(app.deployments.items()):
            if dep.deleting and not dep.replicas:
                del app.deployments[name]
                self.autoscaler.forget(dep.id)
                self.long_poll.publish(dep.id.key, DELETED)

    def _release(self, allocation: Allocation) -> None:
        if self.backend is not None:
            self.backend.release(allocation)
        else:
            self.resources.release(allocation)

    def _start_replica(self, dep: DeploymentState) -> bool:
        if self.backend is not None:
            return start_on_cluster(self, dep, self.backend)
        request = dep.spec.config.required_resources()
        allocation = self.resources.allocate(request)
        if allocation is None:
            dep.pending_reason = f"Deployment '{dep.id.name}' has replicas waiting to start. " + (
                self.resources.why_not(request) or ""
            )
            return False
        replica_id = new_replica_id()
        process_env = dep.spec.process_env
        sys_path = [*process_env.sys_path, *self.apps[dep.id.app_name].spec.sys_path]
        env = {**process_env.env_vars, "SCHOONER_SYS_PATH": os.pathsep.join(sys_path)}
        if process_env.cwd is not None:
            env["SCHOONER_CWD"] = process_env.cwd
        env[LOGGING_CONFIG_ENV] = json.dumps(
            deployment_logging_config(dep.spec.config.logging_config)
        )
        # Always set: a replica without a GPU must not see the node's GPUs (as in Ray).
        env["CUDA_VISIBLE_DEVICES"] = self.resources.cuda_visible_devices(allocation)
        # A spare process was started without the runtime_env's variables: only plain ones.
        spare = self.spares.take() if not process_env.env_vars else None
        if spare is not None:
            replica = self.record_replica(dep, replica_id, spare.process, allocation)
            logger.info(
                "replica %s of %s adopts spare process %d", replica_id, dep.id, spare.process.pid
            )
            self.spawn(adopt_spare(self, dep, replica, spare, env, sys_path, STARTUP_TIMEOUT_S))
            return True
        spec = self._replica_process_spec(
            ["--replica-id", replica_id, "--app", dep.id.app_name, "--deployment", dep.id.name],
            env,
        )
        try:
            process = self.launcher.launch(spec)
        except OSError as exc:
            self.resources.release(allocation)
            dep.record_startup_failure(f"Could not start a replica process: {exc}")
            return False
        self.record_replica(dep, replica_id, process, allocation)
        logger.info("starting replica %s of %s (pid %d)", replica_id, dep.id, process.pid)
        return True

    def record_replica(
        self, dep: DeploymentState, replica_id: str, process: ProcessHandle, allocation: Allocation
    ) -> ReplicaRecord:
        replica = ReplicaRecord(
            replica_id=replica_id,
            version=dep.version,
            state=ReplicaState.STARTING,
            process=process,
            allocation=allocation,
            address=self.session.replica_socket(replica_id),
            log_file=str(
                log_file_path(
                    self.session.logs,
                    deployment_logging_config(dep.spec.config.logging_config),
                    replica_file_stem(dep.id.app_name, dep.id.name, replica_id),
                )
            ),
            start_time_s=self.wall_clock(),
            started_monotonic=self.clock(),
        )
        dep.replicas[replica_id] = replica
        dep.ranks.assign(replica_id, self.node_id)
        self._replica_index[replica_id] = dep
        return replica

    def stop_replica(self, dep: DeploymentState, replica: ReplicaRecord) -> None:
        if replica.state == ReplicaState.STOPPING:
            return
        was_running = replica.state == ReplicaState.RUNNING
        replica.state = ReplicaState.STOPPING
        replica.stop_requested_at = self.clock()
        logger.info("stopping replica %s of %s", replica.replica_id, dep.id)
        if replica.conn is None or not was_running:
            replica.process.terminate()
            return
        self.spawn(drain_and_stop(dep, replica))

    # -------------------------------------------------------------- recovery
    def adopt_replica(self, dep: DeploymentState, saved: ReplicaCheckpoint) -> bool:
        """Track a replica a previous head started, if it still runs (it must reconnect
        within :data:`REJOIN_TIMEOUT_S`). False if it is gone."""
        process: ProcessHandle | None
        if self.backend is not None:
            process = self.backend.adopt(dep.id, saved.replica_id, saved.pid)
        elif is_session_process(saved.pid, _REPLICA_MODULE, str(self.session.root)):
            process = AdoptedProcess(saved.pid)
        else:
            process = None
        if process is None:
            return False
        state = ReplicaState(saved.state)
        if state == ReplicaState.UPDATING:
            state = ReplicaState.RUNNING  # its reconfigure is redone once it reconnects
        now = self.clock()
        replica = ReplicaRecord(
            replica_id=saved.replica_id,
            version=saved.version,
            state=state,
            process=process,
            allocation=saved.allocation,
            address=saved.address,
            log_file=saved.log_file,
            start_time_s=saved.start_time_s,
            started_monotonic=now,
            reconfig_version=saved.reconfig_version,
            stop_requested_at=now if state == ReplicaState.STOPPING else None,
            rejoin_deadline=now + REJOIN_TIMEOUT_S,
            placement=dict(saved.placement),
        )
        if self.backend is not None:
            self.backend.restore(saved.allocation)
        else:
            self.resources.restore(saved.allocation)
        if saved.rank is not None:
            dep.ranks.recover(saved.replica_id, saved.node_id or self.node_id, Rank(*saved.rank))
        dep.replicas[replica.replica_id] = replica
        dep.ranks.assign(replica.replica_id, self.node_id)  # (a checkpoint from before ranks)
        self._replica_index[replica.replica_id] = dep
        self._sweep_at = now + REJOIN_TIMEOUT_S
        return True

    def replica_rejoined(self, replica_id: str, conn: Connection, initialized: bool) -> None:
        """A replica reconnected after a head restart: take it back, or tell it to stop."""
        dep = self._replica_index.get(replica_id)
        replica = dep.replicas.get(replica_id) if dep is not None else None
        if dep is None or replica is None or replica.rejoin_deadline is None:
            logger.info(
                "replica %s reconnected but is not in the checkpoint; stopping it", replica_id
            )
            conn.notify("shutdown")
            return
        replica.conn = conn
        replica.rejoin_deadline = None
        logger.info("replica %s of %s reconnected", replica_id, dep.id)
        if replica.state == ReplicaState.STOPPING:
            self.spawn(drain_and_stop(dep, replica))
        elif not initialized:
            replica.state = ReplicaState.STARTING
            self.spawn(initialize(self, dep, replica, conn))
        elif replica.state == ReplicaState.STARTING:
            replica.state = ReplicaState.RUNNING
        self.wake()

    def _sweep_strays(self) -> None:
        """After a recovery, stop replica processes of this session that no record owns
        (started by the crashed head after its last checkpoint)."""
        if self._sweep_at is None or self.clock() < self._sweep_at:
            return
        self._sweep_at = None
        if self.backend is not None:
            self.backend.stop_strays(set(self._replica_index))
            return
        known = set(self.all_pids()) | self.spares.adopting_pids()
        for pid in session_processes(str(self.session.root), _REPLICA_MODULE):
            if pid not in known:
                logger.warning("stopping replica process %d that no record owns", pid)
                AdoptedProcess(pid).terminate()

    # --------------------------------------------------------------- publish
    def publish(self) -> None:
        for app in self.apps.values():
            for dep in app.deployments.values():
                self.long_poll.publish(dep.id.key, replica_set(app.name, dep))
        self.long_poll.publish("routes", route_table(self.apps.values()))
        self.long_poll.publish(TRAFFIC_KEY, self.traffic.policies(self.apps))

    # ------------------------------------------------------------ replica RPCs
    def replica_registered(
        self, replica_id: str, conn: Connection, endpoint: dict[str, Any] | None = None
    ) -> None:
        """A replica connected; ``endpoint``: where it serves (a cluster backend's replica
        says so itself: addresses, node, actor)."""
        dep = self._replica_index.get(replica_id)
        replica = dep.replicas.get(replica_id) if dep is not None else None
        if dep is None or replica is None or replica.state != ReplicaState.STARTING:
            conn.notify("shutdown")
            return
        if endpoint is not None:
            replica.address = str(endpoint.get("address") or replica.address)
            replica.log_file = str(endpoint.get("log_file") or replica.log_file)
            replica.placement = dict(endpoint)
        replica.conn = conn
        self.spawn(initialize(self, dep, replica, conn))

    def replica_models(self, replica_id: str, model_ids: tuple[str, ...] | list[str]) -> None:
        """A replica's multiplexed models changed (see :mod:`schooner.replica.models`):
        keep them on its record and republish its deployment's replica set (only when
        they differ; the long-poll host also skips unchanged values)."""
        dep = self._replica_index.get(replica_id)
        replica = dep.replicas.get(replica_id) if dep is not None else None
        if dep is None or replica is None:
            return
        ids = tuple(sorted(set(model_ids)))
        if ids == replica.model_ids:
            return
        replica.model_ids = ids
        app = self.apps.get(dep.id.app_name)
        if app is not None and app.deployments.get(dep.id.name) is dep:
            self.long_poll.publish(dep.id.key, replica_set(app.name, dep))

    # ------------------------------------------------------------ client RPCs
    def deploy_app(self, spec: AppSpec) -> None:
        """Set an application's goal (create or update). Validates before changing anything."""
        if self._shutting_down:
            raise ServeConfigError("The instance is shutting down.")
        if spec.route_prefix is not None:
            for other in self.apps.values():
                if (
                    other.name != spec.name
                    and other.spec.route_prefix == spec.route_prefix
                    and not other.deleting
                ):
                    raise ServeConfigError(
                        f"Route prefix '{spec.route_prefix}' is already used by application "
                        f"'{other.name}'. Give application '{spec.name}' another route_prefix "
                        "(or delete the other application first)."
                    )
        names = [d.name for d in spec.deployments]
        if spec.external_scaler_enabled:
            scaled = [d.name for d in spec.deployments if d.config.autoscaling_config is not None]
            if scaled:
                raise ServeConfigError(
                    f"Application '{spec.name}' has external_scaler_enabled, so built-in "
                    f"autoscaling must be off, but these deployments configure it: {scaled}. "
                    "Remove their autoscaling_config (or num_replicas='auto'), or turn the "
                    "external scaler off."
                )
        if spec.ingress not in names:
            raise ServeConfigError(f"Ingress deployment '{spec.ingress}' is not in the app.")
        existing = self.apps.get(spec.name)
        now = self.wall_clock()
        if existing is None or existing.deleting:
            if existing is not None:
                raise ServeConfigError(
                    f"Application '{spec.name}' is being deleted; try again when it is gone."
                )
            deployments = {d.name: DeploymentState.new(spec.name, d) for d in spec.deployments}
            self.apps[spec.name] = ApplicationState(spec, deployments, now)
        else:
            existing.spec = spec
            existing.last_deployed_time_s = now
            existing.building = False
            existing.build_error = None
            for d in spec.deployments:
                state = existing.deployments.get(d.name)
                if state is None:
                    existing.deployments[d.name] = DeploymentState.new(spec.name, d)
                else:  # also when it was being removed: keep tracking its old replicas
                    state.deleting = False
                    state.apply_spec(d)
            for name, state in existing.deployments.items():
                if name not in names:
                    state.deleting = True
            self.rollouts.app_deployed(spec.name)
        self.apps[spec.name].update_status()
        self.wake()

    def scale(self, dep: DeploymentState, target_num_replicas: int) -> None:
        """Set a deployment's replica count (autoscaler, external scaler); an external
        scaler's count is kept until the deployment is redeployed."""
        if target_num_replicas == dep.target_num_replicas:
            return
        up = target_num_replicas > dep.target_num_replicas
        dep.target_num_replicas = target_num_replicas
        if dep.status == DeploymentStatus.HEALTHY:
            dep.status = DeploymentStatus.UPSCALING if up else DeploymentStatus.DOWNSCALING
            dep.status_trigger = DeploymentStatusTrigger.AUTOSCALING
        self.wake()

    def begin_build(self, name: str, route_prefix: str | None) -> None:
        """A config entry for ``name`` is being built: show it DEPLOYING (create it if new)."""
        app = self.apps.get(name)
        if app is None:
            placeholder = AppSpec(
                name, route_prefix, ingress="", deployments=[], source="declarative"
            )
            app = self.apps[name] = ApplicationState(placeholder, {}, self.wall_clock())
        app.building = True
        app.build_error = None
        app.update_status()

    def build_failed(self, name: str, message: str) -> None:
        """The latest config entry for ``name`` failed to build; what runs keeps running."""
        app = self.apps.get(name)
        if app is None or app.deleting:
            return
        app.building = False
        app.build_error = message
        app.last_deployed_time_s = self.wall_clock()
        app.update_status()

    def delete_app(self, name: str) -> bool:
        app = self.apps.get(name)
        if app is None:
            return False
        app.deleting = True
        for dep in app.deployments.values():
            dep.deleting = True
        self.traffic.app_deleted(name)
        self.rollouts.app_deleted(name)
        self.publish()  # callers stop sending it split or shadow traffic at once
        self.wake()
        return True

    async def wait_app(self, name: str, timeout_s: float, until: str) -> str:
        """Wait until app ``name`` is settled (``until="ready"``) or gone (``"deleted"``).

        Returns the status value at that moment (``NOT_STARTED`` if it is gone).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settled = {
            ApplicationStatus.RUNNING,
            ApplicationStatus.DEPLOY_FAILED,
            ApplicationStatus.UNHEALTHY,
        }
        while True:
            app = self.apps.get(name)
            if app is None:
                return ApplicationStatus.NOT_STARTED.value
            if until == "ready" and app.status in settled:
                if app.status == ApplicationStatus.RUNNING and not self.proxy_ready.is_set():
                    # HTTP must answer once serve.run returns: wait for the proxy too.
                    remaining = deadline - loop.time()
                    try:
                        await asyncio.wait_for(self.proxy_ready.wait(), max(remaining, 0.001))
                    except TimeoutError:
                        return ApplicationStatus.DEPLOYING.value
                return app.status.value
            remaining = deadline - loop.time()
            if remaining <= 0:
                return app.status.value
            try:
                await asyncio.wait_for(self._ticked.wait(), remaining)
            except TimeoutError:
                pass

    def begin_shutdown(self) -> None:
        self._shutting_down = True
        for name in list(self.apps):
            self.delete_app(name)
        self.wake()

    def all_pids(self) -> list[int]:
        return self.spares.pids() + [
            r.pid
            for app in self.apps.values()
            for dep in app.deployments.values()
            for r in dep.replicas.values()
        ]

    def live_replicas(self) -> list[str]:
        """Ids of replicas whose process (or actor) has not yet exited."""
        return [
            r.replica_id
            for app in self.apps.values()
            for dep in app.deployments.values()
            for r in dep.replicas.values()
            if r.process.poll() is None
        ]

    def kill_all(self) -> None:
        self.spares.kill()
        for app in self.apps.values():
            for dep in app.deployments.values():
                for replica in dep.replicas.values():
                    replica.process.kill()

    def is_failed(self, name: str) -> bool:
        app = self.apps.get(name)
        return app is not None and any(
            d.status == DeploymentStatus.DEPLOY_FAILED for d in app.deployments.values()
        )
