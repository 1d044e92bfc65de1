"""Status values and objects, and the config-document schema (both config forms)."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from schooner.config import DEPLOYMENT_OPTION_NAMES, DeploymentConfig, ProxyLocation
from schooner.exceptions import ServeConfigError
from schooner.schema import (
    APIType,
    ApplicationStatus,
    ApplicationStatusOverview,
    DeploymentSchema,
    DeploymentStatus,
    DeploymentStatusOverview,
    DeploymentStatusTrigger,
    ProxyStatus,
    ReplicaState,
    ServeApplicationSchema,
    ServeDeploySchema,
    ServeStatus,
    parse_config_document,
)


def config_error(doc: Any) -> str:
    with pytest.raises(ServeConfigError) as info:
        parse_config_document(doc)
    return str(info.value)


def app(**fields: Any) -> dict[str, Any]:
    return {"import_path": "mod:app", **fields}


# -- enums --------------------------------------------------------------------


def test_enum_values_are_rays() -> None:
    assert [s.value for s in ApplicationStatus] == [
        "NOT_STARTED",
        "DEPLOYING",
        "DEPLOY_FAILED",
        "RUNNING",
        "UNHEALTHY",
        "DELETING",
    ]
    assert [s.value for s in DeploymentStatus] == [
        "UPDATING",
        "HEALTHY",
        "UNHEALTHY",
        "DEPLOY_FAILED",
        "UPSCALING",
        "DOWNSCALING",
    ]
    assert [s.value for s in DeploymentStatusTrigger] == [
        "UNSPECIFIED",
        "CONFIG_UPDATE_STARTED",
        "CONFIG_UPDATE_COMPLETED",
        "UPSCALE_COMPLETED",
        "DOWNSCALE_COMPLETED",
        "AUTOSCALING",
        "REPLICA_STARTUP_FAILED",
        "DEPLOYMENT_ACTOR_FAILED",
        "HEALTH_CHECK_FAILED",
        "INTERNAL_ERROR",
        "DELETING",
    ]
    assert [s.value for s in ReplicaState] == [
        "STARTING",
        "UPDATING",
        "RECOVERING",
        "RUNNING",
        "STOPPING",
        "STOPPED",
        "PENDING_MIGRATION",
    ]
    assert [s.value for s in ProxyStatus] == [
        "STARTING",
        "HEALTHY",
        "UNHEALTHY",
        "DRAINING",
        "DRAINED",
    ]
    assert [s.value for s in APIType] == ["unknown", "imperative", "declarative"]


def test_enums_compare_equal_to_strings() -> None:
    assert ApplicationStatus.RUNNING == "RUNNING"
    assert ApplicationStatus("RUNNING") is ApplicationStatus.RUNNING
    counts: dict[str, int] = {ReplicaState.RUNNING: 2}
    assert counts["RUNNING"] == 2


# -- serve.status() objects ---------------------------------------------------

STATUS = {
    "proxies": {"node-1": "HEALTHY"},
    "applications": {
        "default": {
            "status": "RUNNING",
            "message": "",
            "last_deployed_time_s": 1700000000.5,
            "deployments": {
                "Model": {
                    "status": "HEALTHY",
                    "status_trigger": "CONFIG_UPDATE_COMPLETED",
                    "replica_states": {"RUNNING": 2},
                    "message": "",
                }
            },
        }
    },
    "target_capacity": None,
}


def test_status_from_plain_data() -> None:
    status = ServeStatus.from_dict(STATUS)
    app_status = status.applications["default"]
    assert app_status.status == "RUNNING"
    assert app_status.status is ApplicationStatus.RUNNING
    dep = app_status.deployments["Model"]
    assert isinstance(dep, DeploymentStatusOverview)
    assert dep.status is DeploymentStatus.HEALTHY
    assert dep.status_trigger is DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED
    assert dep.replica_states == {ReplicaState.RUNNING: 2}
    assert status.proxies == {"node-1": ProxyStatus.HEALTHY}
    assert status.target_capacity is None


def test_status_round_trips_as_json() -> None:
    status = ServeStatus.from_dict(STATUS)
    data = json.loads(json.dumps(status.to_dict()))
    assert data == STATUS
    assert ServeStatus.from_dict(data) == status
    assert pickle.loads(pickle.dumps(status)) == status


def test_empty_status() -> None:
    status = ServeStatus()
    assert (status.proxies, status.applications, status.target_capacity) == ({}, {}, None)
    assert ServeStatus.from_dict({}) == status


def test_status_objects_can_be_built_directly() -> None:
    overview = ApplicationStatusOverview(
        status=ApplicationStatus.DEPLOYING, message="", last_deployed_time_s=0.0, deployments={}
    )
    assert overview.to_dict()["status"] == "DEPLOYING"


# -- DeploymentSchema is derived from DeploymentConfig ------------------------


def test_deployment_schema_has_every_option() -> None:
    assert tuple(DeploymentSchema.model_fields) == DEPLOYMENT_OPTION_NAMES
    assert DeploymentSchema.model_fields["name"].is_required()
    for name in DEPLOYMENT_OPTION_NAMES[1:]:
        assert not DeploymentSchema.model_fields[name].is_required()


def test_deployment_schema_remembers_what_was_set() -> None:
    entry = DeploymentSchema.model_validate(
        {"name": "Model", "num_replicas": 2, "user_config": None, "unknown_key": 1}
    )
    assert entry.model_fields_set == {"name", "num_replicas", "user_config"}
    assert entry.overrides() == {"num_replicas": 2, "user_config": None}
    assert pickle.loads(pickle.dumps(entry)) == entry


def test_deployment_schema_uses_the_same_checks() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        DeploymentSchema.model_validate({"name": "M", "max_ongoing_requests": 0})
    with pytest.raises(ValueError, match="JSON-serializable"):
        DeploymentSchema.model_validate({"name": "M", "user_config": {"x": object()}})
    with pytest.raises(ValueError):
        DeploymentSchema.model_validate({"name": "M", "max_ongoing_requests": None})
    with pytest.raises(ValueError, match="without '#'"):
        DeploymentSchema.model_validate({"name": "a#b"})


def test_overrides_apply_to_code_config() -> None:
    code = DeploymentConfig.from_options(num_replicas=4, ray_actor_options={"num_cpus": 2})
    entry = DeploymentSchema.model_validate(
        {"name": "M", "autoscaling_config": {"max_replicas": 6}, "ray_actor_options": {}}
    )
    merged = code.merge(entry.overrides())
    assert merged.num_replicas is None
    assert merged.autoscaling_config is not None
    assert merged.autoscaling_config.max_replicas == 6
    assert merged.ray_actor_options == {}


# -- multi-application documents ----------------------------------------------


def test_minimal_document_and_defaults() -> None:
    doc = parse_config_document({"applications": [app()]})
    assert isinstance(doc, ServeDeploySchema)
    assert doc.proxy_location is ProxyLocation.EveryNode
    assert (doc.http_options.host, doc.http_options.port) == ("0.0.0.0", 8000)
    assert doc.http_options.keep_alive_timeout_s == 90
    assert (doc.grpc_options.port, doc.grpc_options.enable_reflection) == (9000, True)
    assert doc.target_capacity is None and doc.logging_config is None
    only = doc.applications[0]
    assert (only.name, only.route_prefix, only.runtime_env, only.args) == ("default", "/", {}, {})
    assert only.deployments == [] and only.external_scaler_enabled is False
    assert doc.model_dump(exclude_unset=True) == {"applications": [{"import_path": "mod:app"}]}


def test_kuberay_style_document() -> None:
    body = {
        "applications": [
            {
                "deployments": [
                    {
                        "name": "MangoStand",
                        "num_replicas": 2,
                        "ray_actor_options": {"num_cpus": 0.1},
                        "user_config": {"price": 3},
                    }
                ],
                "import_path": "fruit.deployment_graph",
                "name": "fruit_app",
                "route_prefix": "/fruit",
                "runtime_env": {"working_dir": "https://example.com/test_dag.zip"},
            }
        ],
        "target_capacity": 50,
    }
    doc = parse_config_document(body)
    entry = doc.applications[0].deployments[0]
    assert entry.overrides() == {
        "num_replicas": 2,
        "user_config": {"price": 3},
        "ray_actor_options": {"num_cpus": 0.1},
    }
    assert doc.target_capacity == 50.0


def test_unknown_keys_are_ignored_except_logging() -> None:
    doc = parse_config_document(
        {"applications": [app(future=1)], "future": 2, "http_options": {"future": 3}}
    )
    assert doc.applications[0].name == "default"
    assert "logging_config.colour" in config_error(
        {"applications": [app()], "logging_config": {"colour": True}}
    )


def test_proxy_location_no_server_alias() -> None:
    doc = parse_config_document({"applications": [], "proxy_location": "NoServer"})
    assert doc.proxy_location is ProxyLocation.Disabled


def test_applications_required() -> None:
    assert config_error({}) == "Invalid Serve config: applications: required field is missing."
    assert "import_path: required field is missing" in config_error({"applications": [{}]})


def test_duplicate_names_and_prefixes_rejected() -> None:
    msg = config_error({"applications": [app(name="a"), app(name="a", route_prefix="/x")]})
    assert "application name 'a' is used twice" in msg
    msg = config_error({"applications": [app(name="a"), app(name="b")]})
    assert "route_prefix '/' is used by more than one application" in msg
    ok = parse_config_document(
        {"applications": [app(name="a", route_prefix=None), app(name="b", route_prefix=None)]}
    )
    assert [a.route_prefix for a in ok.applications] == [None, None]


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("api", "must start with '/'"),
        ("/api/", "must not end with '/'"),
        ("/{id}", "must not contain"),
    ],
)
def test_route_prefix_rules(prefix: str, problem: str) -> None:
    msg = config_error({"applications": [app(route_prefix=prefix)]})
    assert "applications[0].route_prefix" in msg and problem in msg


def test_route_prefix_ok() -> None:
    for prefix in ("/", "/api", "/a/b"):
        assert ServeApplicationSchema(import_path="m:a", route_prefix=prefix).route_prefix == prefix


@pytest.mark.parametrize("path", ["module", "a:b:c", ":app", "mod:", ".mod", "mod."])
def test_bad_import_paths(path: str) -> None:
    assert "import path" in config_error({"applications": [{"import_path": path}]})


@pytest.mark.parametrize("path", ["mod:app", "pkg.mod:app", "pkg.mod.app", "pkg.mod:Cls.attr"])
def test_good_import_paths(path: str) -> None:
    assert ServeApplicationSchema(import_path=path).import_path == path


def test_app_level_host_and_port_rejected() -> None:
    assert "set http_options.host" in config_error({"applications": [app(host="0.0.0.0")]})
    assert "set http_options.port" in config_error({"applications": [app(port=8001)]})


def test_init_args_in_deployments_rejected() -> None:
    for key in ("init_args", "init_kwargs"):
        msg = config_error({"applications": [app(deployments=[{"name": "M", key: [1]}])]})
        assert f"'{key}' cannot be set in a config file" in msg
        assert "deployments[0] ('M')" in msg


def test_deployment_errors_name_app_deployment_and_option() -> None:
    doc = {
        "applications": [
            app(
                name="shop",
                deployments=[
                    {"name": "Cart", "max_ongoing_requests": 0},
                    {"name": "Pay", "num_replicas": "many"},
                ],
            )
        ]
    }
    msg = config_error(doc)
    assert msg.startswith("Invalid Serve config:\n")
    assert (
        "applications[0] ('shop').deployments[0] ('Cart').max_ongoing_requests: got 0; "
        "must be an integer greater than 0"
    ) in msg
    assert "deployments[1] ('Pay').num_replicas: got 'many'; must be an integer >= 1" in msg


def test_deployment_combination_errors() -> None:
    msg = config_error(
        {
            "applications": [
                app(
                    deployments=[
                        {"name": "M", "num_replicas": 2, "autoscaling_config": {"max_replicas": 3}}
                    ]
                )
            ]
        }
    )
    assert "num_replicas cannot be a number when autoscaling_config is set" in msg
    msg = config_error(
        {
            "applications": [
                app(deployments=[{"name": "M", "autoscaling_config": {"min_replicas": -1}}])
            ]
        }
    )
    assert "autoscaling_config.min_replicas: got -1" in msg


def test_entries_from_config_do_not_need_code_options() -> None:
    # ray_actor_options come from code, so the bundle fit is checked only after merging.
    doc = parse_config_document(
        {
            "applications": [
                app(deployments=[{"name": "M", "placement_group_bundles": [{"GPU": 1}]}])
            ]
        }
    )
    assert doc.applications[0].deployments[0].overrides() == {
        "placement_group_bundles": [{"GPU": 1.0}]
    }


def test_duplicate_deployment_entries_rejected() -> None:
    msg = config_error({"applications": [app(deployments=[{"name": "M"}, {"name": "M"}])]})
    assert "deployment 'M' is listed more than once" in msg


def test_external_scaler_excludes_autoscaling() -> None:
    msg = config_error(
        {
            "applications": [
                app(
                    external_scaler_enabled=True,
                    deployments=[{"name": "M", "num_replicas": "auto"}],
                )
            ]
        }
    )
    assert "external_scaler_enabled" in msg and "'M'" in msg


def test_target_capacity_range() -> None:
    assert "target_capacity: got 101" in config_error({"applications": [], "target_capacity": 101})
    assert parse_config_document({"applications": [], "target_capacity": 0}).target_capacity == 0


# -- single-application form ---------------------------------------------------


def test_single_application_form() -> None:
    doc = parse_config_document(
        {
            "import_path": "mod:app",
            "runtime_env": {"env_vars": {"A": "1"}},
            "host": "127.0.0.1",
            "port": 8100,
            "deployments": [{"name": "M", "num_replicas": 3}],
            "proxy_location": "HeadOnly",
        }
    )
    assert len(doc.applications) == 1
    only = doc.applications[0]
    assert (only.name, only.route_prefix, only.import_path) == ("default", "/", "mod:app")
    assert only.runtime_env == {"env_vars": {"A": "1"}}
    assert only.deployments[0].overrides() == {"num_replicas": 3}
    assert (doc.http_options.host, doc.http_options.port) == ("127.0.0.1", 8100)
    assert doc.proxy_location is ProxyLocation.HeadOnly


def test_single_application_form_errors() -> None:
    msg = config_error(
        {"import_path": "mod:app", "deployments": [{"name": "M", "num_replicas": 0}]}
    )
    assert "applications[0].deployments[0] ('M').num_replicas: got 0" in msg
    assert "not both" in config_error({"import_path": "mod:app", "applications": []})


def test_not_a_mapping() -> None:
    assert "expected a mapping" in config_error(["applications"])


def test_pydantic_error_available_for_rest_layer() -> None:
    with pytest.raises(ValueError, match="1 validation error for ServeDeploySchema"):
        ServeDeploySchema.model_validate({})


def test_config_warnings_name_unknown_keys_and_likely_meant_ones() -> None:
    from schooner.schema import config_warnings

    doc = {
        "http_optons": {},
        "http_options": {"prot": 8000},
        "applications": [
            {
                "name": "a",
                "import_path": "m:app",
                "route_prefx": "/x",
                "deployments": [{"name": "M", "num_replica": 2, "user_config": {"k": 1}}],
            }
        ],
    }
    assert config_warnings(doc) == [
        "http_optons: unknown key, ignored; did you mean 'http_options'?",
        "http_options.prot: unknown key, ignored; did you mean 'port'?",
        "applications[0] ('a').route_prefx: unknown key, ignored; did you mean 'route_prefix'?",
        "applications[0] ('a').deployments[0] ('M').num_replica: unknown key, ignored; "
        "did you mean 'num_replicas'?",
    ]
    single = {"import_path": "m:app", "host": "0.0.0.0", "port": 8000, "zebra": 1}
    assert config_warnings(single) == ["zebra: unknown key, ignored"]
    clean = {"applications": [{"import_path": "m:app", "deployments": [{"name": "M"}]}]}
    assert config_warnings(clean) == []
