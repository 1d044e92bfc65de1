"""Ray Serve's default autoscaling policy and the rules every policy's answer goes through
(scaling factors, delays, the cold start), as pure functions with a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from schooner.autoscaling_policy import (
    AutoscalingContext,
    apply_delays,
    apply_scaling_factors,
    default_autoscaling_policy,
    with_app_defaults,
    with_defaults,
)
from schooner.config import AutoscalingConfig, DeploymentConfig
from schooner.rpc.messages import DeploymentID

DEP = DeploymentID("Model", "app")


def config(**fields: Any) -> AutoscalingConfig:
    base: dict[str, Any] = {"min_replicas": 0, "max_replicas": 10, "target_ongoing_requests": 2}
    return AutoscalingConfig(**{**base, **fields})


def ctx(
    cfg: AutoscalingConfig,
    *,
    current: int,
    target: int | None = None,
    total: float,
    now: float = 0.0,
    state: dict[str, Any] | None = None,
) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=DEP,
        deployment_name=DEP.name,
        app_name=DEP.app_name,
        current_num_replicas=current,
        target_num_replicas=current if target is None else target,
        running_replicas=[f"r{i}" for i in range(current)],
        total_num_requests=total,
        capacity_adjusted_min_replicas=cfg.min_replicas,
        capacity_adjusted_max_replicas=cfg.max_replicas,
        policy_state=dict(state or {}),
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=cfg,
    )


# -- the default policy --------------------------------------------------------------------


def test_default_policy_wants_total_requests_over_the_target_per_replica() -> None:
    cfg = config(target_ongoing_requests=2)
    wanted, _ = default_autoscaling_policy(ctx(cfg, current=2, total=12))
    assert wanted == pytest.approx(6)
    wanted, _ = default_autoscaling_policy(ctx(cfg, current=4, total=2))
    assert wanted == pytest.approx(1)


def test_default_policy_at_zero_replicas_with_demand_wants_one() -> None:
    cfg = config()
    wanted, _ = default_autoscaling_policy(ctx(cfg, current=0, target=0, total=0.01))
    assert wanted == 1
    wanted, _ = default_autoscaling_policy(ctx(cfg, current=0, target=0, total=0))
    assert wanted == 0


def test_num_replicas_auto_means_ray_defaults() -> None:
    auto = DeploymentConfig.from_options(num_replicas="auto").autoscaling_config
    assert auto is not None
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 100, 2)
    assert (auto.upscale_delay_s, auto.downscale_delay_s, auto.look_back_period_s) == (30, 600, 30)


# -- factors -------------------------------------------------------------------------------


def test_upscaling_factor_moves_part_of_the_way() -> None:
    cfg = config(upscaling_factor=0.5)
    assert apply_scaling_factors(10, 2, cfg) == 6  # 2 + 0.5 * 8
    assert apply_scaling_factors(10, 2, config()) == 10


def test_downscaling_factor_always_takes_at_least_one_step() -> None:
    cfg = config(downscaling_factor=0.1)
    assert apply_scaling_factors(8, 10, cfg) == 9  # ceil(10 - 0.2) would stay at 10
    assert apply_scaling_factors(0, 4, config(downscaling_factor=0.5)) == 2


def test_deprecated_smoothing_factors_still_apply() -> None:
    assert apply_scaling_factors(10, 2, config(smoothing_factor=0.25)) == 4
    assert apply_scaling_factors(10, 2, config(upscale_smoothing_factor=0.5)) == 6
    assert apply_scaling_factors(2, 10, config(downscale_smoothing_factor=0.5)) == 6


# -- delays --------------------------------------------------------------------------------


def test_upscale_waits_for_the_delay_without_a_break() -> None:
    cfg = config(upscale_delay_s=3)
    state: dict[str, Any] = {}
    assert apply_delays(5, 2, cfg, state, now=0.0)[0] == 2
    assert apply_delays(5, 2, cfg, state, now=2.9)[0] == 2
    assert apply_delays(5, 2, cfg, state, now=3.0)[0] == 5


def test_a_change_of_direction_restarts_the_delay() -> None:
    cfg = config(upscale_delay_s=3, downscale_delay_s=3)
    state: dict[str, Any] = {}
    apply_delays(5, 2, cfg, state, now=0.0)
    apply_delays(1, 2, cfg, state, now=2.0)  # wants down now
    assert apply_delays(5, 2, cfg, state, now=4.0)[0] == 2  # up again: the clock restarted
    assert apply_delays(5, 2, cfg, state, now=7.0)[0] == 5


def test_no_change_resets_the_delay() -> None:
    cfg = config(upscale_delay_s=3)
    state: dict[str, Any] = {}
    apply_delays(5, 2, cfg, state, now=0.0)
    apply_delays(2, 2, cfg, state, now=2.0)
    assert apply_delays(5, 2, cfg, state, now=3.5)[0] == 2


def test_downscale_never_reaches_zero_from_more_than_one() -> None:
    cfg = config(downscale_delay_s=0)
    assert apply_delays(0, 4, cfg, {}, now=0.0)[0] == 1


def test_to_zero_uses_its_own_delay_when_set() -> None:
    cfg = config(downscale_delay_s=100, downscale_to_zero_delay_s=5)
    state: dict[str, Any] = {}
    assert apply_delays(0, 1, cfg, state, now=0.0)[0] == 1
    assert apply_delays(0, 1, cfg, state, now=5.0)[0] == 0
    without = config(downscale_delay_s=7)
    state = {}
    apply_delays(0, 1, without, state, now=0.0)
    assert apply_delays(0, 1, without, state, now=6.0)[0] == 1
    assert apply_delays(0, 1, without, state, now=7.0)[0] == 0


# -- the wrapped policy --------------------------------------------------------------------


def test_wrapped_default_policy_scales_up_after_the_delay() -> None:
    policy = with_defaults(default_autoscaling_policy)
    cfg = config(upscale_delay_s=2)
    n, state = policy(ctx(cfg, current=1, total=8, now=0.0))
    assert n == 1
    n, state = policy(ctx(cfg, current=1, total=8, now=2.0, state=state))
    assert n == 4


def test_wrapped_policy_wakes_from_zero_without_any_delay() -> None:
    policy = with_defaults(default_autoscaling_policy)
    cfg = config(upscale_delay_s=60, upscaling_factor=2)
    n, _ = policy(ctx(cfg, current=0, target=0, total=1, now=0.0))
    assert n == 2  # ceil(1 * upscaling_factor)


def test_custom_policy_state_is_kept_beside_the_delay_state() -> None:
    seen: list[dict[str, Any]] = []

    def counting(c: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        seen.append(dict(c.policy_state))
        return 3, {"calls": c.policy_state.get("calls", 0) + 1}

    policy = with_defaults(counting)
    cfg = config(upscale_delay_s=1)
    n, state = policy(ctx(cfg, current=1, total=0, now=0.0))
    n, state = policy(ctx(cfg, current=1, total=0, now=1.0, state=state))
    assert n == 3
    assert state["calls"] == 2
    assert seen[1]["calls"] == 1


def test_app_policy_answers_per_deployment_with_the_same_rules() -> None:
    other = DeploymentID("Other", "app")

    def app_policy(
        contexts: dict[DeploymentID, AutoscalingContext],
    ) -> tuple[dict[DeploymentID, float], dict[DeploymentID, dict[str, Any]]]:
        return {DEP: 4, other: 0}, {DEP: {"mine": True}}

    policy = with_app_defaults(app_policy)
    cfg = config(upscale_delay_s=0, downscale_delay_s=0)
    c1 = ctx(cfg, current=2, total=0)
    c2 = ctx(cfg, current=3, total=0)
    c2.deployment_id = other
    decisions, states = policy({DEP: c1, other: c2})
    assert decisions == {DEP: 4, other: 1}  # never below one except from one
    assert states[DEP]["mine"] is True
