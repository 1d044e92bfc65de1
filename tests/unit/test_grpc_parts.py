"""gRPC ingress, pure parts: metadata, statuses, the built-in service's hand-encoded messages
(checked against protobuf itself), the replica's context and replies."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from schooner.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
    grpc_status_for,
)
from schooner.grpc_util import RayServegRPCContext
from schooner.proxy import grpc_messages
from schooner.proxy.grpc_proxy import CallMetadata, not_found_message, parse_metadata
from schooner.replica import grpc_call


def _ray_serve_messages() -> tuple[type, type]:
    """ListApplicationsResponse and HealthzResponse as Ray's serve.proto declares them."""
    proto = descriptor_pb2.FileDescriptorProto(name="serve_test.proto", package="ray.serve")
    apps = proto.message_type.add(name="ListApplicationsResponse")
    apps.field.add(
        name="application_names",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    health = proto.message_type.add(name="HealthzResponse")
    health.field.add(
        name="message",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("ray.serve.ListApplicationsResponse")
        ),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("ray.serve.HealthzResponse")),
    )


def test_metadata_keys_are_read_and_others_ignored() -> None:
    md = parse_metadata(
        [
            ("application", "app1"),
            ("request_id", "r-1"),
            ("multiplexed_model_id", "m"),
            ("session_id", "s"),
            ("x-serve-shard-key", "k"),
            ("user-agent", "grpc-python"),
            ("blob-bin", b"\x00"),
        ]
    )
    assert md == CallMetadata("app1", "r-1", "m", "s", "k", "")
    assert parse_metadata(None) == CallMetadata()


def test_not_found_messages_say_what_is_missing_and_what_exists() -> None:
    unset = not_found_message("", ["b", "a"])
    assert unset.startswith("Application metadata not set.")
    assert "ListApplications" in unset and "['a', 'b']" in unset
    assert not_found_message("x", []).startswith("Application 'x' not found.")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BackPressureError(num_queued_requests=1, max_queued_requests=1), "RESOURCE_EXHAUSTED"),
        (DeploymentUnavailableError("gone"), "UNAVAILABLE"),
        (ReplicaUnavailableError("died"), "UNAVAILABLE"),
        (RequestCancelledError("x"), "CANCELLED"),
        (TimeoutError(), "DEADLINE_EXCEEDED"),
        (ValueError("user"), "INTERNAL"),
    ],
)
def test_status_for_each_failure(exc: BaseException, code: str) -> None:
    assert grpc_status_for(exc) == code
    assert grpc.StatusCode[code]  # a real status name


def test_hand_encoded_messages_match_protobuf() -> None:
    apps_cls, health_cls = _ray_serve_messages()
    names = ["default", "app-é", "x" * 300]
    ours = grpc_messages.encode_list_applications(names)
    assert ours == apps_cls(application_names=names).SerializeToString()
    parsed = apps_cls()
    parsed.ParseFromString(ours)
    assert list(parsed.application_names) == names
    assert grpc_messages.encode_list_applications([]) == b""
    success = health_cls(message="success").SerializeToString()
    assert grpc_messages.encode_healthz("success") == success
    assert grpc_messages.encode_healthz("") == health_cls().SerializeToString()
    assert grpc_messages.decode_strings(ours) == names
    with pytest.raises(ValueError):
        grpc_messages.decode_strings(ours[:-1])


def _context(request_id: str = "rid") -> RayServegRPCContext:
    return grpc_call.make_context(
        (
            [("application", "a"), ("request_id", "client-rid"), ("multiplexed_model_id", "m")],
            "ipv4:127.0.0.1:5",
            {},
            None,
            None,
            [("request_id", request_id)],
        )
    )


def test_context_reads_the_call_and_keeps_the_request_id_in_trailing_metadata() -> None:
    ctx = _context()
    assert (ctx.application(), ctx.request_id(), ctx.multiplexed_model_id()) == (
        "a",
        "client-rid",
        "m",
    )
    assert ctx.peer() == "ipv4:127.0.0.1:5" and ctx.code() is None
    ctx.set_trailing_metadata([("k", "v")])
    ctx.set_trailing_metadata([("k2", "v2")])
    assert ctx.trailing_metadata() == [("request_id", "rid"), ("k2", "v2")]


def test_replies_carry_what_the_method_set() -> None:
    ctx = _context()
    ok = grpc_call.succeeded(ctx, b"body")
    assert ok.ok and ok.body == b"body" and ok.code is None
    ctx.set_code(grpc.StatusCode.NOT_FOUND)
    ctx.set_details("nope")
    ctx.set_compression(grpc.Compression.Gzip)
    reply = grpc_call.succeeded(ctx, b"")
    assert (reply.code, reply.details, reply.compression) == (5, "nope", 2)
    failed = grpc_call.failed(_context(), ValueError("boom"))
    assert not failed.ok and failed.code is None and failed.details == "ValueError: boom"
    assert failed.trailing_metadata == (("request_id", "rid"),)


def test_responses_must_be_protobuf_messages() -> None:
    _, health_cls = _ray_serve_messages()
    assert grpc_call.serialize(health_cls(message="x"), "M") == b"\n\x01x"
    assert grpc_call.serialize(b"raw", "M") == b"raw"
    with pytest.raises(TypeError, match="must return"):
        grpc_call.serialize({"not": "proto"}, "M")
    assert grpc_call.takes_context(lambda request, grpc_context: None)
    assert not grpc_call.takes_context(lambda request: None)
