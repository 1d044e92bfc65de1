"""Autoscaling policies: Ray Serve's default one, and the rules applied to every policy.

A *deployment policy* is a function ``policy(ctx) -> (num_replicas, state)``:
it gets an :class:`AutoscalingContext` (the deployment's replica counts, the
ongoing requests seen over the look-back window, its config, the state it
returned last time) and returns the replica count it wants and its new state.
An *application policy* gets ``{DeploymentID: AutoscalingContext}`` and
returns ``({DeploymentID: num_replicas}, {DeploymentID: state})``.

Whatever a policy returns, the controller then applies the deployment's
``upscaling_factor`` / ``downscaling_factor``, its ``upscale_delay_s`` /
``downscale_delay_s`` / ``downscale_to_zero_delay_s`` and its
``min_replicas`` / ``max_replicas`` bounds (:func:`with_defaults`), as Ray
Serve 2.60 does. A deployment at zero replicas with requests waiting is scaled
up at once, without a delay (the cold-start path).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schooner.config import AutoscalingConfig
    from schooner.rpc.messages import DeploymentID

__all__ = [
    "AutoscalingContext",
    "apply_delays",
    "apply_scaling_factors",
    "default_autoscaling_policy",
    "replica_queue_length_autoscaling_policy",
    "with_app_defaults",
    "with_defaults",
]

#: Keys of the policy state the delay rules keep (Ray's names; user keys live beside them).
DECISION_COUNTER_KEY = "__decision_counters"
DECISION_TIMESTAMP_KEY = "__decision_timestamp"
_INTERNAL_KEYS = (DECISION_COUNTER_KEY, DECISION_TIMESTAMP_KEY)
#: Float slack when comparing elapsed time with a delay.
_EPS_S = 1e-6

PolicyResult = tuple[float, dict[str, Any]]
DeploymentPolicy = Callable[["AutoscalingContext"], PolicyResult]
AppPolicy = Callable[
    [dict["DeploymentID", "AutoscalingContext"]],
    tuple[dict["DeploymentID", float], dict["DeploymentID", dict[str, Any]] | None],
]


def _lazy(value: float | Callable[[], float]) -> float:
    return float(value() if callable(value) else value)


class AutoscalingContext:
    """What a policy knows about one deployment when it decides (Ray Serve's fields).

    ``total_num_requests`` (ongoing plus queued requests, all replicas and
    callers together) and ``total_queued_requests`` are aggregated over
    ``look_back_period_s`` with the deployment's ``aggregation_function``; they
    are computed when first read.
    """

    def __init__(
        self,
        *,
        deployment_id: DeploymentID,
        deployment_name: str,
        app_name: str | None,
        current_num_replicas: int,
        target_num_replicas: int,
        running_replicas: list[Any],
        total_num_requests: float | Callable[[], float],
        total_queued_requests: float | Callable[[], float] = 0.0,
        aggregated_metrics: dict[str, dict[Any, float]] | None = None,
        raw_metrics: dict[str, dict[Any, Any]] | None = None,
        capacity_adjusted_min_replicas: int,
        capacity_adjusted_max_replicas: int,
        policy_state: dict[str, Any],
        last_scale_up_time: float | None,
        last_scale_down_time: float | None,
        current_time: float,
        config: AutoscalingConfig,
    ) -> None:
        self.deployment_id = deployment_id
        self.deployment_name = deployment_name
        self.app_name = app_name
        #: Running replicas of the deployment's current version.
        self.current_num_replicas = current_num_replicas
        #: The replica count the controller is working towards now.
        self.target_num_replicas = target_num_replicas
        self.running_replicas = running_replicas
        self._total_num_requests = total_num_requests
        self._total_queued_requests = total_queued_requests
        self.aggregated_metrics = aggregated_metrics if aggregated_metrics is not None else {}
        self.raw_metrics = raw_metrics if raw_metrics is not None else {}
        self.capacity_adjusted_min_replicas = capacity_adjusted_min_replicas
        self.capacity_adjusted_max_replicas = capacity_adjusted_max_replicas
        self.policy_state = policy_state
        self.last_scale_up_time = last_scale_up_time
        self.last_scale_down_time = last_scale_down_time
        self.current_time = current_time
        self.config = config

    @functools.cached_property
    def total_num_requests(self) -> float:
        return _lazy(self._total_num_requests)

    @functools.cached_property
    def total_queued_requests(self) -> float:
        return _lazy(self._total_queued_requests)

    @property
    def total_running_requests(self) -> float:
        return max(0.0, self.total_num_requests - self.total_queued_requests)


# ---------------------------------------------------------------------------
# The default policy
# ---------------------------------------------------------------------------


def _cold_start(ctx: AutoscalingContext) -> int | None:
    """At zero replicas with requests waiting: how many to start right away (else None)."""
    if ctx.current_num_replicas == 0 and ctx.total_num_requests > 0:
        return max(math.ceil(ctx.config.get_upscaling_factor()), ctx.target_num_replicas)
    return None


def replica_queue_length_autoscaling_policy(ctx: AutoscalingContext) -> PolicyResult:
    """Keep ``target_ongoing_requests`` requests per replica: the replica count that would
    carry the ongoing (and queued) requests seen over the look-back window at that load."""
    cold = _cold_start(ctx)
    if cold is not None:
        return cold, ctx.policy_state
    running = ctx.current_num_replicas
    if running == 0:
        return ctx.target_num_replicas, {}
    per_replica = ctx.config.get_target_ongoing_requests()
    return ctx.total_num_requests / per_replica, {}


default_autoscaling_policy = replica_queue_length_autoscaling_policy


# ---------------------------------------------------------------------------
# Rules applied to every policy's answer
# ---------------------------------------------------------------------------


def apply_scaling_factors(desired: float, current: int, config: AutoscalingConfig) -> int:
    """Move only ``upscaling_factor`` (or ``downscaling_factor``) of the way from the
    current count to ``desired``; a downscale that would round to no change takes one."""
    if current == 0:
        return math.ceil(desired)  # nothing to damp against
    delta = desired - current
    factor = config.get_upscaling_factor() if delta > 0 else config.get_downscaling_factor()
    scaled = math.ceil(current + factor * delta)
    if math.ceil(desired) < current and scaled == current:
        scaled -= 1
    return scaled


def apply_delays(
    desired: int,
    target: int,
    config: AutoscalingConfig,
    state: dict[str, Any],
    now: float,
) -> tuple[int, dict[str, Any]]:
    """Change ``target`` to ``desired`` only once the policy has wanted to move in that
    direction without a break for ``upscale_delay_s`` (or ``downscale_delay_s``; from one
    replica to zero, ``downscale_to_zero_delay_s`` when set). Returns (target, state)."""
    counter = int(state.get(DECISION_COUNTER_KEY, 0))
    since = state.get(DECISION_TIMESTAMP_KEY)
    decided = target
    if desired > target:
        if counter < 0:
            counter, since = 0, None
        counter += 1
        since = now if since is None else since
        if now - since + _EPS_S >= config.upscale_delay_s:
            counter, since, decided = 0, None, desired
    elif desired < target:
        if counter > 0:
            counter, since = 0, None
        counter -= 1
        if target == 1:  # only a deployment at one replica goes to zero
            delay = config.downscale_to_zero_delay_s
            delay = config.downscale_delay_s if delay is None else delay
        else:
            delay = config.downscale_delay_s
            desired = max(1, desired)
        since = now if since is None else since
        if now - since + _EPS_S >= delay:
            counter, since, decided = 0, None, desired
    else:
        counter, since = 0, None
    state[DECISION_COUNTER_KEY] = counter
    state[DECISION_TIMESTAMP_KEY] = since
    return decided, state


def _internal(state: Mapping[str, Any]) -> dict[str, Any]:
    return {key: state.get(key) for key in _INTERNAL_KEYS if key in state}


def _finish(
    desired: float, ctx: AutoscalingContext, previous: Mapping[str, Any], user: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """Factors, then delays, on a policy's raw answer; the user's state keeps its keys."""
    scaled = apply_scaling_factors(desired, ctx.current_num_replicas, ctx.config)
    if ctx.current_num_replicas == 0 and ctx.target_num_replicas == 0 and scaled > 0:
        return scaled, {**user, **_internal(previous)}  # waking from zero: no delay
    decided, internal = apply_delays(
        max(0, scaled), ctx.target_num_replicas, ctx.config, _internal(previous), ctx.current_time
    )
    return decided, {**user, **internal}


Decided = tuple[int, dict[str, Any]]


def with_defaults(policy: DeploymentPolicy) -> Callable[[AutoscalingContext], Decided]:
    """``policy`` with the cold-start path, scaling factors and delays applied."""

    @functools.wraps(policy)
    def wrapped(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        cold = _cold_start(ctx)
        if cold is not None:
            return cold, ctx.policy_state
        previous = dict(ctx.policy_state)
        desired, user_state = policy(ctx)
        return _finish(desired, ctx, previous, dict(user_state or {}))

    return wrapped


def with_app_defaults(
    policy: AppPolicy,
) -> Callable[
    [dict[DeploymentID, AutoscalingContext]],
    tuple[dict[DeploymentID, int], dict[DeploymentID, dict[str, Any]]],
]:
    """An application policy with the same rules applied to each deployment's answer.
    Deployments it gives no answer for keep their target."""

    @functools.wraps(policy)
    def wrapped(
        contexts: dict[DeploymentID, AutoscalingContext],
    ) -> tuple[dict[DeploymentID, int], dict[DeploymentID, dict[str, Any]]]:
        previous = {dep: dict(ctx.policy_state) for dep, ctx in contexts.items()}
        desired, user_states = policy(contexts)
        user_states = user_states or {}
        decisions: dict[DeploymentID, int] = {}
        states: dict[DeploymentID, dict[str, Any]] = {}
        for dep, ctx in contexts.items():
            user = dict(user_states.get(dep) or {})
            if dep not in desired:
                states[dep] = {**user, **_internal(previous[dep])}
                continue
            cold = _cold_start(ctx)
            if cold is not None:
                decisions[dep] = cold
                states[dep] = {**user, **_internal(previous[dep])}
                continue
            decisions[dep], states[dep] = _finish(desired[dep], ctx, previous[dep], user)
        return decisions, states

    return wrapped
