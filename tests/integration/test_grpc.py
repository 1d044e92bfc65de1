"""gRPC ingress: a real instance whose proxy serves a service compiled from a test .proto,
called by a real grpc client over a real port (grpc_fixtures.py has the service and the
deployments). One instance for the module; applications are deployed once."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from detached import Foreground, cli
from grpc_fixtures import SERVICER, build
from helpers import free_port, wait_for

import schooner as serve
from schooner.exceptions import ServeConfigError
from schooner.proxy import grpc_messages

TIMEOUT_S = 1.0


class GrpcInstance:
    def __init__(self, port: int, grpc_port: int, metrics_port: int) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.grpc_port = grpc_port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.pb2: Any = importlib.import_module("schooner_greeter_pb2")
        pb2_grpc: Any = importlib.import_module("schooner_greeter_pb2_grpc")
        self.stub = pb2_grpc.GreeterStub(self.channel)

    def request(self, **fields: Any) -> Any:
        return self.pb2.HelloRequest(**fields)

    def builtin(self, method: str) -> Any:
        call = self.channel.unary_unary(f"/{grpc_messages.SERVICE}/{method}")
        return call


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("grpc"))


@pytest.fixture(scope="module")
def inst(workdir: Path) -> Iterator[GrpcInstance]:
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    serve.start(
        metrics_port=metrics_port,
        http_options={"host": "127.0.0.1", "port": port},
        grpc_options={
            "port": grpc_port,
            "grpc_servicer_functions": [SERVICER],
            "request_timeout_s": TIMEOUT_S,
        },
    )
    try:
        app: Any = importlib.import_module("schooner_greeter_app")
        serve.run(app.hello, name="hello", route_prefix="/hello")
        serve.run(app.hi, name="hi", route_prefix="/hi")
        instance = GrpcInstance(port, grpc_port, metrics_port)
        yield instance
        instance.channel.close()
    finally:
        serve.shutdown()


def _error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def _trailing(call: Any) -> dict[str, str]:
    return {m.key: m.value for m in call.trailing_metadata()}


def test_unary_calls_route_by_application_metadata(inst: GrpcInstance) -> None:
    hello, call = inst.stub.SayHello.with_call(
        inst.request(name="Ann"), metadata=[("application", "hello")]
    )
    assert hello.message == "Hello, Ann!"
    assert _trailing(call)["request_id"]
    hi = inst.stub.SayHello(inst.request(name="Bo"), metadata=[("application", "hi")])
    assert hi.message == "Hi, Bo!"


def test_missing_or_unknown_application_is_not_found(inst: GrpcInstance) -> None:
    err = _error(inst.stub.SayHello, inst.request(name="x"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "Application metadata not set" in err.details()
    assert "['hello', 'hi']" in err.details()
    err = _error(inst.stub.SayHello, inst.request(name="x"), metadata=[("application", "nope")])
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "Application 'nope' not found" in err.details()


def test_request_id_and_metadata_reach_the_replica_and_come_back(inst: GrpcInstance) -> None:
    reply, call = inst.stub.Meta.with_call(
        inst.request(),
        metadata=[
            ("application", "hi"),
            ("request_id", "my-request"),
            ("multiplexed_model_id", "model-7"),
            ("session_id", "session-3"),
        ],
    )
    assert reply.message == "hi|my-request|model-7|session-3|hi|my-request"
    assert _trailing(call) == {"request_id": "my-request"}


def test_server_streaming(inst: GrpcInstance) -> None:
    replies = inst.stub.StreamHellos(
        inst.request(name="s", count=3), metadata=[("application", "hello")]
    )
    assert [r.message for r in replies] == ["s 0", "s 1", "s 2"]
    assert _trailing(replies)["request_id"]


def test_client_streaming(inst: GrpcInstance) -> None:
    requests = iter([inst.request(name=n) for n in ("a", "b", "c")])
    reply, call = inst.stub.CountHellos.with_call(requests, metadata=[("application", "hi")])
    assert reply.message == "a,b,c"
    assert _trailing(call)["request_id"]


def test_bidirectional_streaming(inst: GrpcInstance) -> None:
    requests = iter([inst.request(name=n) for n in ("x", "y")])
    replies = inst.stub.Chat(requests, metadata=[("application", "hello")])
    assert [r.message for r in replies] == ["Hello x", "Hello y"]


def test_user_exception_is_internal_with_its_message(inst: GrpcInstance) -> None:
    err = _error(inst.stub.Fail, inst.request(name="Cy"), metadata=[("application", "hello")])
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "ValueError: boom for Cy"
    assert _trailing(err)["request_id"]


def test_grpc_context_sets_code_details_and_trailing_metadata(inst: GrpcInstance) -> None:
    err = _error(
        inst.stub.Custom,
        inst.request(name="Di"),
        metadata=[("application", "hello"), ("request_id", "rid-9")],
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no Di here"
    assert _trailing(err) == {"request_id": "rid-9", "extra": "value"}


def test_request_timeout_is_deadline_exceeded_and_cancels_the_replica_call(
    inst: GrpcInstance,
) -> None:
    md = [("application", "hello")]
    err = _error(inst.stub.Slow, inst.request(delay_s=30), metadata=md)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"timed out after {TIMEOUT_S:g} s" in err.details()
    # The client's own deadline, shorter than the server's: the replica call is cancelled.
    err = _error(inst.stub.Slow, inst.request(delay_s=30), metadata=md, timeout=0.2)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(
        lambda: inst.stub.Cancelled(inst.request(), metadata=md).message == "2",
        timeout_s=10,
        message="both replica calls cancelled",
    )


def test_list_applications_and_healthz(inst: GrpcInstance) -> None:
    names = grpc_messages.decode_strings(inst.builtin("ListApplications")(b""))
    assert sorted(names) == ["hello", "hi"]
    assert grpc_messages.decode_strings(inst.builtin("Healthz")(b"")) == ["success"]


def test_grpc_metrics_have_rays_names(inst: GrpcInstance) -> None:
    inst.stub.SayHello(inst.request(name="m"), metadata=[("application", "hi")])
    _error(inst.stub.Fail, inst.request(name="m"), metadata=[("application", "hi")])
    url = f"http://127.0.0.1:{inst.metrics_port}/metrics"
    method = 'method="/schooner_test.Greeter/Fail"'

    def exported() -> str | None:
        text = httpx.get(url).text
        return text if method in text and "ray_serve_num_grpc_error_requests" in text else None

    text = wait_for(exported, timeout_s=20, message="gRPC metrics exported")
    for name in (
        "ray_serve_num_grpc_requests_total",
        "ray_serve_grpc_request_latency_ms_bucket",
        "ray_serve_num_ongoing_grpc_requests",
        "ray_serve_num_deployment_grpc_error_requests_total",
    ):
        assert name in text, name
    assert 'error_code="INTERNAL"' in text and 'application="hi"' in text


def test_http_still_served_beside_grpc(inst: GrpcInstance) -> None:
    assert httpx.get(f"http://127.0.0.1:{inst.port}/-/healthz").text == "success"


def test_details_show_grpc_options(inst: GrpcInstance) -> None:
    from schooner import api

    details = api._controller_call("details")
    assert details["grpc_options"] == {
        "port": inst.grpc_port,
        "grpc_servicer_functions": [SERVICER],
        "request_timeout_s": TIMEOUT_S,
        "enable_reflection": True,
    }


def test_a_bad_servicer_path_fails_schooner_start(workdir: Path) -> None:
    out = cli(
        "start",
        "--http-port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--grpc-servicer-functions",
        "schooner_greeter_pb2_grpc.add_NoSuchServicer_to_server",
        cwd=workdir,
        check=False,
    )
    assert out.returncode != 0
    assert "grpc_options.grpc_servicer_functions[0]" in out.stderr
    assert "has no 'add_NoSuchServicer_to_server'" in out.stderr


def test_a_bad_servicer_path_fails_serve_start() -> None:
    with pytest.raises(ServeConfigError, match=r"grpc_servicer_functions\[0\]"):
        serve.start(grpc_options={"grpc_servicer_functions": ["nowhere_pb2_grpc.add_X"]})


def test_config_file_grpc_options_with_schooner_run(workdir: Path) -> None:
    """The other path: a config file's top-level grpc_options, started by `schooner run`
    (its own instance, beside the module's)."""
    grpc_port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": free_port()},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [SERVICER]},
        "applications": [
            {"name": "solo", "route_prefix": "/solo", "import_path": "schooner_greeter_app:hi"}
        ],
    }
    (workdir / "grpc_config.yaml").write_text(yaml.safe_dump(config))
    run = Foreground(["grpc_config.yaml", "--admin-port", "-1"], cwd=workdir)
    try:
        pb2: Any = importlib.import_module("schooner_greeter_pb2")
        pb2_grpc: Any = importlib.import_module("schooner_greeter_pb2_grpc")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb2_grpc.GreeterStub(channel)

            def answered() -> Any:
                try:
                    # One application: it answers without the application metadata.
                    return stub.SayHello(pb2.HelloRequest(name="Ed"), timeout=5)
                except grpc.RpcError:
                    return None

            reply = wait_for(answered, timeout_s=30, message="the gRPC proxy to answer")
            assert reply.message == "Hi, Ed!"
    finally:
        run.stop()
