"""TEMPORARY: replaced by the rpc-auth branch (TCP with authentication)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from schooner.rpc.connection import Connection, connect_unix

_default_secret: bytes | None = None


def set_default_secret(secret: bytes | None) -> None:
    global _default_secret
    _default_secret = secret


async def connect(
    address: str, handler: object | None = None, *, secret: bytes | None = None
) -> Connection:
    if address.startswith("tcp://"):
        host, port = address[6:].rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: Connection(handler), host, int(port))
        return protocol
    return await connect_unix(address, handler)


async def serve_tcp(
    host: str, port: int, handler_factory: Callable[[], object], *, secret: bytes
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Connection(handler_factory()), host, port)


def format_tcp_address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
