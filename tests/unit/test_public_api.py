"""The public API: exported names, decorator defaults, options, binding and building apps."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import cloudpickle
import pytest

import schooner
import schooner as serve
from schooner.deployment import build_app
from schooner.exceptions import DeploymentOptionError, ServeConfigError
from schooner.handle import DeploymentHandle

#: Names of ``ray.serve`` 2.x that Schooner implements, exported from the top level.
#: Adding a name is a decision (it becomes API); update this list on purpose.
IMPLEMENTED_RAY_SERVE_NAMES = {
    "Application",
    "AutoscalingConfig",
    "ControllerOptions",
    "Deployment",
    "DeploymentHandle",
    "DeploymentResponse",
    "DeploymentResponseGenerator",
    "HTTPOptions",
    "RunTarget",
    "TracingConfig",
    "_run",
    "_run_many",
    "batch",
    "delete",
    "deployment",
    "gRPCOptions",
    "get_app_handle",
    "get_deployment_actor",
    "get_deployment_actor_context",
    "get_deployment_handle",
    "get_multiplexed_model_id",
    "get_replica_context",
    "get_trace_context",
    "ingress",
    "multiplexed",
    "run",
    "run_many",
    "shutdown",
    "shutdown_async",
    "start",
    "status",
}
#: Schooner's own additions to the top level (what Ray Serve 1.x had and 2.x dropped).
SCHOONER_NAMES = {"get_rollout", "get_traffic", "rollout", "set_traffic", "shadow_traffic"}

#: Ray 2.60's ``ray.serve.__all__`` (python/ray/serve/__init__.py at the 2.60.0 tag).
RAY_2_60_ALL = {
    "_run",
    "_run_many",
    "batch",
    "start",
    "ControllerOptions",
    "HTTPOptions",
    "TracingConfig",
    "get_replica_context",
    "get_deployment_actor",
    "get_deployment_actor_context",
    "get_trace_context",
    "shutdown",
    "shutdown_async",
    "ingress",
    "deployment",
    "run",
    "run_many",
    "RunTarget",
    "delete",
    "Application",
    "Deployment",
    "multiplexed",
    "get_multiplexed_model_id",
    "status",
    "get_app_handle",
    "get_deployment_handle",
}


# -- exports --------------------------------------------------------------------------------


def test_top_level_all_is_pinned() -> None:
    assert set(schooner.__all__) == IMPLEMENTED_RAY_SERVE_NAMES | SCHOONER_NAMES
    assert len(schooner.__all__) == len(set(schooner.__all__))


def test_every_name_of_ray_2_60_all_is_exported() -> None:
    assert set(schooner.__all__) >= RAY_2_60_ALL


@pytest.mark.parametrize("name", sorted(IMPLEMENTED_RAY_SERVE_NAMES | SCHOONER_NAMES))
def test_every_exported_name_is_importable(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from schooner import {name}", namespace)
    assert namespace[name] is getattr(schooner, name)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "schooner.handle",
            ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"],
        ),
        ("schooner.config", ["AutoscalingConfig", "HTTPOptions", "gRPCOptions"]),
        (
            "schooner.exceptions",
            [
                "BackPressureError",
                "RayServeException",
                "RequestCancelledError",
                "DeploymentUnavailableError",
                "ReplicaUnavailableError",
            ],
        ),
    ],
)
def test_submodules_export_ray_names(module: str, names: list[str]) -> None:
    mod = importlib.import_module(module)
    for name in names:
        assert name in mod.__all__, f"{module}.__all__ lacks {name}"
        assert inspect.isclass(getattr(mod, name))


def test_top_level_names_are_the_submodule_objects() -> None:
    from schooner import config, handle

    assert serve.DeploymentHandle is handle.DeploymentHandle
    assert serve.DeploymentResponse is handle.DeploymentResponse
    assert serve.AutoscalingConfig is config.AutoscalingConfig
    assert serve.HTTPOptions is config.HTTPOptions


def test_exceptions_share_the_ray_serve_base() -> None:
    from schooner import exceptions

    for name in exceptions.__all__:
        obj = getattr(exceptions, name)
        if inspect.isclass(obj):
            assert issubclass(obj, exceptions.RayServeException), name


def test_run_signature_matches_ray() -> None:
    params = inspect.signature(serve.run).parameters
    assert list(params)[:4] == ["target", "blocking", "name", "route_prefix"]
    assert params["blocking"].default is False
    assert params["name"].default == "default"
    assert params["route_prefix"].default == "/"


# -- @serve.deployment ------------------------------------------------------------------------


class Model:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> str:
        return "ok"


class Helper:
    pass


class Other:
    pass


def model_fn(x: int) -> int:
    return x


def test_deployment_defaults_match_ray() -> None:
    d = serve.deployment(Model)
    assert d.name == "Model"
    assert d.num_replicas == 1
    assert d.max_ongoing_requests == 5
    assert d.max_queued_requests == -1
    assert d.health_check_period_s == 10.0
    assert d.health_check_timeout_s == 30.0
    assert d.graceful_shutdown_wait_loop_s == 2.0
    assert d.graceful_shutdown_timeout_s == 20.0
    assert d.user_config is None
    assert d.autoscaling_config is None
    assert d.ray_actor_options is None


def test_decorator_signature_shows_ray_defaults() -> None:
    params = inspect.signature(serve.deployment).parameters
    assert params["num_replicas"].default == 1
    assert params["max_ongoing_requests"].default == 5
    assert params["max_queued_requests"].default == -1
    assert params["health_check_period_s"].default == 10.0
    assert params["health_check_timeout_s"].default == 30.0
    assert params["graceful_shutdown_wait_loop_s"].default == 2.0
    assert params["graceful_shutdown_timeout_s"].default == 20.0


def test_decorator_with_options_and_bare() -> None:
    bare = serve.deployment(Model)
    configured = serve.deployment(num_replicas=3, max_ongoing_requests=8)(Model)
    named = serve.deployment(name="Renamed")(Model)
    fn = serve.deployment(model_fn)
    assert isinstance(bare, serve.Deployment)
    assert (configured.num_replicas, configured.max_ongoing_requests) == (3, 8)
    assert named.name == "Renamed"
    assert fn.name == "model_fn" and fn.func_or_class is model_fn


def test_options_returns_a_modified_copy() -> None:
    d = serve.deployment(num_replicas=2, user_config={"a": 1})(Model)
    e = d.options(num_replicas=4, user_config={"b": 2}, name="Copy")
    assert e is not d
    assert (e.num_replicas, e.user_config, e.name) == (4, {"b": 2}, "Copy")
    assert (d.num_replicas, d.user_config, d.name) == (2, {"a": 1}, "Model")
    assert e.max_ongoing_requests == 5  # untouched options keep their values
    assert e.func_or_class is Model


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_ongoing_requests": 0}, "max_ongoing_requests"),
        ({"num_replicas": -1}, "num_replicas"),
        ({"max_queued_requests": 0}, "max_queued_requests"),
        ({"health_check_period_s": "soon"}, "health_check_period_s"),
        ({"max_ongoing_request": 5}, "max_ongoing_request"),  # a typo
    ],
)
def test_bad_options_raise_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(DeploymentOptionError, match=named):
        serve.deployment(**options)
    with pytest.raises(DeploymentOptionError, match=named):
        serve.deployment(Model).options(**options)


def test_route_prefix_is_not_a_deployment_option() -> None:
    with pytest.raises(DeploymentOptionError, match="route_prefix"):
        serve.deployment(route_prefix="/x")
    with pytest.raises(DeploymentOptionError, match="route_prefix"):
        serve.deployment(Model).options(route_prefix="/x")


def test_deployment_cannot_be_called_directly() -> None:
    with pytest.raises(RuntimeError, match=r"\.bind"):
        serve.deployment(Model)()


def test_deployment_must_wrap_a_class_or_function() -> None:
    with pytest.raises(TypeError):
        serve.deployment(42)  # type: ignore[call-overload]


# -- bind / build_app ------------------------------------------------------------------------


def init_args(spec_blob: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs = cloudpickle.loads(spec_blob)
    return args, kwargs


def test_bind_returns_an_application() -> None:
    d = serve.deployment(Model)
    app = d.bind(1, key="v")
    assert isinstance(app, serve.Application)
    assert app.deployment is d


def test_build_app_single_deployment() -> None:
    spec = build_app(serve.deployment(num_replicas=2)(Model).bind(1, key="v"), "myapp", "/api")
    assert (spec.name, spec.route_prefix, spec.ingress) == ("myapp", "/api", "Model")
    (dep,) = spec.deployments
    assert dep.name == "Model" and dep.config.num_replicas == 2
    assert dep.code.import_path is not None and dep.code.import_path.endswith(":Model")
    assert not dep.is_function
    assert init_args(dep.init_blob) == ((1,), {"key": "v"})


def test_build_app_function_deployment() -> None:
    spec = build_app(serve.deployment(model_fn).bind())
    (dep,) = spec.deployments
    assert dep.is_function
    assert spec.route_prefix == "/" and spec.name == "default"


def test_nested_bound_deployments_become_handles() -> None:
    helper = serve.deployment(Helper).bind()
    other = serve.deployment(Other).bind()
    app = serve.deployment(Model).bind(
        helper,
        [other, "plain"],
        config={"inner": (helper,), "n": 1},
        by_name={"other": other},
    )
    spec = build_app(app, "graph")
    assert spec.ingress == "Model"
    assert {d.name for d in spec.deployments} == {"Model", "Helper", "Other"}
    model = next(d for d in spec.deployments if d.name == "Model")
    args, kwargs = init_args(model.init_blob)
    assert isinstance(args[0], DeploymentHandle)
    assert (args[0].deployment_name, args[0].app_name) == ("Helper", "graph")
    assert isinstance(args[1], list) and args[1][1] == "plain"
    assert isinstance(args[1][0], DeploymentHandle) and args[1][0].deployment_name == "Other"
    inner = kwargs["config"]["inner"]
    assert isinstance(inner, tuple) and inner[0].deployment_name == "Helper"
    assert kwargs["config"]["n"] == 1
    assert kwargs["by_name"]["other"].deployment_name == "Other"
    # The same bound node used twice is one deployment, not a duplicate.
    assert [d.name for d in spec.deployments].count("Helper") == 1


def test_changing_init_args_changes_the_code_version() -> None:
    d = serve.deployment(Model)
    v1 = build_app(d.bind(1)).deployments[0].code_version
    v1_again = build_app(d.bind(1)).deployments[0].code_version
    v2 = build_app(d.bind(2)).deployments[0].code_version
    assert v1 == v1_again != v2


def test_a_deployment_bound_twice_gets_numbered_names_as_in_ray() -> None:
    h = serve.deployment(Helper)
    spec = build_app(serve.deployment(Model).bind(h.bind(), h.bind(), extra=h.bind()))
    # Children are named before their parent, in argument order, then keyword order.
    assert [d.name for d in spec.deployments] == ["Helper", "Helper_1", "Helper_2", "Model"]
    assert spec.ingress == "Model"
    # Each handle given to the parent points at its own deployment.
    model = next(d for d in spec.deployments if d.name == "Model")
    args, kwargs = init_args(model.init_blob)
    assert [a.deployment_name for a in args] == ["Helper", "Helper_1"]
    assert kwargs["extra"].deployment_name == "Helper_2"


def test_a_name_given_twice_with_options_is_numbered_too() -> None:
    a = serve.deployment(Helper).bind()
    b = serve.deployment(Other).options(name="Helper").bind()
    spec = build_app(serve.deployment(Model).bind(a, b))
    assert [d.name for d in spec.deployments] == ["Helper", "Helper_1", "Model"]
    # A nested repeat: the inner one is named first, as in Ray.
    m = serve.deployment(Model)
    spec = build_app(m.bind(m.bind()))
    assert [d.name for d in spec.deployments] == ["Model", "Model_1"]
    assert spec.ingress == "Model_1"


@pytest.mark.parametrize("prefix", ["api", "/api/", "/a{b}", "", "/x/{id}"])
def test_invalid_route_prefixes_raise(prefix: str) -> None:
    with pytest.raises(ServeConfigError, match="route_prefix"):
        build_app(serve.deployment(Model).bind(), route_prefix=prefix)


@pytest.mark.parametrize("prefix", ["/", "/api", "/api/v1", None])
def test_valid_route_prefixes(prefix: str | None) -> None:
    assert build_app(serve.deployment(Model).bind(), route_prefix=prefix).route_prefix == prefix


def test_build_app_rejects_unbound_deployment() -> None:
    with pytest.raises(TypeError, match=r"\.bind\(\)"):
        build_app(serve.deployment(Model))  # type: ignore[arg-type]


def test_build_app_rejects_empty_app_name() -> None:
    with pytest.raises(ServeConfigError):
        build_app(serve.deployment(Model).bind(), name="")


def test_an_interrupt_while_a_blocking_run_deploys_stops_serving_and_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C may land before the reply that the app runs (the proxy already answers):
    that is the user stopping the server, not an error out of run()."""
    from schooner import api

    stopped: list[bool] = []

    def interrupted_deploy(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_deploy_all", interrupted_deploy)
    monkeypatch.setattr(api, "_stop_serving", lambda: stopped.append(True))
    handle = serve.run(serve.deployment(Model).bind(1), blocking=True, name="stopped")
    assert stopped == [True]
    assert (handle.deployment_name, handle.app_name) == ("Model", "stopped")
