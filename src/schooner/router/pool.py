"""One persistent connection per (this process, replica address).

Addresses are Unix socket paths or ``tcp://HOST:PORT``; TCP connections use the
process-wide default secret (:func:`schooner.rpc.transport.set_default_secret`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

from schooner.rpc.connection import Connection
from schooner.rpc.messages import ReplicaInfo
from schooner.rpc.transport import connect

#: The Ray node this process runs on (Ray backend; empty on the embedded runtime). A replica
#: on the same node is dialled on its Unix socket instead of TCP.
_local_node_id = os.environ.get("SCHOONER_NODE_ID", "")


def set_local_node_id(node_id: str) -> None:
    global _local_node_id
    _local_node_id = node_id


def dial(replica: ReplicaInfo) -> ReplicaInfo:
    """``replica`` with the address this process should dial: its Unix socket when it runs
    on this node, else the address it was published with (TCP across nodes)."""
    if replica.local_address and replica.node_id and replica.node_id == _local_node_id:
        return dataclasses.replace(replica, address=replica.local_address)
    return replica


class ConnectionPool:
    """Opens connections on first use and reuses them; concurrent openers share one attempt."""

    def __init__(self) -> None:
        self._conns: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Future[Connection]] = {}

    def get_nowait(self, address: str) -> Connection | None:
        conn = self._conns.get(address)
        return conn if conn is not None and conn.is_open else None

    async def get(self, address: str) -> Connection:
        conn = self._conns.get(address)
        if conn is not None and conn.is_open:
            return conn
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._open(address))
            self._connecting[address] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(address, None))
        return await asyncio.shield(pending)

    async def _open(self, address: str) -> Connection:
        conn = await connect(address)
        self._conns[address] = conn
        conn.on_close.append(lambda c: self._forget(address, c))
        return conn

    def _forget(self, address: str, conn: Connection) -> None:
        if self._conns.get(address) is conn:
            del self._conns[address]

    def close(self, address: str | None = None) -> None:
        targets = [address] if address else list(self._conns)
        for addr in targets:
            conn = self._conns.pop(addr, None)
            if conn is not None:
                conn.close()
