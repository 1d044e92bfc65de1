"""serve.start()'s options: validated, refused or warned about, compared with a running instance."""

from __future__ import annotations

import json
import logging

import pytest

import schooner as serve
from schooner.exceptions import ServeConfigError
from schooner.instance_config import ProxyLocation
from schooner.logs import LOGGING_CONFIG_ENV
from schooner.start_options import ignored_options, normalize


def test_defaults_serve_http_on_every_node() -> None:
    options = normalize()
    assert options.proxy_location == ProxyLocation.EveryNode
    assert options.serves_http and options.given == frozenset()
    assert options.head_env() == {}


@pytest.mark.parametrize(
    ("location", "serves_http"),
    [("HeadOnly", True), ("EveryNode", True), ("Disabled", False), ("NoServer", False)],
)
def test_proxy_locations(location: str, serves_http: bool) -> None:
    assert normalize(proxy_location=location).serves_http is serves_http


def test_unknown_proxy_location_is_refused() -> None:
    with pytest.raises(ValueError):
        normalize(proxy_location="Nowhere")


def test_http_host_none_disables_the_proxy() -> None:
    assert not normalize(http_options={"host": None}).serves_http


def test_a_bad_servicer_function_fails_before_anything_starts() -> None:
    with pytest.raises(ServeConfigError) as info:
        serve.start(grpc_options={"grpc_servicer_functions": ["no_such_pb2_grpc.add_Servicer"]})
    message = str(info.value)
    assert "grpc_options.grpc_servicer_functions[0]" in message
    assert "no_such_pb2_grpc" in message
    assert "import path" in message


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("", "is empty"),
        ("nodots", "not an import path"),
        ("json.no_such_function", "has no 'no_such_function'"),
        ("json.__doc__", "not a function"),
    ],
)
def test_servicer_function_errors_name_the_problem(path: str, what: str) -> None:
    with pytest.raises(ServeConfigError, match=what):
        normalize(grpc_options={"grpc_servicer_functions": ["json.dumps", path]})


def test_grpc_options_without_servicers_are_accepted() -> None:
    options = normalize(grpc_options={"port": 9001, "request_timeout_s": 2})
    assert (options.grpc.port, options.grpc.request_timeout_s) == (9001, 2.0)


def test_differing_grpc_options_are_reported_as_ignored() -> None:
    options = normalize(grpc_options={"port": 9001})
    running = {"grpc_options": {"port": 9000, "grpc_servicer_functions": []}}
    assert ignored_options(options, running) == ["grpc_options ['port']"]
    assert ignored_options(normalize(grpc_options={"port": 9000}), running) == []


def test_logging_config_reaches_the_instance_environment() -> None:
    options = normalize(logging_config={"encoding": "json", "log_level": "DEBUG"})
    config = json.loads(options.head_env()[LOGGING_CONFIG_ENV])
    assert config["encoding"] == "JSON" and config["log_level"] == "DEBUG"


def test_controller_env_vars_reach_the_instance_environment() -> None:
    options = normalize(controller_options={"runtime_env": {"env_vars": {"A": "1"}}})
    assert options.head_env() == {"A": "1"}
    with pytest.raises(ValueError, match="env_vars"):
        normalize(controller_options={"runtime_env": {"working_dir": {}}})


def test_logs_dir_is_taken_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="schooner"):
        options = normalize(logging_config={"logs_dir": "/tmp/x"})
    assert "logs_dir" not in caplog.text  # supported: the instance's files go there
    assert json.loads(options.head_env()[LOGGING_CONFIG_ENV])["logs_dir"] == "/tmp/x"


def test_options_that_differ_from_the_running_instance_are_named() -> None:
    running = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000, "root_path": ""},
    }
    same = normalize(proxy_location="EveryNode", http_options={})
    assert ignored_options(same, running) == []
    other = normalize(proxy_location="Disabled", http_options={"port": 8123})
    assert ignored_options(other, running) == [
        "proxy_location (Disabled != EveryNode)",
        "http_options ['port']",
    ]


def test_unknown_and_deprecated_start_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        serve.start(detached=True)
    with pytest.raises(ValueError, match="http_options"):
        serve.start(http_port=8001)
