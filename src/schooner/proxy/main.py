"""Entry point of a proxy process: ``python -m schooner.proxy.main``.

Serves HTTP or HTTPS (:mod:`schooner.proxy.http_server`, on uvloop; TLS from
:mod:`schooner.tls`) on a listening socket inherited from the head, so
several proxy processes can share one port and a restarted proxy takes over
without the port ever closing. It keeps serving while the head restarts, and
registers again with the next head. With ``--grpc-options`` (servicer functions
given), it also serves gRPC (:mod:`schooner.proxy.grpc_proxy`) on the same event loop;
``grpc`` is imported only then.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from schooner import _core, logs, tls
from schooner.exceptions import ServeConfigError
from schooner.proxy import http_server
from schooner.proxy.app import ProxyApp
from schooner.proxy.observer import RequestObserver
from schooner.runtime.lifeline import watch_parent
from schooner.runtime.loop import new_event_loop
from schooner.runtime.session import Session
from schooner.telemetry import reporter, tracing

logger = logging.getLogger("schooner.proxy")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schooner-proxy")
    parser.add_argument("--session", required=True)
    parser.add_argument("--http-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--root-path", default="")
    parser.add_argument("--keep-alive-s", type=int, default=90)
    parser.add_argument("--request-timeout-s", type=float, default=None)
    parser.add_argument(
        "--max-request-body-bytes", type=int, default=http_server.DEFAULT_MAX_REQUEST_BODY_BYTES
    )
    parser.add_argument("--ssl-certfile", default=None)
    parser.add_argument("--ssl-keyfile", default=None)
    parser.add_argument("--ssl-ca-certs", default=None)
    parser.add_argument(
        "--controller-address", default=None, help="tcp://host:port (a proxy on a Ray node)"
    )
    parser.add_argument("--grpc-options", default=None, help="gRPCOptions as JSON")
    # ssl_keyfile_password comes in the environment (tls.PASSWORD_ENV), not on the command line.
    return parser.parse_args(argv)


def _ssl_context(args: argparse.Namespace, password: str | None) -> ssl.SSLContext | None:
    """The TLS context for ``--ssl-*`` (the head checked the files; they may have changed)."""
    options = {
        "ssl_certfile": args.ssl_certfile,
        "ssl_keyfile": args.ssl_keyfile,
        "ssl_keyfile_password": password,
        "ssl_ca_certs": args.ssl_ca_certs,
    }
    return tls.ssl_context_for(options)


async def _serve(
    args: argparse.Namespace, session: Session, ssl_context: ssl.SSLContext | None
) -> None:
    loop = asyncio.get_running_loop()
    node_id = os.environ.get("SCHOONER_NODE_ID") or None  # set on a Ray cluster
    node_ip = os.environ.get("SCHOONER_NODE_IP") or "127.0.0.1"
    worker_id = f"proxy-{node_id or 'local'}-{os.getpid()}"
    reporter.identify("proxy", worker_id, node_ip)
    tracing.setup("proxy", worker_id, session.logs)
    core = await _core.Core.connect(session, address=args.controller_address)
    _core.set_core(core)
    sock = socket.socket(fileno=args.http_fd)
    host, port = sock.getsockname()[:2]
    app = ProxyApp(
        core,
        root_path=args.root_path,
        server=(str(host), int(port)),
        request_timeout_s=args.request_timeout_s,
        scheme="http" if ssl_context is None else "https",
        observer=RequestObserver(node_id or "", node_ip),
    )
    # Take connections only once the route table is known (a restarted instance may already
    # have applications running: an early request must not get a 404).
    await core.registry.wait_for_snapshot("routes", 10)

    # The instance's logging config, when a config file's top-level logging_config changes it.
    # (None until a config file sets one: the proxy keeps the one it started with.)
    def apply_logging_config(config: dict[str, Any] | None) -> None:
        if config is not None:
            logs.configure_process_logging(config)

    core.registry.subscribe("logging_config", apply_logging_config)
    grpc_server = None
    if args.grpc_options:
        grpc_server = await _start_grpc(args, core, app, str(host), node_id or "", node_ip)
    server = await http_server.serve(
        app.handle,
        sock,
        keep_alive_s=args.keep_alive_s,
        max_body_bytes=args.max_request_body_bytes,
        too_large_hint="Raise it with http_options.max_request_body_bytes.",
        ssl_context=ssl_context,
        on_websocket=app.handle_websocket,
    )
    stopped = asyncio.Event()
    watch_parent(args.lifeline_fd, lambda: loop.call_soon_threadsafe(stopped.set))
    actor_id, _, worker_id = os.environ.get("SCHOONER_PROXY_ACTOR", "").partition(" ")
    info = {
        "pid": os.getpid(),
        "actor_id": actor_id,
        "worker_id": worker_id,
        "log_file_path": str(logs.current_log_file() or session.logs / "proxy.log"),
    }
    core.keep_connected(on_reconnect=lambda conn: conn.call("register_proxy", node_id, info))
    core.on_lost(stopped.set)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await core.controller.call("register_proxy", node_id, info)
    await stopped.wait()
    if grpc_server is not None:
        await grpc_server.stop(0)
    server.close()
    core.close()


async def _start_grpc(
    args: argparse.Namespace, core: _core.Core, app: ProxyApp, host: str, node_id: str, node_ip: str
) -> Any:
    """The gRPC server (None, logged, if it cannot start: HTTP goes on being served)."""
    from schooner.grpc_servicers import import_like_the_starter, load_servicer_functions
    from schooner.instance_config import gRPCOptions
    from schooner.proxy.grpc_proxy import GrpcProxy, start_grpc_server
    from schooner.proxy.observer import GrpcObserver

    options = gRPCOptions.model_validate_json(args.grpc_options)
    import_like_the_starter()  # the servicers' modules import as where it was started
    try:
        functions = load_servicer_functions(options.grpc_servicer_functions)
        proxy = GrpcProxy(
            core, app, options, GrpcObserver(node_id, node_ip, app.observer.access_log)
        )
        return await start_grpc_server(
            proxy,
            options,
            functions,
            host,
            reuse_port=args.controller_address is not None,
        )
    except Exception:
        logger.exception("cannot serve gRPC on port %d; serving HTTP only", options.port)
        return None


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    session = Session.open(Path(args.session))
    logs.setup_process_logging(session.logs, "proxy", "proxy")
    try:
        ssl_context = _ssl_context(args, os.environ.pop(tls.PASSWORD_ENV, None))
    except ServeConfigError as exc:
        logger.error("%s", exc)
        logging.shutdown()
        os._exit(1)
    loop = new_event_loop()
    loop.run_until_complete(_serve(args, session, ssl_context))
    logs.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
