"""Where RPC connections go: Unix sockets on one machine, TCP across machines.

An address is a Unix socket path (it starts with ``/``) or ``tcp://HOST:PORT``
(IPv6 as ``tcp://[::1]:PORT``); :func:`connect` takes either.

- **Unix sockets** are not authenticated: they live in the session directory,
  mode 0700 and owned by the user, and the sockets themselves are mode 0600,
  so only the user's own processes can connect.
- **TCP** connections are authenticated both ways with the instance secret
  before any frame is read (see :mod:`schooner.rpc.auth`); a peer without the
  secret never gets a pickle decoded. Optionally TLS wraps the connection (the
  handshake then runs inside it). TCP_NODELAY is on (asyncio and uvloop both
  set it on every TCP transport; the tests check it).

TLS for every TCP connection of an instance is one setting away: with
``SCHOONER_RPC_TLS_CERTFILE`` and ``SCHOONER_RPC_TLS_KEYFILE`` (PEM) in the
environment, servers present that certificate and clients require TLS, checking
the server's certificate against ``SCHOONER_RPC_TLS_CA_CERTS`` (default: the
certificate itself, for a self-signed one shared by the cluster). Host names are
not checked (peers are addressed by IP); the certificate chain is.

Code that only has an address string connects with the process-wide default
secret: :func:`set_default_secret`, or else the ``SCHOONER_SECRET`` environment
variable (hex), read once, on first use. That variable holds the key to every
replica of the instance: never log it, print it or copy it into error messages
or process listings (pass it in the environment of child processes, not on
their command line).
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_module
from collections.abc import Callable

from schooner.rpc import auth
from schooner.rpc.connection import Connection, connect_unix

__all__ = [
    "SECRET_ENV_VAR",
    "connect",
    "default_secret",
    "format_tcp_address",
    "parse_tcp_address",
    "serve_tcp",
    "set_default_secret",
]

TCP_SCHEME = "tcp://"
#: The environment variable that may hold the default secret, hex-encoded. Never log it.
SECRET_ENV_VAR = "SCHOONER_SECRET"

#: TLS for TCP connections, from the environment (see the module docstring).
TLS_ENV_VARS = (
    "SCHOONER_RPC_TLS_CERTFILE",
    "SCHOONER_RPC_TLS_KEYFILE",
    "SCHOONER_RPC_TLS_CA_CERTS",
)

_default_secret: bytes | None = None
_default_secret_loaded = False
_tls_contexts: dict[bool, ssl_module.SSLContext | None] = {}


def default_tls(server: bool) -> ssl_module.SSLContext | None:
    """The TLS context TCP connections use when given none: from ``SCHOONER_RPC_TLS_*``
    (read once), or None (plain TCP, still authenticated by the handshake)."""
    if server not in _tls_contexts:
        certfile = os.environ.get(TLS_ENV_VARS[0])
        keyfile = os.environ.get(TLS_ENV_VARS[1])
        context = None
        if certfile or keyfile:
            if not (certfile and keyfile):
                raise ValueError(
                    f"TLS for RPC needs both {TLS_ENV_VARS[0]} and {TLS_ENV_VARS[1]} (PEM files)"
                )
            if server:
                context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
                context.load_cert_chain(certfile, keyfile)
            else:
                cafile = os.environ.get(TLS_ENV_VARS[2]) or certfile
                context = ssl_module.create_default_context(cafile=cafile)
                context.check_hostname = False  # peers are addressed by IP; the chain is checked
        _tls_contexts[server] = context
    return _tls_contexts[server]


def tls_environment() -> dict[str, str]:
    """The ``SCHOONER_RPC_TLS_*`` variables of this process (for the processes it starts)."""
    return {k: os.environ[k] for k in TLS_ENV_VARS if os.environ.get(k)}


#: Instance-wide settings every process of an instance reads from its environment
#: (metrics, logging, tracing). Processes Ray starts do not inherit the environment of
#: the process that asked for them, so these are handed on explicitly.
SETTINGS_ENV = (
    "SCHOONER_METRICS",
    "SCHOONER_METRICS_REPORT_INTERVAL_S",
    "SCHOONER_LOGGING_CONFIG",
    "SCHOONER_LOG_ROTATION_MAX_BYTES",
    "SCHOONER_LOG_ROTATION_BACKUP_COUNT",
    "RAY_ROTATION_MAX_BYTES",
    "RAY_ROTATION_BACKUP_COUNT",
    "SCHOONER_TRACING_CONFIG",
    "SCHOONER_GRPC_SYS_PATH",  # where the proxies import grpc_servicer_functions from
)


def forwarded_environment() -> dict[str, str]:
    """What a process this one starts on a cluster must be given: RPC TLS
    (:func:`tls_environment`) and the instance-wide settings (:data:`SETTINGS_ENV`)."""
    env = tls_environment()
    env.update({name: os.environ[name] for name in SETTINGS_ENV if name in os.environ})
    return env


def instance_environment() -> dict[str, str]:
    """What an instance started from here on a cluster takes from this process's
    environment: RPC TLS, the instance-wide settings and the admin API's token
    (``SCHOONER_ADMIN_TOKEN``)."""
    env = forwarded_environment()
    token = os.environ.get("SCHOONER_ADMIN_TOKEN")
    if token:
        env["SCHOONER_ADMIN_TOKEN"] = token
    return env


def set_default_secret(secret: bytes | None) -> None:
    """Use ``secret`` when :func:`connect` is given none (None: no default, and the
    environment variable is not consulted any more)."""
    global _default_secret, _default_secret_loaded
    _default_secret = None if secret is None else auth.check_secret(secret)
    _default_secret_loaded = True


def default_secret() -> bytes | None:
    """The default secret: the one set, else ``$SCHOONER_SECRET`` (hex) read on first use."""
    global _default_secret, _default_secret_loaded
    if not _default_secret_loaded:
        value = os.environ.get(SECRET_ENV_VAR)
        if value:
            try:
                _default_secret = bytes.fromhex(value)
            except ValueError:
                # Do not echo the value: it is (or was meant to be) a secret.
                raise ValueError(f"{SECRET_ENV_VAR} is not a hex string") from None
        _default_secret_loaded = True
    return _default_secret


def format_tcp_address(host: str, port: int) -> str:
    """``tcp://HOST:PORT``, with an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{TCP_SCHEME}{host}:{port}"


