"""A gRPC call in the replica: the method's arguments and how its answer goes back.

The proxy sends the deserialized request message and a snapshot of the call (see
:meth:`schooner.grpc_util.RayServegRPCContext._from_call`). The method is called with the
request (and ``grpc_context=`` when it has that parameter, as Ray Serve does); responses
are serialized here (``SerializeToString``) so the proxy relays bytes. The call ends with
a :class:`~schooner.rpc.messages.GrpcReply`. Nothing here imports ``grpc``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from schooner.grpc_util import RayServegRPCContext, gRPCInputStream
from schooner.rpc.connection import Inbox
from schooner.rpc.messages import GrpcReply

__all__ = [
    "CONTEXT_ARG",
    "failed",
    "input_stream",
    "make_context",
    "serialize",
    "succeeded",
    "takes_context",
]

#: The parameter that receives the call's context (Ray's ``GRPC_CONTEXT_ARG_NAME``).
CONTEXT_ARG = "grpc_context"


def takes_context(fn: Any) -> bool:
    try:
        return CONTEXT_ARG in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def make_context(state: tuple[Any, ...]) -> RayServegRPCContext:
    return RayServegRPCContext._from_call(state)


def input_stream(inbox: Inbox) -> gRPCInputStream[Any]:
    """The request messages the proxy pushes into a duplex call, until it pushes None."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    inbox.listen(queue.put_nowait)

    async def messages() -> AsyncIterator[Any]:
        while (message := await queue.get()) is not None:
            yield message

    return gRPCInputStream(messages())


def serialize(message: Any, method: str) -> bytes:
    """The wire bytes of a response message the method returned or yielded."""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    to_bytes = getattr(message, "SerializeToString", None)
    if to_bytes is None:
        raise TypeError(
            f"gRPC method '{method}' must return (or yield) protobuf messages of the RPC's "
            f"response type, got {type(message).__name__}."
        )
    return bytes(to_bytes())


def _code_number(code: Any) -> int | None:
    """A ``grpc.StatusCode`` (or its number) as its number."""
    if code is None:
        return None
    value = getattr(code, "value", code)
    if isinstance(value, tuple):
        value = value[0]
    return int(value)


def _compression_number(compression: Any) -> int | None:
    return None if compression is None else int(getattr(compression, "value", compression))


def succeeded(context: RayServegRPCContext, body: bytes | None) -> GrpcReply:
    return GrpcReply(
        True,
        body,
        _code_number(context.code()),
        context.details(),
        tuple(context.trailing_metadata()),
        _compression_number(context._compression),
    )


def failed(context: RayServegRPCContext, exc: BaseException) -> GrpcReply:
    """The method raised: the code it set (else the proxy answers INTERNAL), and its details
    (else the exception)."""
    return GrpcReply(
        False,
        None,
        _code_number(context.code()),
        context.details() or f"{type(exc).__name__}: {exc}",
        tuple(context.trailing_metadata()),
        _compression_number(context._compression),
    )
