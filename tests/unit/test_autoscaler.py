"""The controller's autoscaling, driven tick by tick with a fake clock and injected demand
(what callers would report). No processes, no sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from controller_fakes import Harness, InstantSleepAsyncio, app_spec, dep_spec, run

from schooner.autoscaling_policy import AutoscalingContext
from schooner.controller import controller as controller_module
from schooner.controller.details import deployment_details, serve_status
from schooner.exceptions import ServeConfigError
from schooner.rpc.messages import DeploymentID
from schooner.schema import DeploymentStatus, DeploymentStatusTrigger, ReplicaState

KEY = DeploymentID("Model", "app").key


@pytest.fixture(autouse=True)
def instant_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "asyncio", InstantSleepAsyncio())


def auto(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 2,
        "downscale_delay_s": 5,
        "look_back_period_s": 1,
    }
    return {**base, **fields}


def demand(h: Harness, value: float, source: str = "proxy") -> None:
    h.ctl.demand.record(KEY, source, [(0.0, value)])


async def tick_ready(h: Harness) -> None:
    h.ctl.tick()
    await h.all_ready()
    h.ctl.tick()


def running(h: Harness) -> int:
    return len(h.ids(state=ReplicaState.RUNNING))


def test_demand_grows_the_deployment_after_the_upscale_delay(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", autoscaling_config=auto())))
        await tick_ready(h)
        assert running(h) == 1
        demand(h, 8.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 1  # wants 4, waits for the delay
        h.clock.now += 2
        demand(h, 8.0)
        h.ctl.tick()
        dep = h.dep()
        assert dep.target_num_replicas == 4
        assert dep.status == DeploymentStatus.UPSCALING
        assert dep.status_trigger == DeploymentStatusTrigger.AUTOSCALING
        assert "scale up from 1 to 4" in dep.message
        await h.all_ready()
        h.ctl.tick()
        assert running(h) == 4
        assert h.dep().status == DeploymentStatus.HEALTHY
        assert h.dep().status_trigger == DeploymentStatusTrigger.UPSCALE_COMPLETED
        scaling = deployment_details(h.dep(), h.ctl)["autoscaling_detail"]
        assert scaling["scaling_status"] == "STABLE"
        (decision,) = scaling["decisions"]
        assert (decision["prev_num_replicas"], decision["curr_num_replicas"]) == (1, 4)
        assert scaling["metrics"]["min_replicas"] == 1
        assert scaling["metrics"]["max_replicas"] == 8

    run(tmp_path, body)


def test_max_replicas_bounds_the_growth(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0)))
        )
        await tick_ready(h)
        demand(h, 100.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 8

    run(tmp_path, body)


def test_idle_deployment_shrinks_to_min_after_the_downscale_delay(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.launcher.exit_on_terminate = True
        spec = dep_spec("Model", autoscaling_config=auto(initial_replicas=4))
        h.ctl.deploy_app(app_spec("app", "/", spec))
        await tick_ready(h)
        assert running(h) == 4
        demand(h, 0.0)
        h.ctl.tick()
        h.clock.now += 4.9
        demand(h, 0.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 4
        h.clock.now += 0.1
        demand(h, 0.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 1
        assert len(h.ids(state=ReplicaState.STOPPING)) == 3
        # Routers stop sending to the stopping replicas at once.
        assert len(h.replica_set().replicas) == 1
        assert h.replica_set().autoscaling

    run(tmp_path, body)


def test_scale_to_zero_and_wake_at_once_on_demand(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = dep_spec(
            "Model", autoscaling_config=auto(min_replicas=0, downscale_to_zero_delay_s=3)
        )
        h.ctl.deploy_app(app_spec("app", "/", spec))
        h.ctl.tick()
        dep = h.dep()
        assert dep.target_num_replicas == 0  # min_replicas=0 and no initial_replicas: start at 0
        assert dep.status == DeploymentStatus.HEALTHY
        assert "zero" in dep.message
        assert h.ctl.apps["app"].status.value == "RUNNING"
        # A request waits: the deployment wakes without the upscale delay.
        demand(h, 1.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 1
        assert len(h.launcher.processes) == 1
        await h.all_ready()
        h.ctl.tick()
        assert running(h) == 1
        # Idle again (a whole look-back window): back to zero after downscale_to_zero_delay_s.
        h.clock.now += 2
        demand(h, 0.0)
        h.clock.now += 1
        h.ctl.tick()
        h.clock.now += 2.9
        demand(h, 0.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 1
        h.clock.now += 0.1
        h.ctl.tick()
        assert h.dep().target_num_replicas == 0

    run(tmp_path, body)


def test_a_rolling_update_keeps_the_autoscaled_count(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0)))
        )
        await tick_ready(h)
        demand(h, 6.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 3
        h.ctl.deploy_app(
            app_spec(
                "app", "/", dep_spec("Model", "v2", autoscaling_config=auto(upscale_delay_s=0))
            )
        )
        assert h.dep().target_num_replicas == 3
        # A new autoscaling config with initial_replicas starts from it (as in Ray).
        h.ctl.deploy_app(
            app_spec(
                "app", "/", dep_spec("Model", "v2", autoscaling_config=auto(initial_replicas=2))
            )
        )
        assert h.dep().target_num_replicas == 2

    run(tmp_path, body)


def test_manual_num_replicas_turns_autoscaling_off(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0)))
        )
        await tick_ready(h)
        h.ctl.deploy_app(app_spec("app", "/", dep_spec("Model", num_replicas=2)))
        demand(h, 50.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 2
        assert not h.replica_set().autoscaling

    run(tmp_path, body)


# -- custom policies ---------------------------------------------------------------------------


def fixed_five(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    return 5, {"n": ctx.policy_state.get("n", 0) + 1, "name": ctx.deployment_name}


def broken(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    raise RuntimeError("policy bug")


def test_a_custom_policy_is_called_with_its_state_and_obeyed(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        policy = {"policy_function": f"{__name__}:fixed_five"}
        spec = dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0, policy=policy))
        h.ctl.deploy_app(app_spec("app", "/", spec))
        await tick_ready(h)
        assert h.dep().target_num_replicas == 5
        h.ctl.tick()
        state = h.ctl.autoscaler._scaling[h.dep().id].policy_state
        assert state["n"] >= 2  # its state came back to it
        assert state["name"] == "Model"

    run(tmp_path, body)


def test_a_policy_that_raises_falls_back_to_the_default(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        policy = {"policy_function": f"{__name__}:broken"}
        spec = dep_spec("Model", autoscaling_config=auto(upscale_delay_s=2, policy=policy))
        h.ctl.deploy_app(app_spec("app", "/", spec))
        await tick_ready(h)
        demand(h, 6.0)
        h.ctl.tick()
        h.clock.now += 2
        demand(h, 6.0)
        h.ctl.tick()
        # The default policy decided, its upscale delay counted across the failing ticks.
        assert h.dep().target_num_replicas == 3
        errors = deployment_details(h.dep(), h.ctl)["autoscaling_detail"]["errors"]
        assert "policy bug" in errors[-1]

    run(tmp_path, body)


def test_a_policy_that_cannot_be_imported_falls_back_to_the_default(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        policy = {"policy_function": "no_such_module_xyz:policy"}
        spec = dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0, policy=policy))
        h.ctl.deploy_app(app_spec("app", "/", spec))
        await tick_ready(h)
        demand(h, 4.0)
        h.ctl.tick()
        assert h.dep().target_num_replicas == 2
        assert h.dep().status != DeploymentStatus.DEPLOY_FAILED

    run(tmp_path, body)


def app_level(
    contexts: dict[DeploymentID, AutoscalingContext],
) -> tuple[dict[DeploymentID, int], dict[DeploymentID, dict[str, Any]]]:
    """Both deployments get as many replicas as the busier one needs."""
    need = max(int(c.total_num_requests) for c in contexts.values())
    return {dep: need for dep in contexts}, {}


def test_an_application_policy_decides_for_all_its_deployments(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = app_spec(
            "app",
            "/",
            dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0)),
            dep_spec("Other", autoscaling_config=auto(upscale_delay_s=0)),
        )
        spec.autoscaling_policy = {"policy_function": f"{__name__}:app_level", "policy_kwargs": {}}
        spec.sys_path = [str(Path(__file__).parent)]
        h.ctl.deploy_app(spec)
        await tick_ready(h)
        await h.all_ready("Other")
        demand(h, 3.0)
        h.ctl.tick()
        assert h.dep("Model").target_num_replicas == 3
        assert h.dep("Other").target_num_replicas == 3

    run(tmp_path, body)


def test_status_shows_the_scaling(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0)))
        )
        await tick_ready(h)
        demand(h, 4.0)
        h.ctl.tick()
        status = serve_status(h.ctl)["applications"]["app"]["deployments"]["Model"]
        assert status["status"] == "UPSCALING"
        assert status["status_trigger"] == "AUTOSCALING"
        assert "scale up from 1 to 2" in status["message"]

    run(tmp_path, body)


def test_a_scale_up_that_does_not_fit_waits_and_says_why(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = dep_spec(
            "Model",
            autoscaling_config=auto(upscale_delay_s=0),
            ray_actor_options={"num_gpus": 1},
        )
        h.ctl.deploy_app(app_spec("app", "/", spec))
        await tick_ready(h)
        demand(h, 8.0)
        h.ctl.tick()
        await h.all_ready()
        h.ctl.tick()
        dep = h.dep()
        assert dep.target_num_replicas == 4
        assert running(h) == 2  # two GPUs, one per replica
        assert dep.status == DeploymentStatus.UPSCALING
        assert "GPU" in dep.message
        assert h.ctl.apps["app"].status.value == "RUNNING"  # what runs keeps serving

    run(tmp_path, body, capacity={"CPU": 8, "GPU": 2})


def test_decisions_are_in_the_controller_metrics(tmp_path: Path) -> None:
    from schooner.controller.metrics import controller_series

    async def body(h: Harness) -> None:
        h.ctl.deploy_app(
            app_spec("app", "/", dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0)))
        )
        await tick_ready(h)
        demand(h, 6.0)
        h.ctl.tick()
        values = {(spec.name, labels): value for spec, labels, value in controller_series(h.ctl)}
        assert values[("ray_serve_autoscaling_target_replicas", ("Model", "app"))] == 3
        assert values[("ray_serve_autoscaling_total_requests", ("Model", "app"))] == 6
        assert values[("schooner_autoscaling_decisions", ("Model", "app", "up"))] == 1
        assert values[("schooner_autoscaling_decisions", ("Model", "app", "down"))] == 0

    run(tmp_path, body)


def test_a_custom_policy_waits_for_the_delay_while_the_first_replica_starts(
    tmp_path: Path,
) -> None:
    async def body(h: Harness) -> None:
        policy = {"policy_function": f"{__name__}:fixed_five"}
        spec = dep_spec("Model", autoscaling_config=auto(upscale_delay_s=2, policy=policy))
        h.ctl.deploy_app(app_spec("app", "/", spec))
        h.ctl.tick()
        h.ctl.tick()
        assert h.dep().target_num_replicas == 1  # no replica running yet, but not at zero
        await h.all_ready()
        h.clock.now += 2
        h.ctl.tick()
        assert h.dep().target_num_replicas == 5

    run(tmp_path, body)


def negative(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    return -3, {}


def test_a_negative_answer_is_a_failure_and_reported_once(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        policy = {"policy_function": f"{__name__}:negative"}
        spec = dep_spec("Model", autoscaling_config=auto(upscale_delay_s=0, policy=policy))
        h.ctl.deploy_app(app_spec("app", "/", spec))
        await tick_ready(h)
        demand(h, 4.0)
        for _ in range(5):
            h.ctl.tick()
        assert h.dep().target_num_replicas == 2  # the default policy decided
        errors = deployment_details(h.dep(), h.ctl)["autoscaling_detail"]["errors"]
        assert len(errors) == 1
        assert "-3" in errors[0]

    run(tmp_path, body)


def test_external_scaler_and_autoscaling_in_code_exclude_each_other(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        spec = app_spec("app", "/", dep_spec("Model", autoscaling_config=auto()))
        spec.external_scaler_enabled = True
        with pytest.raises(ServeConfigError, match="external_scaler_enabled"):
            h.ctl.deploy_app(spec)

    run(tmp_path, body)


def test_each_application_loads_its_own_policy_module_afresh(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        for name, count in (("a", 2), ("b", 3)):
            (tmp_path / name).mkdir()
            (tmp_path / name / "same_name_policy.py").write_text(
                f"def policy(ctx):\n    return {count}, {{}}\n"
            )

        def deploy(app: str, version: str = "v1") -> None:
            policy = {"policy_function": "same_name_policy:policy"}
            spec = app_spec(
                app,
                f"/{app}",
                dep_spec(
                    "Model", version, autoscaling_config=auto(upscale_delay_s=0, policy=policy)
                ),
            )
            spec.sys_path = [str(tmp_path / app)]
            h.ctl.deploy_app(spec)

        deploy("a")
        deploy("b")
        h.ctl.tick()
        await h.all_ready("Model", "a")
        await h.all_ready("Model", "b")
        h.ctl.tick()
        assert h.dep("Model", "a").target_num_replicas == 2
        assert h.dep("Model", "b").target_num_replicas == 3
        # The module changes and the application is redeployed: the new code decides.
        (tmp_path / "a" / "same_name_policy.py").write_text("def policy(ctx):\n    return 4, {}\n")
        deploy("a", "v2")
        h.ctl.tick()
        assert h.dep("Model", "a").target_num_replicas == 4

    run(tmp_path, body)