def parse_tcp_address(address: str) -> tuple[str, int]:
    """(host, port) of a ``tcp://HOST:PORT`` address (IPv6 host without its brackets)."""
    if not address.startswith(TCP_SCHEME):
        raise ValueError(f"not a tcp:// address: {address!r}")
    rest = address[len(TCP_SCHEME) :]
    host, sep, port_text = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets, as tcp://[::1]:PORT: {address!r}")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected tcp://HOST:PORT with a port in 1-65535: {address!r}")
    return host, int(port_text)


async def connect(
    address: str,
    handler: object | None = None,
    *,
    secret: bytes | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> Connection:
    """Open an RPC connection to ``address`` (a Unix socket path or ``tcp://HOST:PORT``).

    Over TCP the two ends authenticate each other with ``secret`` (default:
    :func:`default_secret`; ValueError if there is none) before ``handler``'s
    ``on_connect`` runs or any frame is read. Raises :class:`auth.AuthenticationError`
    when the secrets differ, :class:`auth.HandshakeError` when the server is no
    Schooner RPC server or does not finish the handshake in time, and OSError
    (ConnectionRefusedError, ...) when the address cannot be reached.
    """
    if address.startswith("/"):
        if ssl is not None:
            raise ValueError("TLS is for tcp:// addresses; Unix sockets do not use it")
        return await connect_unix(address, handler)
    host, port = parse_tcp_address(address)
    key = auth.check_secret(secret if secret is not None else default_secret())
    if ssl is None:
        ssl = default_tls(server=False)
    loop = asyncio.get_running_loop()
    conn = Connection(handler)
    handshake = auth.ClientHandshake(key, conn)
    transport, _ = await loop.create_connection(
        lambda: handshake,
        host,
        port,
        ssl=ssl,
        server_hostname=host if ssl is not None else None,
        ssl_handshake_timeout=auth.HANDSHAKE_TIMEOUT_S if ssl is not None else None,
    )
    try:
        async with asyncio.timeout(auth.HANDSHAKE_TIMEOUT_S):
            return await asyncio.shield(handshake.done)
    except TimeoutError:
        handshake.done.cancel()  # nobody waits for it any more
        transport.abort()
        raise auth.HandshakeError(
            f"{address} did not complete the RPC handshake within {auth.HANDSHAKE_TIMEOUT_S:g} s"
        ) from None
    except BaseException:
        if not handshake.done.done():
            handshake.done.cancel()
            transport.abort()
        elif handshake.done.exception() is not None:
            transport.abort()
        elif handshake.done.result().is_open:  # cancelled just as the handshake finished
            handshake.done.result().close()
        raise


async def serve_tcp(
    host: str,
    port: int,
    handler_factory: Callable[[], object],
    *,
    secret: bytes,
    ssl: ssl_module.SSLContext | None = None,
) -> asyncio.Server:
    """Listen on ``host:port`` (port 0: any free port, read it from ``server.sockets``).

    Each client that passes the handshake (with ``secret``) gets a new handler
    from ``handler_factory``; others are dropped and never reach a handler. ``ssl``:
    by default :func:`default_tls` (``SCHOONER_RPC_TLS_*``).
    """
    key = auth.check_secret(secret)
    if ssl is None:
        ssl = default_tls(server=True)
    loop = asyncio.get_running_loop()

    def protocol() -> auth.ServerHandshake:
        return auth.ServerHandshake(key, lambda: Connection(handler_factory()))

    return await loop.create_server(
        protocol,
        host,
        port,
        ssl=ssl,
        ssl_handshake_timeout=auth.HANDSHAKE_TIMEOUT_S if ssl is not None else None,
    )
