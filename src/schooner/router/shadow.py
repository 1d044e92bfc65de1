"""Shadow copies: fire-and-forget copies of a request to a shadow application.

A copy is sent only if the shadow's ingress router has a free slot *now*
(``try_acquire``) and an open connection to that replica; otherwise it is dropped.
Nothing waits for it: its answer is read and discarded by callback (no task), its
failure is logged at debug level, and the slot is given back when it ends. The
primary request never waits for, or learns about, its copies.

Counted in ``schooner_shadow_requests`` by shadow application and outcome
(``sent``, ``dropped``: no free slot, ``failed``: the copy raised or its replica died).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from schooner.router.pool import ConnectionPool
from schooner.router.router import Router
from schooner.rpc.connection import StreamSink
from schooner.rpc.messages import ReplicaInfo
from schooner.telemetry import catalog, recorder

__all__ = ["send_copy", "send_stream_copy"]

logger = logging.getLogger("schooner.router")

#: Copies can be sent from a driver's several event loops: the counter takes a lock.
_copies = recorder.counter(catalog.SHADOW_REQUESTS, lock=True)


def _count(app_name: str, outcome: str) -> None:
    if recorder.ENABLED:
        _copies.inc((app_name, outcome))


class _DiscardStream(StreamSink):
    """Reads a streamed copy's answer and throws it away; frees the slot at the end."""

    __slots__ = ("app_name", "replica", "router")

    def __init__(self, router: Router, replica: ReplicaInfo, app_name: str) -> None:
        self.router, self.replica, self.app_name = router, replica, app_name

    def on_item(self, item: Any) -> None:
        pass

    def on_end(self, last: Any) -> None:
        self.router.release(self.replica)

    def on_error(self, error: BaseException) -> None:
        self.router.release(self.replica)
        _count(self.app_name, "failed")
        logger.debug("shadow copy to %s failed: %r", self.app_name, error)


class _DiscardReply:
    """Done-callback of a unary copy: frees the slot, reads (and drops) any error."""

    __slots__ = ("app_name", "replica", "router")

    def __init__(self, router: Router, replica: ReplicaInfo, app_name: str) -> None:
        self.router, self.replica, self.app_name = router, replica, app_name

    def __call__(self, reply: asyncio.Future[Any]) -> None:
        self.router.release(self.replica)
        if reply.cancelled():
            return
        error = reply.exception()
        if error is not None:
            _count(self.app_name, "failed")
            logger.debug("shadow copy to %s failed: %r", self.app_name, error)


def _slot(
    router: Router, pool: ConnectionPool, app_name: str, shard_key: str, model_id: str
) -> tuple[ReplicaInfo, Any] | None:
    replica = router.try_acquire(shard_key, model_id)
    if replica is not None:
        conn = pool.get_nowait(replica.address)
        if conn is not None:
            _count(app_name, "sent")
            return replica, conn
        router.release(replica)
        _open_soon(pool, replica.address)  # the next copies find the connection open
    _count(app_name, "dropped")
    return None


def _open_soon(pool: ConnectionPool, address: str) -> None:
    def opened(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.debug("shadow replica %s unreachable: %r", address, task.exception())

    asyncio.ensure_future(pool.get(address)).add_done_callback(opened)


def send_stream_copy(
    router: Router,
    pool: ConnectionPool,
    app_name: str,
    method: str,
    args: tuple[Any, ...],
    shard_key: str = "",
    model_id: str = "",
) -> bool:
    """Send a copy of a streaming call (``rpc_<method>(*args)``) if a slot is free now;
    returns whether it was sent."""
    slot = _slot(router, pool, app_name, shard_key, model_id)
    if slot is None:
        return False
    replica, conn = slot
    conn.stream_to(method, args, _DiscardStream(router, replica, app_name))
    return True


def send_copy(
    router: Router,
    pool: ConnectionPool,
    app_name: str,
    method: str,
    args: tuple[Any, ...],
    shard_key: str = "",
    model_id: str = "",
) -> bool:
    """Send a copy of a unary call if a slot is free now; returns whether it was sent."""
    slot = _slot(router, pool, app_name, shard_key, model_id)
    if slot is None:
        return False
    replica, conn = slot
    _req_id, reply = conn.call_future(method, args, {})
    reply.add_done_callback(_DiscardReply(router, replica, app_name))
    return True
