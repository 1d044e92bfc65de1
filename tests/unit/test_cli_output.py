"""What the CLI prints (``status``, ``config``, ``build``) and config entries of resolved options.

Pure functions of plain data: the admin API's details, or specs built from
small deployments defined here. Nothing is deployed.
"""

from __future__ import annotations

from typing import Any

import yaml

import schooner as serve
from schooner.cli.output import build_document, config_documents, dump_yaml, status_document
from schooner.config import (
    DEFAULT_REQUEST_ROUTER,
    AutoscalingConfig,
    DeploymentConfig,
    RequestRouterConfig,
)
from schooner.deployment import build_app
from schooner.rpc.messages import AppSpec
from schooner.schema import config_entry, parse_config_document

# -- deployments built into real AppSpecs --------------------------------------------------------


@serve.deployment(num_replicas=2, user_config={"threshold": 0.5})
class Model:
    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = config


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 4})
class Ingress:
    def __init__(self, model: Any) -> None:
        self.model = model


@serve.deployment(num_replicas="auto", max_ongoing_requests=7)
class Auto:
    pass


@serve.deployment(name="Renamed", graceful_shutdown_timeout_s=3.0)
def handler(request: Any) -> str:
    return "ok"


@serve.deployment(request_router_config=RequestRouterConfig(initial_backoff_s=0.1))
class Backoff:
    pass


def graph_spec() -> AppSpec:
    return build_app(Ingress.bind(Model.bind()), "graph", "/graph")


def single_specs() -> list[AppSpec]:
    return [
        build_app(Auto.bind(), "auto", "/auto"),
        build_app(handler.bind(), "func", None),
    ]


# -- status_document -------------------------------------------------------------------------


def replica(state: str) -> dict[str, Any]:
    return {"replica_id": f"r-{state}", "state": state, "pid": 1}


DETAILS: dict[str, Any] = {
    "proxy_location": "EveryNode",
    "proxies": {"node-1": {"node_id": "node-1", "status": "HEALTHY"}},
    "target_capacity": None,
    "applications": {
        "app1": {
            "name": "app1",
            "status": "RUNNING",
            "message": "",
            "last_deployed_time_s": 1700000000.5,
            "source": "declarative",
            "deployed_app_config": {"name": "app1", "import_path": "mod:app1"},
            "deployments": {
                "Model": {
                    "name": "Model",
                    "status": "HEALTHY",
                    "status_trigger": "CONFIG_UPDATE_COMPLETED",
                    "message": "",
                    "replicas": [replica("RUNNING"), replica("RUNNING"), replica("STOPPING")],
                },
            },
        },
        "app2": {
            "name": "app2",
            "status": "DEPLOYING",
            "message": "waiting",
            "last_deployed_time_s": 1700000001.0,
            "source": "imperative",
            "deployed_app_config": None,
            "deployments": {
                "Ingress": {
                    "name": "Ingress",
                    "status": "UPDATING",
                    "status_trigger": "CONFIG_UPDATE_STARTED",
                    "message": "starting",
                    "replicas": [],
                },
            },
        },
    },
}


def test_status_document_lists_every_app_with_replica_counts_by_state() -> None:
    doc = status_document(DETAILS)
    assert doc["proxies"] == {"node-1": "HEALTHY"}
    assert doc["target_capacity"] is None
    assert list(doc["applications"]) == ["app1", "app2"]
    app1 = doc["applications"]["app1"]
    assert app1 == {
        "status": "RUNNING",
        "message": "",
        "last_deployed_time_s": 1700000000.5,
        "deployments": {
            "Model": {
                "status": "HEALTHY",
                "status_trigger": "CONFIG_UPDATE_COMPLETED",
                "replica_states": {"RUNNING": 2, "STOPPING": 1},
                "message": "",
            }
        },
    }
    assert doc["applications"]["app2"]["deployments"]["Ingress"]["replica_states"] == {}
    assert doc["applications"]["app2"]["message"] == "waiting"


def test_status_document_of_one_app_is_that_app_alone() -> None:
    doc = status_document(DETAILS, "app2")
    assert doc["status"] == "DEPLOYING"
    assert list(doc["deployments"]) == ["Ingress"]
    assert "applications" not in doc and "proxies" not in doc


def test_status_document_of_a_missing_app_is_not_started() -> None:
    assert status_document(DETAILS, "nope") == {
        "status": "NOT_STARTED",
        "message": "",
        "deployments": {},
    }


def test_status_document_of_an_empty_instance() -> None:
    assert status_document({}) == {"proxies": {}, "applications": {}, "target_capacity": None}


def test_status_document_dumps_as_yaml_in_order() -> None:
    text = dump_yaml(status_document(DETAILS))
    assert text.index("proxies:") < text.index("applications:") < text.index("target_capacity:")
    assert yaml.safe_load(text) == status_document(DETAILS)


# -- config_documents ------------------------------------------------------------------------


def test_config_documents_skip_imperative_apps() -> None:
    assert config_documents(DETAILS) == [{"name": "app1", "import_path": "mod:app1"}]


def test_config_documents_of_one_app() -> None:
    assert config_documents(DETAILS, "app1") == [{"name": "app1", "import_path": "mod:app1"}]
    assert config_documents(DETAILS, "app2") == []
    assert config_documents(DETAILS, "missing") == []
    assert config_documents({}) == []


# -- build_document --------------------------------------------------------------------------


