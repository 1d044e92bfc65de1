"""The autoscaler: each reconcile tick, a target replica count for every autoscaled deployment.

For each application with autoscaled deployments it builds one
:class:`~schooner.autoscaling_policy.AutoscalingContext` per deployment (replica
counts, the callers' demand over the look-back window from the
:class:`~schooner.controller.demand.DemandStore`, the policy's last state),
calls the application's policy if it has one, else each deployment's policy,
applies the shared rules (:func:`~schooner.autoscaling_policy.with_defaults`)
and the ``min_replicas``/``max_replicas`` bounds, and returns the targets that
changed with the reason. A policy that cannot be loaded or raises is logged,
shown in the deployment's autoscaling detail, and the default policy decides
for that tick: the deployment keeps serving.

Policies run in the head. A policy given as an import path is imported with
the application's ``sys.path`` entries (those of the process that built it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schooner import autoscaling_policy as policies
from schooner.autoscaling_policy import AutoscalingContext
from schooner.config import DEFAULT_AUTOSCALING_POLICY, AutoscalingConfig, AutoscalingPolicy
from schooner.controller.demand import DemandStore
from schooner.controller.state import ApplicationState, DeploymentState
from schooner.rpc.messages import DeploymentID
from schooner.schema import ReplicaState

__all__ = ["Autoscaler", "Change", "ScalingDecision"]

logger = logging.getLogger("schooner.controller")

#: Decisions and errors kept per deployment (shown in its autoscaling detail).
KEEP_DECISIONS = 20
KEEP_ERRORS = 10


@dataclass(frozen=True)
class ScalingDecision:
    """One change of a deployment's target (Ray's ``ScalingDecision`` fields)."""

    timestamp_s: float
    reason: str
    prev_num_replicas: int
    curr_num_replicas: int
    policy: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "timestamp_s": self.timestamp_s,
            "reason": self.reason,
            "prev_num_replicas": self.prev_num_replicas,
            "curr_num_replicas": self.curr_num_replicas,
            "policy": self.policy,
        }


@dataclass(frozen=True)
class Change:
    """A new target for a deployment, and why."""

    deployment: DeploymentState
    num_replicas: int
    reason: str


@dataclass
class _Scaling:
    """What the autoscaler keeps for one deployment between ticks."""

    config_key: str
    #: The config object the key was computed from (recomputed only when it changes).
    config: AutoscalingConfig | None = None
    policy_state: dict[str, Any] = field(default_factory=dict)
    decisions: deque[ScalingDecision] = field(default_factory=lambda: deque(maxlen=KEEP_DECISIONS))
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=KEEP_ERRORS))
    last_scale_up_time: float | None = None
    last_scale_down_time: float | None = None
    #: The last tick's inputs and raw answer (for status and metrics).
    total_num_requests: float = 0.0
    desired_num_replicas: int = 0
    policy_time_ms: float = 0.0
    policy_scope: str = "deployment"
    #: The user's policy callable, loaded once per deployed config.
    policy: Callable[..., Any] | None = None
    #: Decisions so far, by direction (a metric).
    upscales: int = 0
    downscales: int = 0


@dataclass(frozen=True)
class _Answer:
    """A policy's answer for one deployment: after factors and delays (``wanted``), and as
    the policy gave it (``asked``, shown in the reason)."""

    wanted: float
    state: dict[str, Any]
    policy: str
    asked: float


_DEFAULT = policies.with_defaults(policies.default_autoscaling_policy)


class Autoscaler:
    """Decides targets from ``demand``; ``wall_clock`` is what policies see as time."""

    def __init__(self, demand: DemandStore, wall_clock: Callable[[], float] = time.time) -> None:
        self.demand = demand
        self.wall_clock = wall_clock
        self._scaling: dict[DeploymentID, _Scaling] = {}
        #: Per application: the spec its policy was loaded for, and the policy.
        self._app_policies: dict[str, tuple[Any, Callable[..., Any]]] = {}

    # ------------------------------------------------------------------ ticks
    def decide(self, app: ApplicationState) -> list[Change]:
        """New targets for ``app``'s autoscaled deployments (only those that change)."""
        deps = [
            d
            for d in app.deployments.values()
            if d.spec.config.autoscaling_config is not None and not (d.deleting or d.failed)
        ]
        if not deps or app.deleting:
            return []
        contexts = {d.id: self._context(d) for d in deps}
        by_id = {d.id: d for d in deps}
        answers = self._ask_app_policy(app, contexts) if app.spec.autoscaling_policy else None
        changes: list[Change] = []
        for dep_id, ctx in contexts.items():
            dep = by_id[dep_id]
            scaling = self._scaling[dep_id]
            if answers is None:
                answer = self._ask_policy(dep, ctx, app.spec.sys_path)
            else:
                given = answers[dep_id]
                if not isinstance(given, _Answer):
                    scaling.policy_state = given  # left out by the application policy
                    continue
                answer = given
            scaling.policy_state = answer.state
            config = ctx.config
            scaling.desired_num_replicas = math.ceil(answer.wanted)
            bounded = max(config.min_replicas, min(config.max_replicas, math.ceil(answer.wanted)))
            if bounded != dep.target_num_replicas:
                reason = self._reason(ctx, math.ceil(answer.asked), bounded, answer.policy)
                self._record(scaling, dep.target_num_replicas, bounded, reason, answer.policy)
                changes.append(Change(dep, bounded, reason))
        return changes

    def _context(self, dep: DeploymentState) -> AutoscalingContext:
        config = dep.spec.config.autoscaling_config
        assert config is not None
        scaling = self._scaling.get(dep.id)
        if scaling is None or scaling.config is not config:
            key = json.dumps(config.model_dump(mode="json"), sort_keys=True, default=str)
            if scaling is None or scaling.config_key != key:  # a new config starts afresh
                previous = scaling
                scaling = self._scaling[dep.id] = _Scaling(key)
                if previous is not None:  # history and counts go on
                    scaling.decisions, scaling.errors = previous.decisions, previous.errors
                    scaling.upscales = previous.upscales
                    scaling.downscales = previous.downscales
            scaling.config = config
            scaling.policy = None  # a (re)deploy loads the policy afresh
        running = [r.replica_id for r in dep.current() if r.state == ReplicaState.RUNNING]
        demand_key = dep.id.key
        window = float(config.look_back_period_s)
        function = str(config.aggregation_function)

        def total() -> float:
            value = self.demand.total(demand_key, window, function)
            scaling.total_num_requests = value
            return value

        return AutoscalingContext(
            deployment_id=dep.id,
            deployment_name=dep.id.name,
            app_name=dep.id.app_name,
            current_num_replicas=len(running),
            target_num_replicas=dep.target_num_replicas,
            running_replicas=running,
            total_num_requests=total,
            total_queued_requests=0.0,
            capacity_adjusted_min_replicas=config.min_replicas,
            capacity_adjusted_max_replicas=config.max_replicas,
            policy_state=dict(scaling.policy_state),
            last_scale_up_time=scaling.last_scale_up_time,
            last_scale_down_time=scaling.last_scale_down_time,
            current_time=self.wall_clock(),
            config=config,
        )

    # --------------------------------------------------------------- policies
    def _ask_policy(
        self, dep: DeploymentState, ctx: AutoscalingContext, sys_path: list[str]
    ) -> _Answer:
        """The deployment policy's answer; the default policy's if it fails."""
        config = ctx.config
        scaling = self._scaling[dep.id]
        name = str(config.policy.policy_function)
        asked: list[float] = []

        def checked(c: AutoscalingContext) -> tuple[float, dict[str, Any]]:
            wanted, state = raw(c)
            if not _is_count(wanted):
                raise ValueError(
                    "an autoscaling policy returns (num_replicas, state) with num_replicas a "
                    f"number >= 0; got {wanted!r}"
                )
            asked.append(float(wanted))
            return wanted, state

        started = time.perf_counter()
        try:
            if scaling.policy is None:
                scaling.policy = _load(config.policy, sys_path)
            raw = scaling.policy
            wanted, state = policies.with_defaults(checked)(ctx)
        except Exception as exc:
            self._policy_failed(scaling, dep.id, name, exc)
            wanted, state = _DEFAULT(ctx)  # its delay state carries over between ticks
            name, asked = DEFAULT_AUTOSCALING_POLICY, []
        scaling.policy_time_ms = (time.perf_counter() - started) * 1000
        scaling.policy_scope = "deployment"
        return _Answer(wanted, dict(state or {}), name, asked[-1] if asked else wanted)

    def _ask_app_policy(
        self, app: ApplicationState, contexts: dict[DeploymentID, AutoscalingContext]
    ) -> dict[DeploymentID, _Answer | dict[str, Any]] | None:
        """The application policy's answer per deployment (or, for a deployment it left out,
        just its new state); None (each deployment's own policy decides) if it fails."""
        spec = app.spec.autoscaling_policy or {}
        name = str(spec.get("policy_function", ""))
        asked: dict[DeploymentID, float] = {}

        def checked(
            ctxs: dict[DeploymentID, AutoscalingContext],
        ) -> tuple[dict[DeploymentID, float], dict[DeploymentID, dict[str, Any]] | None]:
            decisions, states = raw(ctxs)
            if not isinstance(decisions, dict):
                raise TypeError(
                    "an application autoscaling policy returns ({DeploymentID: num_replicas}, "
                    f"{{DeploymentID: state}}); got {type(decisions).__name__}"
                )
            unknown = [k for k in decisions if k not in ctxs]
            if unknown:
                raise ValueError(f"the policy returned decisions for unknown deployments {unknown}")
            bad = {k: v for k, v in decisions.items() if not _is_count(v)}
            if bad:
                raise ValueError(f"the policy returned these as replica counts: {bad}")
            asked.update(decisions)
            return decisions, states

        started = time.perf_counter()
        try:
            cached = self._app_policies.get(app.name)
            if cached is None or cached[0] is not app.spec:
                cached = (app.spec, _load(AutoscalingPolicy(**spec), app.spec.sys_path))
                self._app_policies[app.name] = cached
            raw = cached[1]
            decisions, states = policies.with_app_defaults(checked)(contexts)
        except Exception as exc:
            for dep_id in contexts:
                self._policy_failed(self._scaling[dep_id], dep_id, name, exc)
            return None
        elapsed = (time.perf_counter() - started) * 1000
        answers: dict[DeploymentID, _Answer | dict[str, Any]] = {}
        for dep_id in contexts:
            self._scaling[dep_id].policy_time_ms = elapsed
            self._scaling[dep_id].policy_scope = "application"
            state = dict(states.get(dep_id) or {})
            if dep_id in decisions:
                answers[dep_id] = _Answer(decisions[dep_id], state, name, asked[dep_id])
            else:
                answers[dep_id] = state
        return answers

    def _policy_failed(
        self, scaling: _Scaling, dep_id: DeploymentID, name: str, exc: BaseException
    ) -> None:
        message = (
            f"Autoscaling policy {name} failed ({type(exc).__name__}: {exc}); "
            "the default policy decided instead."
        )
        if not scaling.errors or scaling.errors[-1] != message:  # once per distinct failure
            logger.warning("deployment %s: %s", dep_id, message, exc_info=exc)
            scaling.errors.append(message)

    # -------------------------------------------------------------- bookkeeping
    def _record(self, scaling: _Scaling, prev: int, curr: int, reason: str, policy: str) -> None:
        now = self.wall_clock()
        if curr > prev:
            scaling.last_scale_up_time = now
            scaling.upscales += 1
        else:
            scaling.last_scale_down_time = now
            scaling.downscales += 1
        scaling.decisions.append(ScalingDecision(now, reason, prev, curr, policy))

    @staticmethod
    def _reason(ctx: AutoscalingContext, desired: int, bounded: int, policy: str) -> str:
        config = ctx.config
        if ctx.current_num_replicas == 0 and bounded > 0 and ctx.total_num_requests > 0:
            return "requests are waiting and no replica is running (scale from zero)"
        direction = "up" if bounded > ctx.target_num_replicas else "down"
        why = (
            f"{ctx.total_num_requests:.2f} ongoing requests ({config.aggregation_function} over "
            f"{config.look_back_period_s:g} s) for a target of "
            f"{config.get_target_ongoing_requests():g} per replica"
        )
        if policy != DEFAULT_AUTOSCALING_POLICY:
            why = f"policy {policy} asked for {desired}"
        if bounded != desired:
            why += (
                f", bounded by min_replicas={config.min_replicas} / "
                f"max_replicas={config.max_replicas}"
            )
        return f"scale {direction} from {ctx.target_num_replicas} to {bounded}: {why}"

    def forget(self, dep_id: DeploymentID) -> None:
        self._scaling.pop(dep_id, None)
        self.demand.forget(dep_id.key)

    def summary(self, dep: DeploymentState) -> dict[str, Any] | None:
        """Counts, bounds, demand and the last decision (None if not autoscaled): what
        ``serve.status()`` and ``schooner status`` show."""
        config = dep.spec.config.autoscaling_config
        if config is None:
            return None
        scaling = self._scaling.get(dep.id)
        last = scaling.decisions[-1].as_dict() if scaling and scaling.decisions else None
        return {
            "current_num_replicas": sum(
                1 for r in dep.current() if r.state == ReplicaState.RUNNING
            ),
            "target_num_replicas": dep.target_num_replicas,
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.get_target_ongoing_requests(),
            "total_num_requests": round(scaling.total_num_requests, 3) if scaling else 0.0,
            "ongoing_requests_now": self.demand.current(dep.id.key),
            "last_decision": last,
        }

    def detail(self, dep: DeploymentState) -> dict[str, Any] | None:
        """Ray's ``autoscaling_detail`` for the admin API (None if not autoscaled)."""
        summary = self.summary(dep)
        if summary is None:
            return None
        scaling = self._scaling.get(dep.id)
        if dep.target_num_replicas > summary["current_num_replicas"]:
            status = "UPSCALING"
        elif dep.target_num_replicas < len(dep.current()):
            status = "DOWNSCALING"
        else:
            status = "STABLE"
        metrics = {k: v for k, v in summary.items() if k != "last_decision"}
        return {
            "scaling_status": status,
            "decisions": [d.as_dict() for d in scaling.decisions] if scaling else [],
            "metrics": metrics,
            "metrics_health": "healthy",
            "errors": list(scaling.errors) if scaling else [],
        }

    def series(self, dep: DeploymentState) -> _Scaling | None:
        """The last tick's numbers for ``dep`` (for metrics)."""
        return self._scaling.get(dep.id)


