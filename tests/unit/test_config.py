"""Deployment and instance options: Ray 2.x defaults, validation messages, merge, update cost."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import pytest

from schooner.config import (
    DEFAULT_AUTOSCALING_POLICY,
    DEFAULT_REQUEST_ROUTER,
    DEPLOYMENT_OPTION_NAMES,
    UPDATE_TYPES,
    AggregationFunction,
    AutoscalingConfig,
    AutoscalingPolicy,
    BackpressureConfig,
    ControllerOptions,
    DeploymentConfig,
    HTTPOptions,
    LoggingConfig,
    ProxyLocation,
    RequestRouterConfig,
    TracingConfig,
    changed_options,
    diff_update_type,
    gRPCOptions,
)
from schooner.exceptions import DeploymentOptionError


def option_error(**options: Any) -> str:
    with pytest.raises(DeploymentOptionError) as info:
        DeploymentConfig.from_options(**options)
    return str(info.value)


# -- defaults (Ray Serve 2.60) ------------------------------------------------


def test_deployment_defaults_match_ray() -> None:
    c = DeploymentConfig.from_options()
    assert c.num_replicas == 1
    assert c.max_ongoing_requests == 5
    assert c.max_queued_requests == -1
    assert c.user_config is None
    assert c.autoscaling_config is None
    assert c.graceful_shutdown_wait_loop_s == 2.0
    assert c.graceful_shutdown_timeout_s == 20.0
    assert c.health_check_period_s == 10.0
    assert c.health_check_timeout_s == 30.0
    assert c.ray_actor_options is None
    assert c.placement_group_bundles is None
    assert c.placement_group_strategy is None
    assert c.max_replicas_per_node is None
    assert c.logging_config is None
    assert c.max_constructor_retry_count == 20
    assert c.rolling_update_percentage == 0.2
    assert c.max_surge_percent == 0
    assert c.backpressure_config == BackpressureConfig(status_code=503, retry_after_s=None)
    assert c.request_router_config.request_router_class == DEFAULT_REQUEST_ROUTER
    assert c.model_fields_set == set()


def test_autoscaling_defaults_match_ray() -> None:
    a = AutoscalingConfig()
    assert (a.min_replicas, a.initial_replicas, a.max_replicas) == (1, None, 1)
    assert a.target_ongoing_requests == 2.0
    assert a.metrics_interval_s == 10.0
    assert a.look_back_period_s == 30.0
    assert a.smoothing_factor == 1.0
    assert a.upscale_smoothing_factor is None and a.downscale_smoothing_factor is None
    assert a.upscaling_factor is None and a.downscaling_factor is None
    assert a.upscale_delay_s == 30.0
    assert a.downscale_delay_s == 600.0
    assert a.downscale_to_zero_delay_s is None
    assert a.aggregation_function == "mean"
    assert a.policy.policy_function == DEFAULT_AUTOSCALING_POLICY
    assert a.policy.policy_kwargs == {}


def test_autoscaling_default_for_auto() -> None:
    a = AutoscalingConfig.default()
    assert (a.min_replicas, a.max_replicas, a.target_ongoing_requests) == (1, 100, 2.0)
    assert a.upscale_delay_s == 30.0 and a.downscale_delay_s == 600.0
    assert a.model_fields_set == {"min_replicas", "max_replicas", "target_ongoing_requests"}


def test_router_and_instance_defaults_match_ray() -> None:
    r = RequestRouterConfig()
    assert r.request_router_kwargs == {}
    assert (r.request_routing_stats_period_s, r.request_routing_stats_timeout_s) == (10.0, 30.0)
    assert (r.initial_backoff_s, r.backoff_multiplier, r.max_backoff_s) == (0.025, 2.0, 0.5)
    h = HTTPOptions()
    assert (h.host, h.port, h.root_path, h.request_timeout_s) == ("127.0.0.1", 8000, "", None)
    assert h.keep_alive_timeout_s == 90
    assert h.ssl_keyfile is h.ssl_certfile is h.ssl_keyfile_password is h.ssl_ca_certs is None
    g = gRPCOptions()
    assert (g.port, g.grpc_servicer_functions, g.request_timeout_s) == (9000, [], None)
    assert g.enable_reflection is True
    log = LoggingConfig()
    assert (log.encoding, log.log_level, log.logs_dir) == ("TEXT", "INFO", None)
    assert log.enable_access_log is True and log.additional_log_standard_attrs == []
    assert TracingConfig().enabled is False
    assert ControllerOptions().runtime_env is None


def test_option_names_are_the_fields() -> None:
    assert tuple(DeploymentConfig.model_fields) == DEPLOYMENT_OPTION_NAMES
    assert DEPLOYMENT_OPTION_NAMES[:3] == ("name", "num_replicas", "max_ongoing_requests")
    assert "version" not in DEPLOYMENT_OPTION_NAMES


# -- validation messages -------------------------------------------------------


def test_error_names_option_value_and_what_is_accepted() -> None:
    msg = option_error(max_ongoing_requests=0)
    assert msg == (
        "Invalid deployment option 'max_ongoing_requests': got 0; "
        "must be an integer greater than 0."
    )


@pytest.mark.parametrize(
    ("option", "value", "accepts"),
    [
        ("num_replicas", "two", '"auto"'),
        ("num_replicas", 0, "integer >= 1"),
        ("num_replicas", True, "integer >= 1"),
        ("max_queued_requests", 0, "-1 (no limit)"),
        ("max_queued_requests", -2, "-1 (no limit)"),
        ("graceful_shutdown_wait_loop_s", -1, ">= 0"),
        ("graceful_shutdown_timeout_s", "soon", ">= 0"),
        ("health_check_period_s", 0, "greater than 0"),
        ("health_check_timeout_s", -5, "greater than 0"),
        ("max_replicas_per_node", 0, "1 to 100"),
        ("max_replicas_per_node", 101, "1 to 100"),
        ("max_constructor_retry_count", 0, "greater than 0"),
        ("placement_group_strategy", "RANDOM", "STRICT_PACK"),
        ("name", "a#b", "without '#'"),
        ("name", "", "without '#'"),
        ("rolling_update_percentage", 0, "(0, 1]"),
        ("max_surge_percent", 101, "0 to 100"),
    ],
)
def test_each_bad_value_names_its_option(option: str, value: Any, accepts: str) -> None:
    msg = option_error(**{option: value})
    assert msg.startswith(f"Invalid deployment option '{option}': got {value!r}; must be ")
    assert accepts in msg


def test_unknown_option_suggests_a_name() -> None:
    msg = option_error(max_ongoin_requests=3)
    assert msg.startswith("Unknown deployment option 'max_ongoin_requests'.")
    assert "Did you mean 'max_ongoing_requests'?" in msg
    assert "Valid options: name, num_replicas," in msg


def test_removed_and_renamed_options() -> None:
    assert "has been removed" in option_error(version="v1")
    assert "renamed to 'max_ongoing_requests'" in option_error(max_concurrent_queries=3)
    assert ".bind()" in option_error(init_args=(1,))


def test_user_config_must_be_json() -> None:
    msg = option_error(user_config={"model": object()})
    assert msg.startswith("Invalid deployment option 'user_config':")
    assert "JSON-serializable" in msg
    c = DeploymentConfig.from_options(user_config={"threshold": 0.5, "labels": ["a"]})
    assert c.user_config == {"threshold": 0.5, "labels": ["a"]}
    assert DeploymentConfig.from_options(user_config=[1, 2]).user_config == [1, 2]


def test_nested_errors_show_their_path() -> None:
    msg = option_error(autoscaling_config={"min_replicas": -1})
    assert msg.startswith("Invalid deployment option 'autoscaling_config.min_replicas': got -1;")
    msg = option_error(logging_config={"log_levl": "DEBUG"})
    assert "'logging_config.log_levl'" in msg and "not a known field" in msg
    assert "must be a valid dictionary" in option_error(autoscaling_config="fast")


def test_ray_actor_options_checked() -> None:
    msg = option_error(ray_actor_options={"num_cpu": 1})
    assert "'num_cpu' is not allowed" in msg and "Did you mean 'num_cpus'?" in msg
    assert "num_cpus must be greater than or equal to 0" in option_error(
        ray_actor_options={"num_cpus": -1}
    )
    assert "instead of 'CPU'" in option_error(ray_actor_options={"resources": {"CPU": 2}})
    assert "not allowed" in option_error(ray_actor_options={"object_store_memory": 1})
    ok = DeploymentConfig.from_options(
        ray_actor_options={"num_cpus": 0.5, "num_gpus": 1, "resources": {"tpu": 2}}
    )
    assert ok.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1.0, "resources": {"tpu": 2.0}}


def test_combinations() -> None:
    assert "num_replicas cannot be a number when autoscaling_config is set" in option_error(
        num_replicas=2, autoscaling_config={"max_replicas": 4}
    )
    assert "requires placement_group_bundles" in option_error(placement_group_strategy="PACK")
    assert "requires placement_group_bundles" in option_error(
        placement_group_bundle_label_selector=[{"zone": "a"}]
    )
    assert "cannot be used with placement_group_bundles" in option_error(
        placement_group_bundles=[{"CPU": 1}], max_replicas_per_node=2
    )
    assert "1 selector or one per bundle" in option_error(
        placement_group_bundles=[{"CPU": 1}, {"GPU": 1}],
        placement_group_bundle_label_selector=[{"a": "b"}] * 3,
    )
    assert "cannot be used with gang_scheduling_config" in option_error(
        gang_scheduling_config={"gang_size": 2}, max_replicas_per_node=1
    )


def test_gang_scheduling_config_is_validated_as_in_ray() -> None:
    from schooner.config import GangPlacementStrategy, GangSchedulingConfig

    config = DeploymentConfig.from_options(
        num_replicas=4,
        gang_scheduling_config=GangSchedulingConfig(
            gang_size=2, gang_placement_strategy=GangPlacementStrategy.SPREAD
        ),
    )
    gang = config.gang_scheduling_config
    assert gang is not None
    assert (gang.gang_size, gang.gang_placement_strategy, gang.max_retries) == (2, "SPREAD", 3)
    # A plain dict (as in a config file) is the same thing.
    as_dict = DeploymentConfig.from_options(num_replicas=4, gang_scheduling_config={"gang_size": 2})
    assert as_dict.gang_scheduling_config == GangSchedulingConfig(gang_size=2)
    assert "must be a multiple of gang_size" in option_error(
        num_replicas=3, gang_scheduling_config={"gang_size": 2}
    )
    assert "gang_scheduling_config" in option_error(gang_scheduling_config={"gang_size": 0})


def test_replica_must_fit_first_bundle() -> None:
    # As in Ray, the replica needs 1 CPU unless num_cpus says otherwise.
    assert "needs CPU=1" in option_error(placement_group_bundles=[{"GPU": 1}])
    ok = DeploymentConfig.from_options(
        placement_group_bundles=[{"GPU": 1}, {"CPU": 4}],
        placement_group_strategy="SPREAD",
        ray_actor_options={"num_cpus": 0, "num_gpus": 1},
    )
    assert ok.placement_group_strategy == "SPREAD"
    assert "bundle" in option_error(placement_group_bundles=[])
    assert "zero" in option_error(placement_group_bundles=[{"CPU": 0}])


def test_autoscaling_bounds() -> None:
    assert "max_replicas (2) must be greater than or equal to min_replicas (3)" in option_error(
        autoscaling_config={"min_replicas": 3, "max_replicas": 2}
    )
    assert "initial_replicas (9)" in option_error(
        autoscaling_config={"min_replicas": 1, "max_replicas": 5, "initial_replicas": 9}
    )
    a = AutoscalingConfig(min_replicas=0, max_replicas=3, initial_replicas=0)
    assert a.initial_num_replicas() == 0
    assert AutoscalingConfig(aggregation_function="MAX").aggregation_function is (
        AggregationFunction.MAX
    )


def test_autoscaling_unknown_key_warns_and_is_ignored() -> None:
    with pytest.warns(UserWarning, match="Did you mean 'max_replicas'"):
        a = AutoscalingConfig.model_validate({"max_replica": 4})
    assert a.max_replicas == 1


# -- num_replicas="auto" and user-set tracking --------------------------------


def test_auto_uses_ray_defaults() -> None:
    c = DeploymentConfig.from_options(num_replicas="auto")
    assert c.num_replicas == "auto"
    assert c.autoscaling_config == AutoscalingConfig.default()
    assert c.autoscaling_enabled and c.initial_num_replicas() == 1
    assert c.max_ongoing_requests == 5
    assert c.model_fields_set == {"num_replicas"}


def test_auto_is_overlaid_by_user_autoscaling_fields() -> None:
    c = DeploymentConfig.from_options(
        num_replicas="auto", autoscaling_config={"max_replicas": 7, "upscale_delay_s": 1}
    )
    a = c.autoscaling_config
    assert a is not None
    assert (a.min_replicas, a.max_replicas, a.target_ongoing_requests) == (1, 7, 2.0)
    assert a.upscale_delay_s == 1
    assert c.model_fields_set == {"num_replicas", "autoscaling_config"}


def test_autoscaling_without_auto_uses_class_defaults() -> None:
    c = DeploymentConfig.from_options(autoscaling_config={"min_replicas": 2, "max_replicas": 5})
    assert c.num_replicas is None
    assert c.autoscaling_config is not None and c.autoscaling_config.max_replicas == 5
    assert c.initial_num_replicas() == 2


def test_none_num_replicas_means_one() -> None:
    c = DeploymentConfig.from_options(num_replicas=None)
    assert c.num_replicas == 1 and not c.autoscaling_enabled


def test_user_set_options_are_tracked() -> None:
    c = DeploymentConfig.from_options(num_replicas=3, user_config={"a": 1})
    assert c.model_fields_set == {"num_replicas", "user_config"}
    assert c.user_options() == {"num_replicas": 3, "user_config": {"a": 1}}


# -- merge (config file > code > defaults) ------------------------------------


def test_merge_overrides_and_unions_set_fields() -> None:
    code = DeploymentConfig.from_options(num_replicas=2, max_ongoing_requests=10)
    merged = code.merge({"max_ongoing_requests": 3, "health_check_period_s": 1})
    assert (merged.num_replicas, merged.max_ongoing_requests) == (2, 3)
    assert merged.health_check_period_s == 1
    assert merged.model_fields_set == {
        "num_replicas",
        "max_ongoing_requests",
        "health_check_period_s",
    }
    assert code.max_ongoing_requests == 10  # unchanged: configs are values


def test_merge_replaces_user_config_and_ray_actor_options_whole() -> None:
    code = DeploymentConfig.from_options(
        user_config={"a": 1, "b": 2}, ray_actor_options={"num_cpus": 2, "num_gpus": 1}
    )
    merged = code.merge({"user_config": {"a": 5}, "ray_actor_options": {"num_cpus": 1}})
    assert merged.user_config == {"a": 5}
    assert merged.ray_actor_options == {"num_cpus": 1.0}


def test_merge_autoscaling_over_fixed_replicas_and_back() -> None:
    code = DeploymentConfig.from_options(num_replicas=4)
    scaled = code.merge({"autoscaling_config": {"max_replicas": 8}})
    assert scaled.num_replicas is None
    assert scaled.autoscaling_config is not None
    assert scaled.autoscaling_config.max_replicas == 8
    fixed = scaled.merge({"num_replicas": 3})
    assert fixed.num_replicas == 3 and fixed.autoscaling_config is None


def test_merge_auto_in_config_overlays_code_autoscaling() -> None:
    code = DeploymentConfig.from_options(autoscaling_config={"min_replicas": 2, "max_replicas": 4})
    merged = code.merge({"num_replicas": "auto"})
    a = merged.autoscaling_config
    assert a is not None and (a.min_replicas, a.max_replicas) == (2, 4)
    code_auto = DeploymentConfig.from_options(num_replicas="auto")
    merged = code_auto.merge({"autoscaling_config": {"max_replicas": 12}})
    a = merged.autoscaling_config
    assert a is not None and (a.min_replicas, a.max_replicas) == (1, 12)


def test_merge_checks_combinations_against_the_base() -> None:
    code = DeploymentConfig.from_options(placement_group_bundles=[{"CPU": 2}])
    assert code.merge({"placement_group_strategy": "STRICT_PACK"}).placement_group_strategy == (
        "STRICT_PACK"
    )
    with pytest.raises(DeploymentOptionError, match="max_replicas_per_node cannot be used"):
        code.merge({"max_replicas_per_node": 1})
    with pytest.raises(DeploymentOptionError, match="Unknown deployment option 'nope'"):
        code.merge({"nope": 1})
    with pytest.raises(DeploymentOptionError, match="'max_ongoing_requests': got -1"):
        code.merge({"max_ongoing_requests": -1})


# -- update cost --------------------------------------------------------------


def test_every_option_has_an_update_type() -> None:
    assert set(UPDATE_TYPES) == set(DEPLOYMENT_OPTION_NAMES)
    assert set(UPDATE_TYPES.values()) == {"light", "reconfigure", "restart"}


@pytest.mark.parametrize(
    ("option", "kind"),
    [
        ("num_replicas", "light"),
        ("autoscaling_config", "light"),
        ("max_queued_requests", "light"),
        ("health_check_period_s", "light"),
        ("graceful_shutdown_timeout_s", "light"),
        ("request_router_config", "light"),
        ("user_config", "reconfigure"),
        ("logging_config", "reconfigure"),
        ("max_ongoing_requests", "reconfigure"),
        ("graceful_shutdown_wait_loop_s", "reconfigure"),
        ("ray_actor_options", "restart"),
        ("placement_group_bundles", "restart"),
        ("placement_group_strategy", "restart"),
        ("max_replicas_per_node", "restart"),
    ],
)
def test_update_type_for(option: str, kind: str) -> None:
    assert DeploymentConfig.update_type_for(option) == kind


def test_update_type_for_unknown_option() -> None:
    with pytest.raises(DeploymentOptionError, match="Unknown deployment option"):
        DeploymentConfig.update_type_for("bogus")


def test_diff_update_type_takes_the_most_expensive() -> None:
    base = DeploymentConfig.from_options(num_replicas=1, user_config={"v": 1})
    assert diff_update_type(base, base) is None
    assert diff_update_type(base, base.merge({"num_replicas": 3})) == "light"
    assert diff_update_type(base, base.merge({"user_config": {"v": 2}})) == "reconfigure"
    both = base.merge({"user_config": {"v": 2}, "ray_actor_options": {"num_cpus": 2}})
    assert diff_update_type(base, both) == "restart"
    assert changed_options(base, both) == ["user_config", "ray_actor_options"]


# -- resources, pickling, misc ------------------------------------------------


def test_required_resources() -> None:
    assert DeploymentConfig.from_options().required_resources() == {"CPU": 1.0}
    c = DeploymentConfig.from_options(
        ray_actor_options={
            "num_cpus": 0.5,
            "num_gpus": 1,
            "memory": 2**30,
            "resources": {"custom": 2},
            "accelerator_type": "A100",
        }
    )
    assert c.required_resources() == {
        "custom": 2.0,
        "CPU": 0.5,
        "GPU": 1.0,
        "memory": float(2**30),
        "accelerator_type:A100": 0.001,
    }


def test_configs_are_immutable_and_picklable() -> None:
    c = DeploymentConfig.from_options(num_replicas="auto", user_config={"a": 1})
    with pytest.raises(ValueError):
        c.num_replicas = 3  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(c))
    assert back == c and back.model_fields_set == c.model_fields_set


def test_json_dump_round_trip() -> None:
    c = DeploymentConfig.from_options(
        num_replicas="auto", logging_config={"encoding": "json", "log_level": 10}
    )
    data = c.model_dump(mode="json")
    assert data["logging_config"]["encoding"] == "JSON"
    assert data["logging_config"]["log_level"] == "DEBUG"
    assert DeploymentConfig.model_validate(data) == c


def _my_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    return 1, {}


class _MyRouter:
    pass


def test_callables_become_import_paths() -> None:
    p = AutoscalingPolicy(policy_function=_my_policy)
    assert p.policy_function == f"{__name__}:_my_policy"
    assert p.get_policy() is _my_policy
    assert p == AutoscalingPolicy(policy_function=f"{__name__}:_my_policy")
    r = RequestRouterConfig(request_router_class=_MyRouter)
    assert r.request_router_class == f"{__name__}:_MyRouter"
    assert r.get_request_router_class() is _MyRouter
    assert (
        RequestRouterConfig(request_router_class=f"{__name__}._MyRouter").get_request_router_class()
        is _MyRouter
    )


def test_ray_default_paths_map_to_ours() -> None:
    p = AutoscalingPolicy(policy_function="ray.serve.autoscaling_policy:default_autoscaling_policy")
    assert p.policy_function == DEFAULT_AUTOSCALING_POLICY
    r = RequestRouterConfig(
        request_router_class="ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"
    )
    assert r.request_router_class == DEFAULT_REQUEST_ROUTER


def test_backpressure_config() -> None:
    c = DeploymentConfig.from_options(backpressure_config={"status_code": 429, "retry_after_s": 2})
    assert c.backpressure_config.status_code == 429
    assert "backpressure_config" in option_error(backpressure_config={"status_code": 500})
    assert "not a known field" in option_error(backpressure_config={"retry_after": 1})


# -- instance options ---------------------------------------------------------


def test_proxy_location_accepts_no_server_alias() -> None:
    assert ProxyLocation("NoServer") is ProxyLocation.Disabled
    assert ProxyLocation("EveryNode") == "EveryNode"
    with pytest.raises(ValueError):
        ProxyLocation("Everywhere")


def test_http_options() -> None:
    assert HTTPOptions.model_validate({"port": 8123, "future_option": 1}).port == 8123
    assert HTTPOptions().max_request_body_bytes == 100 * 1024 * 1024
    assert HTTPOptions(max_request_body_bytes=1024).max_request_body_bytes == 1024
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"max_request_body_bytes\n.*greater than 0"):
            HTTPOptions(max_request_body_bytes=bad)
    with pytest.raises(ValueError, match="ssl_keyfile and ssl_certfile"):
        HTTPOptions(ssl_keyfile="k.pem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert HTTPOptions(location="NoServer").location is ProxyLocation.Disabled


def test_logging_config() -> None:
    assert LoggingConfig(log_level="debug").log_level == "DEBUG"
    assert LoggingConfig(log_level=30).log_level == "WARNING"
    with pytest.raises(ValueError, match="unknown log level"):
        LoggingConfig(log_level="LOUD")
    with pytest.raises(ValueError):
        LoggingConfig(encoding="XML")
    with pytest.raises(ValueError):
        LoggingConfig(colour=True)  # type: ignore[call-arg]
    attrs = LoggingConfig(additional_log_standard_attrs=["name", "name", "lineno"])
    assert attrs.additional_log_standard_attrs == ["name", "lineno"]
    with pytest.raises(ValueError, match="unknown LogRecord attribute"):
        LoggingConfig(additional_log_standard_attrs=["not_an_attr"])


def test_controller_options_only_env_vars() -> None:
    assert ControllerOptions(runtime_env={"env_vars": {"A": "1"}}).runtime_env == {
        "env_vars": {"A": "1"}
    }
    with pytest.raises(ValueError, match="only 'env_vars'"):
        ControllerOptions(runtime_env={"pip": {"x": "y"}})


def test_auto_keeps_a_callable_policy() -> None:
    c = DeploymentConfig.from_options(
        num_replicas="auto", autoscaling_config={"policy": {"policy_function": _my_policy}}
    )
    assert c.autoscaling_config is not None
    assert c.autoscaling_config.max_replicas == 100
    assert c.autoscaling_config.policy.get_policy() is _my_policy