def built_document() -> dict[str, Any]:
    graph = graph_spec()
    auto, func = single_specs()
    return build_document(
        [
            ("models:graph", graph, {"size": "small"}),
            ("models:auto", auto, None),
            ("models:func", func, None),
        ],
        http_host="127.0.0.1",
        http_port=9000,
    )


def test_build_document_lists_every_app_and_deployment() -> None:
    doc = built_document()
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 9000}
    apps = {a["name"]: a for a in doc["applications"]}
    assert list(apps) == ["graph", "auto", "func"]
    assert apps["graph"]["import_path"] == "models:graph"
    assert apps["graph"]["route_prefix"] == "/graph"
    assert apps["graph"]["args"] == {"size": "small"}
    assert "args" not in apps["auto"]
    assert apps["func"]["route_prefix"] is None
    assert sorted(d["name"] for d in apps["graph"]["deployments"]) == ["Ingress", "Model"]
    assert [d["name"] for d in apps["auto"]["deployments"]] == ["Auto"]
    assert [d["name"] for d in apps["func"]["deployments"]] == ["Renamed"]


def test_build_document_has_the_options_set_in_code() -> None:
    doc = built_document()
    entries = {d["name"]: d for a in doc["applications"] for d in a["deployments"]}
    assert entries["Model"]["num_replicas"] == 2
    assert entries["Model"]["user_config"] == {"threshold": 0.5}
    assert entries["Model"]["autoscaling_config"] is None
    assert entries["Ingress"]["autoscaling_config"]["max_replicas"] == 4
    assert not isinstance(entries["Ingress"]["num_replicas"], int)
    assert entries["Auto"]["num_replicas"] == "auto"
    assert entries["Auto"]["max_ongoing_requests"] == 7
    assert entries["Renamed"]["graceful_shutdown_timeout_s"] == 3.0
    assert entries["Renamed"]["num_replicas"] == 1  # the default is written out too
    for entry in entries.values():
        assert "request_router_config" not in entry  # the default router is left out


def test_build_document_survives_yaml_and_parses_back() -> None:
    doc = built_document()
    text = dump_yaml(doc)
    assert yaml.safe_load(text) == doc
    parsed = parse_config_document(yaml.safe_load(text))
    assert [a.name for a in parsed.applications] == ["graph", "auto", "func"]
    assert parsed.http_options.port == 9000
    assert parsed.applications[0].args == {"size": "small"}


def test_built_config_deploys_the_same_options() -> None:
    """Applying the written entries, to the code or to defaults alone, gives the built config."""
    specs = [graph_spec(), *single_specs()]
    doc = build_document([(f"models:{s.name}", s, None) for s in specs])
    parsed = parse_config_document(yaml.safe_load(dump_yaml(doc)))
    for app, spec in zip(parsed.applications, specs, strict=True):
        built = {d.name: d.config for d in spec.deployments}
        assert sorted(app.deployment_names) == sorted(built)
        for entry in app.deployments:
            overrides = entry.overrides()
            assert built[entry.name].merge(overrides) == built[entry.name]
            from_file = DeploymentConfig.from_options(name=entry.name).merge(overrides)
            assert from_file == built[entry.name], entry.name


def test_built_config_keeps_router_settings_of_the_default_router() -> None:
    spec = build_app(Backoff.bind(), "backoff", "/b")
    doc = build_document([("models:backoff", spec, None)])
    parsed = parse_config_document(doc)
    (entry,) = parsed.applications[0].deployments
    from_file = DeploymentConfig.from_options(name="Backoff").merge(entry.overrides())
    assert from_file.request_router_config.initial_backoff_s == 0.1


# -- config_entry ----------------------------------------------------------------------------


def test_config_entry_omits_the_default_request_router() -> None:
    entry = config_entry("M", DeploymentConfig.from_options(name="M"))
    assert entry["name"] == "M"
    assert "request_router_config" not in entry
    assert set(entry) == set(DeploymentConfig.model_fields) - {"request_router_config"}


def test_config_entry_keeps_a_custom_request_router() -> None:
    router = RequestRouterConfig(request_router_class="mypkg.routers:Custom")
    entry = config_entry("M", DeploymentConfig.from_options(request_router_config=router))
    assert entry["name"] == "M"
    assert entry["request_router_config"]["request_router_class"] == "mypkg.routers:Custom"
    assert entry["request_router_config"]["request_router_class"] != DEFAULT_REQUEST_ROUTER


def test_config_entry_with_autoscaling_drops_an_integer_num_replicas() -> None:
    # A validated config never holds both; build one that does to reach the guard.
    both = DeploymentConfig.model_construct(
        num_replicas=3, autoscaling_config=AutoscalingConfig(min_replicas=1, max_replicas=5)
    )
    entry = config_entry("M", both)
    assert "num_replicas" not in entry
    assert entry["autoscaling_config"]["max_replicas"] == 5


def test_config_entry_with_autoscaling_has_no_integer_num_replicas() -> None:
    config = DeploymentConfig.from_options(autoscaling_config={"max_replicas": 5})
    entry = config_entry("M", config)
    assert not isinstance(entry.get("num_replicas"), int)
    assert entry["autoscaling_config"]["max_replicas"] == 5
    parse_config_document(
        {"applications": [{"import_path": "m:app", "deployments": [entry]}]}
    )  # both at once would be rejected here


def test_config_entry_keeps_an_integer_num_replicas_without_autoscaling() -> None:
    entry = config_entry("M", DeploymentConfig.from_options(num_replicas=4))
    assert entry["num_replicas"] == 4
    assert entry["autoscaling_config"] is None