def _is_count(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _load(policy: AutoscalingPolicy, sys_path: list[str]) -> Callable[..., Any]:
    """The user's policy callable: the one that travelled with the config, else imported
    from ``policy_function``; a class is instantiated once with ``policy_kwargs``."""
    path = str(policy.policy_function)
    raw: Any
    if policy._callable is not None:
        raw = policy._callable
    elif path == DEFAULT_AUTOSCALING_POLICY:
        raw = policies.default_autoscaling_policy
    else:
        raw = _import(path, sys_path)
        logger.info("loaded autoscaling policy %s", path)
    if inspect.isclass(raw):
        raw = raw(**policy.policy_kwargs)
    if not callable(raw):
        raise TypeError(f"autoscaling policy {path!r} is not callable")
    loaded: Callable[..., Any] = raw
    return loaded


def _import(path: str, sys_path: list[str]) -> Any:
    """Import ``module:attr`` (or ``module.attr``), the application's ``sys_path`` entries
    first. A top-level module found there is loaded afresh (each deploy sees its current
    code, and two applications' modules of one name do not mix); a module inside a
    package is imported normally."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    with _extra_path(sys_path):
        found = None
        if "." not in module_name:
            entries = [p for p in sys_path if p]
            found = importlib.machinery.PathFinder.find_spec(module_name, entries or None)
        if found is not None and found.loader is not None:
            obj: Any = importlib.util.module_from_spec(found)
            previous = sys.modules.get(module_name)
            sys.modules[module_name] = obj  # while it runs (dataclasses look it up)
            try:
                found.loader.exec_module(obj)
            finally:
                if previous is None:
                    sys.modules.pop(module_name, None)
                else:
                    sys.modules[module_name] = previous
        else:
            obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def _extra_path(entries: list[str]) -> Iterator[None]:
    added = [p for p in entries if p and p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)
