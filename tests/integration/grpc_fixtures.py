"""A test-only gRPC service, compiled with grpcio-tools into a directory at test time, and
the deployments that serve it (written beside it, so replicas and proxies import both)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

PROTO = textwrap.dedent(
    """
    syntax = "proto3";
    package schooner_test;

    service Greeter {
      rpc SayHello (HelloRequest) returns (HelloReply);
      rpc StreamHellos (HelloRequest) returns (stream HelloReply);
      rpc Fail (HelloRequest) returns (HelloReply);
      rpc Custom (HelloRequest) returns (HelloReply);
      rpc Slow (HelloRequest) returns (HelloReply);
      rpc Cancelled (HelloRequest) returns (HelloReply);
      rpc Meta (HelloRequest) returns (HelloReply);
      rpc CountHellos (stream HelloRequest) returns (HelloReply);
      rpc Chat (stream HelloRequest) returns (stream HelloReply);
    }

    message HelloRequest {
      string name = 1;
      int32 count = 2;
      double delay_s = 3;
    }

    message HelloReply {
      string message = 1;
    }
    """
)

APP = textwrap.dedent(
    """
    import asyncio

    import grpc

    import schooner as serve
    from schooner.context import current_request
    from schooner_greeter_pb2 import HelloReply


    @serve.deployment
    class Greeter:
        def __init__(self, greeting: str = "Hello") -> None:
            self.greeting = greeting
            self.cancelled = 0

        def SayHello(self, request):
            return HelloReply(message=f"{self.greeting}, {request.name}!")

        async def StreamHellos(self, request):
            for i in range(request.count):
                yield HelloReply(message=f"{request.name} {i}")

        def Fail(self, request):
            raise ValueError(f"boom for {request.name}")

        def Custom(self, request, grpc_context):
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"no {request.name} here")
            grpc_context.set_trailing_metadata([("extra", "value")])
            return HelloReply(message="ignored")

        async def Slow(self, request):
            try:
                await asyncio.sleep(request.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return HelloReply(message="slept")

        def Cancelled(self, request):
            return HelloReply(message=str(self.cancelled))

        def Meta(self, request, grpc_context):
            ctx = serve.get_replica_context()
            req = current_request()
            return HelloReply(
                message="|".join(
                    [
                        ctx.app_name,
                        req.request_id,
                        serve.get_multiplexed_model_id(),
                        req.session_id,
                        grpc_context.application() or "",
                        grpc_context.request_id() or "",
                    ]
                )
            )

        async def CountHellos(self, requests):
            names = [r.name async for r in requests]
            return HelloReply(message=",".join(names))

        async def Chat(self, requests):
            async for request in requests:
                yield HelloReply(message=f"{self.greeting} {request.name}")


    hello = Greeter.bind()
    hi = Greeter.bind("Hi")
    """
)

SERVICER = "schooner_greeter_pb2_grpc.add_GreeterServicer_to_server"


def build(directory: Path) -> Path:
    """Compile the proto and write the app into ``directory`` (also put on ``sys.path``)."""
    from grpc_tools import protoc

    (directory / "schooner_greeter.proto").write_text(PROTO)
    (directory / "schooner_greeter_app.py").write_text(APP)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{directory}",
            f"--python_out={directory}",
            f"--grpc_python_out={directory}",
            str(directory / "schooner_greeter.proto"),
        ]
    )
    assert code == 0, "protoc failed"
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    return directory
