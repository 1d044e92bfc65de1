"""Listening TCP sockets of an instance (HTTP proxy port, admin API, health probes).

The supervisor binds them once and every head it starts inherits them, so
the ports never close while a crashed head is replaced: the proxy keeps
accepting on the HTTP port, and admin requests wait in the backlog until the
new head takes them.
"""

from __future__ import annotations

import socket

from schooner.exceptions import RayServeException

__all__ = ["bind_listening"]


def bind_listening(
    host: str, port: int, *, what: str, flag: str, backlog: int, reuse_port: bool = False
) -> socket.socket:
    """A listening, inheritable TCP socket on ``host:port`` (port 0: any free one).

    ``what`` ("HTTP", "the admin API") and ``flag`` (the option that picks the port)
    make the error for a port in use say what to change. ``reuse_port``: other sockets
    with it may bind the same port (proxies of several Ray nodes on one machine).
    """
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise RayServeException(
            f"Cannot serve {what} on {where}: {exc.strerror or exc}. Is another server "
            f"using the port? Pick another with {flag}."
        ) from exc
    sock.set_inheritable(True)
    return sock
