"""Checkpointing the controller's goal state, and reading it back after a crash.

The head writes what it must not forget into a
:class:`~schooner.checkpoint.CheckpointStore` whenever it changes:

- ``app/<name>``: an application's spec and the specs of its deployments
  (code, init args, options). Written only when a spec object changes.
- ``state``: everything else, small: per application its status flags and
  per deployment its target and replicas (pid, address, version,
  allocation), the declarative config document, the proxy's pid.

Client changes (deploy, delete, a config document) are flushed before the
client is answered, so an acknowledged change survives a crash; the rest
(replica starts and stops) is written right after the reconcile tick that
made it. A restarted head reads both back (:func:`load`) before it accepts
connections and re-adopts the replicas and proxy that still run.

The store is trusted: values are pickles.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schooner.checkpoint import CheckpointStore
from schooner.rpc.messages import AppSpec, DeploymentSpec
from schooner.runtime.resources import Allocation

if TYPE_CHECKING:
    from schooner.controller.controller import Controller
    from schooner.controller.declarative import DeclarativeConfig

logger = logging.getLogger("schooner.controller")

FORMAT = 1
STATE_KEY = "state"
APP_PREFIX = "app/"
#: Wait before retrying a write that failed (the store is down), doubling up to the last.
_RETRY_S = (0.2, 5.0)


@dataclass
class ReplicaCheckpoint:
    replica_id: str
    version: str
    reconfig_version: str
    state: str
    pid: int
    allocation: Allocation
    address: str
    log_file: str
    start_time_s: float
    #: ``(rank, node_rank, local_rank)`` and the node it counts on (absent in older checkpoints).
    rank: tuple[int, int, int] | None = None
    node_id: str = ""
    #: Ray backend: where the replica runs (see ReplicaRecord.placement).
    placement: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeploymentCheckpoint:
    name: str
    target_num_replicas: int
    deleting: bool
    failed: bool
    status: str
    status_trigger: str
    message: str
    phase: str
    consecutive_failures: int
    replicas: list[ReplicaCheckpoint]


@dataclass
class AppCheckpoint:
    name: str
    last_deployed_time_s: float
    deleting: bool
    building: bool
    build_error: str | None
    config_warnings: list[str]
    deployments: list[DeploymentCheckpoint]
    #: Why a rollout retired it (see ApplicationState.retired); None if it was not.
    retired: str | None = None


@dataclass
class InstanceCheckpoint:
    format: int
    node_id: str
    proxy_pid: int | None
    apps: list[AppCheckpoint]
    #: The declarative config document (JSON-able) and each entry as given, or None.
    document: dict[str, Any] | None = None
    app_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Traffic splits and shadows per owner application (see controller.traffic).
    traffic: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The latest rollout of each application (see controller.rollout), wall-clock times.
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class AppSpecs:
    """What ``app/<name>`` holds: the application's spec and every deployment's (also
    those being removed, which are no longer in the application's spec)."""

    app: AppSpec
    deployments: dict[str, DeploymentSpec]


@dataclass
class Recovered:
    state: InstanceCheckpoint
    specs: dict[str, AppSpecs]


def load(store: CheckpointStore) -> Recovered | None:
    """The checkpoint in ``store``, or None if it holds none. Store errors propagate."""
    raw = store.get(STATE_KEY)
    if raw is None:
        return None
    state = pickle.loads(raw)
    if not isinstance(state, InstanceCheckpoint) or state.format != FORMAT:
        raise ValueError("the checkpoint was written by another version of Schooner")
    specs: dict[str, AppSpecs] = {}
    for app in state.apps:
        blob = store.get(APP_PREFIX + app.name)
        if blob is None:
            logger.error("checkpoint: the spec of application '%s' is missing; dropped", app.name)
            continue
        specs[app.name] = pickle.loads(blob)
    state.apps = [a for a in state.apps if a.name in specs]
    return Recovered(state, specs)


def snapshot(
    controller: Controller, declarative: DeclarativeConfig | None, proxy_pid: int | None
) -> InstanceCheckpoint:
    """The goal state now, without the specs (``app/<name>`` keys hold those)."""
    document = declarative.document if declarative is not None else None
    apps = [
        AppCheckpoint(
            name=app.name,
            last_deployed_time_s=app.last_deployed_time_s,
            deleting=app.deleting,
            building=app.building,
            build_error=app.build_error,
            config_warnings=list(app.config_warnings),
            retired=app.retired,
            deployments=[
                DeploymentCheckpoint(
                    name=name,
                    target_num_replicas=dep.target_num_replicas,
                    deleting=dep.deleting,
                    failed=dep.failed,
                    status=dep.status.value,
                    status_trigger=dep.status_trigger.value,
                    message=dep.message,
                    phase=dep.phase.value,
                    consecutive_failures=dep.consecutive_failures,
                    replicas=[
                        ReplicaCheckpoint(
                            replica_id=r.replica_id,
                            version=r.version,
                            reconfig_version=r.reconfig_version,
                            state=r.state.value,
                            pid=r.pid,
                            allocation=r.allocation,
                            address=r.address,
                            log_file=r.log_file,
                            start_time_s=r.start_time_s,
                            rank=(
                                dep.ranks.get(r.replica_id) if dep.ranks.has(r.replica_id) else None
                            ),
                            node_id=dep.ranks.node_of.get(r.replica_id, ""),
                            placement=dict(r.placement),
                        )
                        for r in dep.replicas.values()
                    ],
                )
                for name, dep in app.deployments.items()
            ],
        )
        for app in controller.apps.values()
    ]
    return InstanceCheckpoint(
        format=FORMAT,
        node_id=controller.node_id,
        proxy_pid=proxy_pid,
        apps=apps,
        document=document.model_dump(mode="json", exclude_unset=True) if document else None,
        app_configs=dict(declarative.app_configs) if declarative is not None else {},
        traffic=controller.traffic.to_checkpoint(),
        rollouts=controller.rollouts.to_checkpoint(),
    )


def _spec_refs(controller: Controller) -> dict[str, tuple[Any, ...]]:
    """Per application, the spec objects ``app/<name>`` is written from (compared by identity)."""
    return {
        app.name: (app.spec, *((n, d.spec) for n, d in app.deployments.items()))
        for app in controller.apps.values()
    }


def _same_refs(a: tuple[Any, ...] | None, b: tuple[Any, ...]) -> bool:
    if a is None or len(a) != len(b):
        return False
    first_same = a[0] is b[0]
    return first_same and all(
        x[0] == y[0] and x[1] is y[1] for x, y in zip(a[1:], b[1:], strict=True)
    )


class Checkpointer:
    """Writes the controller's goal state to a store whenever it changes."""

    def __init__(
        self,
        store: CheckpointStore,
        controller: Controller,
        declarative: DeclarativeConfig | None = None,
    ) -> None:
        self.store = store
        self.controller = controller
        self.declarative = declarative
        self.proxy_pid: int | None = None
        self._written_state: bytes | None = None
        self._written_specs: dict[str, tuple[Any, ...]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._frozen = False
        self._failing = False
        #: A store call is running in a thread: it cannot be cancelled, only waited for.
        self._storing = False

    def note(self) -> None:
        """Write soon if the goal state changed (called after every reconcile tick)."""
        if self._frozen or (self._writer is not None and not self._writer.done()):
            return
        if self._dirty():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def flush(self) -> None:
        """Return once what is in memory now is in the store (or the store failed)."""
        if self._frozen:
            return
        self.note()  # a running writer snapshots again before it stops: it takes this too
        writer = self._writer
        while writer is not None and not writer.done() and not self._failing:
            # While the store fails, don't hold the client: the writer retries on its own.
            await asyncio.wait({writer}, timeout=0.05)

    def freeze(self) -> None:
        """Write nothing more: the instance is stopping and the store keeps its goal state
        (a restart with the same checkpoint path brings the applications back)."""
        self._frozen = True

    async def clear(self) -> None:
        """Remove this instance's checkpoint (an explicit shutdown: nothing to come back)."""
        await self._stop_writing()
        try:
            keys = await asyncio.to_thread(self.store.keys, APP_PREFIX)
            for key in [STATE_KEY, *keys]:
                await asyncio.to_thread(self.store.delete, key)
        except Exception:
            logger.exception("could not clear the checkpoint store")

    async def close(self) -> None:
        """Stop writing (a write under way finishes first) and close the store."""
        await self._stop_writing()
        try:
            self.store.close()
        except Exception:
            logger.exception("closing the checkpoint store failed")

    async def _stop_writing(self) -> None:
        self._frozen = True
        writer = self._writer
        if writer is None or writer.done():
            return
        if not self._storing:
            writer.cancel()  # between store calls (or waiting to retry): safe to stop
        await asyncio.wait({writer}, timeout=30)

    # -- writing --------------------------------------------------------------
    def _state_bytes(self) -> bytes:
        return pickle.dumps(snapshot(self.controller, self.declarative, self.proxy_pid), protocol=5)

    def _dirty(self) -> bool:
        refs = _spec_refs(self.controller)
        if set(refs) != set(self._written_specs):
            return True
        if any(not _same_refs(self._written_specs.get(n), r) for n, r in refs.items()):
            return True
        return self._state_bytes() != self._written_state

    async def _write_loop(self) -> None:
        delay = _RETRY_S[0]
        while not self._frozen:
            try:
                wrote = await self._write_once()
            except Exception as exc:
                if not self._failing:
                    logger.error("cannot write the checkpoint store (will retry): %r", exc)
                self._failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_S[1])
                continue
            if self._failing:
                logger.info("the checkpoint store is writable again")
            self._failing = False
            delay = _RETRY_S[0]
            if not wrote:
                break

    async def _store(self, method: Callable[..., None], *args: Any) -> None:
        """One store call in a thread; none once writing has stopped."""
        if self._frozen:
            raise asyncio.CancelledError
        self._storing = True
        try:
            await asyncio.to_thread(method, *args)
        finally:
            self._storing = False

    async def _write_once(self) -> bool:
        """Write what changed; False if nothing had."""
        refs = _spec_refs(self.controller)
        state = self._state_bytes()
        wrote = False
        for name, ref in refs.items():
            if not _same_refs(self._written_specs.get(name), ref):
                specs = AppSpecs(ref[0], {n: s for n, s in ref[1:]})
                blob = pickle.dumps(specs, protocol=5)
                await self._store(self.store.put, APP_PREFIX + name, blob)
                self._written_specs[name] = ref
                wrote = True
        if state != self._written_state:
            await self._store(self.store.put, STATE_KEY, state)
            self._written_state = state
            wrote = True
        for name in [n for n in self._written_specs if n not in refs]:
            await self._store(self.store.delete, APP_PREFIX + name)
            del self._written_specs[name]
            wrote = True
        return wrote


def restore(
    recovered: Recovered, controller: Controller, declarative: DeclarativeConfig | None
) -> list[str]:
    """Rebuild the controller's records from a checkpoint, re-adopting the replicas that
    still run. Returns the applications whose config entry was being built (to rebuild)."""
    from schooner.controller.state import ApplicationState, DeploymentState, Phase
    from schooner.schema import DeploymentStatus, DeploymentStatusTrigger

    state = recovered.state
    controller.node_id = state.node_id
    adopted = lost = 0
    for app_cp in state.apps:
        specs = recovered.specs[app_cp.name]
        deployments: dict[str, DeploymentState] = {}
        for dep_cp in app_cp.deployments:
            spec = specs.deployments.get(dep_cp.name)
            if spec is None:
                continue
            dep = DeploymentState.new(app_cp.name, spec)
            dep.target_num_replicas = dep_cp.target_num_replicas
            dep.deleting = dep_cp.deleting
            dep.failed = dep_cp.failed
            dep.status = DeploymentStatus(dep_cp.status)
            dep.status_trigger = DeploymentStatusTrigger(dep_cp.status_trigger)
            dep.message = dep_cp.message
            dep.phase = Phase(dep_cp.phase)
            dep.consecutive_failures = dep_cp.consecutive_failures
            deployments[dep_cp.name] = dep
            for replica in dep_cp.replicas:
                if controller.adopt_replica(dep, replica):
                    adopted += 1
                else:
                    lost += 1
            if not (dep.failed or dep.deleting) and len(dep.current()) < dep.target_num_replicas:
                # Replicas are missing (a whole-instance restart): deploying until replaced.
                dep.phase = Phase.UPDATING
                dep.status = DeploymentStatus.UPDATING
                dep.status_trigger = DeploymentStatusTrigger.CONFIG_UPDATE_STARTED
        app = ApplicationState(specs.app, deployments, app_cp.last_deployed_time_s)
        app.deleting = app_cp.deleting
        app.build_error = app_cp.build_error
        app.config_warnings = list(app_cp.config_warnings)
        app.retired = getattr(app_cp, "retired", None)
        app.update_status()
        controller.apps[app.name] = app
    controller.traffic.restore(getattr(state, "traffic", {}))
    controller.rollouts.restore(getattr(state, "rollouts", {}))
    if declarative is not None and state.document is not None:
        declarative.restore(state.document, state.app_configs)
    logger.info(
        "recovered %d applications from the checkpoint; re-adopting %d live replicas "
        "(%d are gone and will be replaced)",
        len(state.apps),
        adopted,
        lost,
    )
    return [a.name for a in state.apps if a.building and not a.deleting]
