"""What a deployment method sees of a gRPC call (mirrors ``ray.serve.grpc_util``).

A method of an application's ingress deployment that takes a ``grpc_context`` parameter
gets a :class:`RayServegRPCContext` when it is called through the gRPC proxy: the call's
metadata and peer, and setters for the status code, details and trailing metadata the
client receives. It is a copy made for the replica (the proxy holds the real call), so
what the method sets is sent back when it returns or raises. A method of a client- or
bidirectional-streaming RPC gets a :class:`gRPCInputStream` of request messages instead of
a single request.

Importing this module does not import ``grpc``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

__all__ = ["RayServegRPCContext", "gRPCInputStream"]

T = TypeVar("T")


class RayServegRPCContext:
    """A gRPC call's context, as a deployment method sees it (most of
    ``grpc.ServicerContext``'s methods; picklable)."""

    def __init__(self, grpc_context: Any) -> None:
        """Copy what the method may read from ``grpc_context`` (a ``grpc`` servicer context)."""
        self._init(
            invocation_metadata=list(grpc_context.invocation_metadata() or ()),
            peer=grpc_context.peer(),
            auth_context=grpc_context.auth_context(),
            peer_identities=grpc_context.peer_identities(),
            peer_identity_key=grpc_context.peer_identity_key(),
            trailing_metadata=list(grpc_context.trailing_metadata() or ()),
        )
        self.set_code(grpc_context.code())
        self.set_details(grpc_context.details())

    def _init(
        self,
        invocation_metadata: list[tuple[str, Any]],
        peer: str,
        auth_context: dict[str, Any],
        peer_identities: Any,
        peer_identity_key: str | None,
        trailing_metadata: list[tuple[str, Any]],
    ) -> None:
        self._invocation_metadata = [(str(k), v) for k, v in invocation_metadata]
        self._metadata_dict = dict(self._invocation_metadata)
        self._peer = peer
        self._auth_context = auth_context
        self._peer_identities = peer_identities
        self._peer_identity_key = peer_identity_key
        self._trailing_metadata = list(trailing_metadata)
        self._code: Any = None
        self._details: Any = None
        self._compression: Any = None

    @classmethod
    def _from_call(cls, state: tuple[Any, ...]) -> RayServegRPCContext:
        """Rebuild from the proxy's ``(invocation_metadata, peer, auth_context,
        peer_identities, peer_identity_key, trailing_metadata)``."""
        context = cls.__new__(cls)
        context._init(*state)
        return context

    # -- what the client sent -----------------------------------------------------------
    def invocation_metadata(self) -> list[tuple[str, Any]]:
        """The metadata the client sent, as ``(key, value)`` pairs."""
        return list(self._invocation_metadata)

    def request_id(self) -> str | None:
        """The ``request_id`` metadata the client sent, if any."""
        value = self._metadata_dict.get("request_id")
        return None if value is None else str(value)

    def application(self) -> str | None:
        """The ``application`` metadata the client sent, if any."""
        value = self._metadata_dict.get("application")
        return None if value is None else str(value)

    def multiplexed_model_id(self) -> str | None:
        """The ``multiplexed_model_id`` metadata the client sent, if any."""
        value = self._metadata_dict.get("multiplexed_model_id")
        return None if value is None else str(value)

    def traceparent(self) -> str | None:
        value = self._metadata_dict.get("traceparent")
        return None if value is None else str(value)

    def tracestate(self) -> str | None:
        value = self._metadata_dict.get("tracestate")
        return None if value is None else str(value)

    def peer(self) -> str:
        """The client's address, as gRPC names it (``ipv4:127.0.0.1:53412``)."""
        return self._peer

    def peer_identities(self) -> Any:
        return self._peer_identities

    def peer_identity_key(self) -> str | None:
        key: str | None = self._peer_identity_key
        return key

    def auth_context(self) -> dict[str, Any]:
        return self._auth_context

    # -- what the client will receive ------------------------------------------------------
    def code(self) -> Any:
        """The status code set with :meth:`set_code` (None: unset, OK unless the method
        raises)."""
        return self._code

    def details(self) -> str | None:
        return None if self._details is None else str(self._details)

    def trailing_metadata(self) -> list[tuple[str, Any]]:
        return list(self._trailing_metadata)

    def set_code(self, code: Any) -> None:
        """The ``grpc.StatusCode`` the call ends with (also when the method then raises)."""
        self._code = code

    def set_details(self, details: str | None) -> None:
        """The status details the client receives."""
        self._details = details

    def set_compression(self, compression: Any) -> None:
        """The ``grpc.Compression`` of the response."""
        self._compression = compression

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, Any]]) -> None:
        """Trailing metadata for the client; the ``request_id`` entry is always kept."""
        kept = [(k, v) for k, v in self._trailing_metadata if k == "request_id"][:1]
        self._trailing_metadata = kept + list(trailing_metadata)


class gRPCInputStream(AsyncIterator[T]):
    """The request messages of a client- or bidirectional-streaming call, in order.

    ``async for request in stream`` ends when the client has sent its last message (or
    cancelled the call: then :meth:`is_cancelled` is True).
    """

    def __init__(
        self, request_iterator: AsyncIterator[T], *, cancel_event: asyncio.Event | None = None
    ) -> None:
        self._request_iterator = request_iterator
        self._cancel_event = cancel_event or asyncio.Event()
        self._exhausted = False

    def __aiter__(self) -> gRPCInputStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._exhausted or self._cancel_event.is_set():
            self._exhausted = True
            raise StopAsyncIteration
        try:
            return await self._request_iterator.__anext__()
        except StopAsyncIteration:
            self._exhausted = True
            raise

    def is_cancelled(self) -> bool:
        return self._cancel_event.is_set()

    def cancel(self) -> None:
        """Stop the iteration (the messages not yet read are dropped)."""
        self._cancel_event.set()

    @property
    def is_exhausted(self) -> bool:
        return self._exhausted
