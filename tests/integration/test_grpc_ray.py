"""gRPC ingress on the Ray backend: the proxies are Ray actors on the cluster's nodes, and
they import the servicer functions from where the driver found them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_fixtures import SERVICER, build
from helpers import free_port, wait_for
from ray_cluster import LocalRayCluster, ray_connect, ray_disconnect_and_check

import schooner as serve

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.ray


def test_unary_and_streaming_calls_through_the_proxy_actors(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    build(tmp_path)
    grpc_port = free_port()
    ray_connect(ray_cluster)
    try:
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": free_port()},
            grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER]},
        )
        app: Any = importlib.import_module("schooner_greeter_app")
        serve.run(app.hello, name="hello")
        pb2: Any = importlib.import_module("schooner_greeter_pb2")
        pb2_grpc: Any = importlib.import_module("schooner_greeter_pb2_grpc")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb2_grpc.GreeterStub(channel)

            def answered() -> Any:
                try:
                    return stub.SayHello.with_call(pb2.HelloRequest(name="ray"), timeout=10)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:  # the proxy is not up yet
                        raise
                    return None

            reply, call = wait_for(answered, timeout_s=60, message="the gRPC proxy to answer")
            assert reply.message == "Hello, ray!"
            assert dict(call.trailing_metadata())["request_id"]
            stream = stub.StreamHellos(pb2.HelloRequest(name="s", count=3), timeout=10)
            assert [r.message for r in stream] == ["s 0", "s 1", "s 2"]
    finally:
        ray_disconnect_and_check()
