"""``schooner start`` and ``schooner shutdown``: a long-running (detached) instance."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from schooner.admin.client import AdminClient, AdminError, AdminUnreachable
from schooner.exceptions import RayServeException
from schooner.runtime.launcher import pid_alive

#: How long ``schooner shutdown`` waits for the instance's processes to exit.
SHUTDOWN_WAIT_S = 60.0


def cmd_start(args: argparse.Namespace) -> int:
    from schooner.cli.main import parse_resources
    from schooner.runtime.head_launch import launch_head

    if args.ray_address:
        return _start_on_ray(args)

    address = f"http://{args.admin_host}:{args.admin_port}"
    try:
        info = AdminClient(address, timeout_s=2.0).instance()
    except AdminUnreachable:
        pass
    except AdminError:
        pass  # something else listens there: binding will fail with a clear message
    else:
        raise RayServeException(
            f"A Schooner instance is already running at {address} (pid {info.get('pid')}). "
            "Stop it with `schooner shutdown`, or start another with a different --admin-port "
            "and --http-port."
        )
    head = launch_head(
        http_host=args.http_host,
        http_port=args.http_port,
        http_options=_tls_options(args),
        grpc_options=_grpc_options(args),
        detached=True,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        resources=parse_resources(args.resources),
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        proxy_location=args.proxy_location,
        probe_port=args.probe_port,
        checkpoint_path=args.checkpoint_path,
        metrics_port=args.metrics_port,
    ).wait_ready()
    head.release()
    admin = head.admin_url or address
    hint = "" if admin == "http://127.0.0.1:8265" else f" -a {admin}"
    grpc = ""
    if args.grpc_servicer_functions and args.proxy_location != "Disabled":
        grpc = f"  gRPC:      {head.http_host}:{args.grpc_port}\n"
    http = (
        f"{head.http_scheme}://{head.http_host}:{head.http_port}"
        if args.proxy_location != "Disabled"
        else "(no HTTP proxy)"
    )
    print(
        f"Started a Schooner instance (pid {head.process.pid}).\n"
        f"  HTTP:      {http}\n"
        f"{grpc}"
        f"  Admin API: {admin}\n"
        f"  Logs:      {head.session.logs}\n"
        f"Deploy with `schooner deploy{hint} CONFIG.yaml`; stop it with "
        f"`schooner shutdown{hint}`.",
        flush=True,
    )
    if args.block:
        return _block(head.process)
    return 0


def _start_on_ray(args: argparse.Namespace) -> int:
    """``schooner start --ray-address``: the instance runs on the Ray cluster (in a detached
    actor on its head node) and outlives this command."""
    import ray

    from schooner.rpc.transport import instance_environment
    from schooner.runtime.ray_backend import host
    from schooner.runtime.ray_backend.names import host_exists

    ray.init(address=args.ray_address, logging_level="WARNING", log_to_driver=False)
    existing = host_exists()
    env = instance_environment()
    if args.grpc_servicer_functions:  # the proxy actors import them as this command would
        from schooner.grpc_servicers import SYS_PATH_ENV, starter_sys_path

        env[SYS_PATH_ENV] = starter_sys_path()
    info = host.attach(
        {
            "http_host": args.http_host,
            "http_port": args.http_port,
            "http_options": _tls_options(args),
            "grpc_options": _grpc_options(args),
            "admin_host": args.admin_host,
            "admin_port": args.admin_port,
            "metrics_port": args.metrics_port,
            "proxy_location": args.proxy_location,
            "checkpoint_path": args.checkpoint_path,
            "env": env,
        },
        create=True,
    )
    assert info is not None
    admin = info["admin_url"]
    hint = "" if admin == "http://127.0.0.1:8265" else f" -a {admin}"
    print(
        f"{'Using the' if existing else 'Started a'} Schooner instance on the Ray cluster at "
        f"{args.ray_address}.\n"
        f"  HTTP:      {info['http_scheme']}://{info['http_host']}:{info['http_port']}\n"
        f"  Admin API: {admin}\n"
        f"  Logs:      {info['session']}/logs (on the Ray head node)\n"
        f"Deploy with `schooner deploy{hint} CONFIG.yaml`; stop it with "
        f"`schooner shutdown{hint}`.",
        flush=True,
    )
    if args.block:
        return _block_on_ray(host_exists)
    return 0


def _block_on_ray(exists: Callable[[], bool]) -> int:
    """``--block`` on Ray: until the instance is gone; SIGTERM or Ctrl-C shuts it down."""
    stop = {"asked": False}

    def ask(_signum: int, _frame: object) -> None:
        stop["asked"] = True

    signal.signal(signal.SIGTERM, ask)
    signal.signal(signal.SIGINT, ask)
    while exists() and not stop["asked"]:
        time.sleep(0.5)
    if stop["asked"]:
        import schooner as serve

        serve.shutdown()
    print("The Schooner instance stopped.", flush=True)
    return 0


def _grpc_options(args: argparse.Namespace) -> dict[str, Any]:
    """``grpc_options`` from the ``--grpc-*`` flags (as Ray's ``serve start``)."""
    from schooner.instance_config import gRPCOptions

    return gRPCOptions(
        port=args.grpc_port,
        grpc_servicer_functions=list(args.grpc_servicer_functions or []),
        enable_reflection=args.grpc_enable_reflection,
    ).model_dump(mode="json")


def _tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """``http_options``' ``ssl_*`` fields from the ``--ssl-*`` flags (none: plain HTTP)."""
    if not (args.ssl_certfile or args.ssl_keyfile):
        return {}
    from schooner.tls import PASSWORD_ENV

    password = args.ssl_keyfile_password or os.environ.get(PASSWORD_ENV)
    return {
        "ssl_certfile": args.ssl_certfile,
        "ssl_keyfile": args.ssl_keyfile,
        "ssl_keyfile_password": password,
        "ssl_ca_certs": args.ssl_ca_certs,
    }


def _block(process: subprocess.Popen[bytes]) -> int:
    """``--block``: stay in the foreground until the instance stops (for containers);
    SIGTERM or Ctrl-C here shuts it down gracefully."""

    def forward(signum: int, _frame: object) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = process.wait()
    print(f"The Schooner instance stopped (exit code {code}).", flush=True)
    return 0 if code == 0 else 1


def cmd_shutdown(args: argparse.Namespace) -> int:
    client = AdminClient(args.address)
    info = client.instance()
    if not args.yes:
        if not sys.stdin.isatty():
            raise RayServeException(
                f"This stops the Schooner instance at {client.url} and every application on "
                "it. Pass -y to confirm without a prompt."
            )
        answer = input(
            f"Stop the Schooner instance at {client.url} and every application on it? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("Aborted.")
            return 1
    client.shutdown()
    pid = int(info.get("supervisor_pid") or info["pid"])  # the supervisor exits last
    deadline = time.monotonic() + SHUTDOWN_WAIT_S
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        raise RayServeException(
            f"The instance (pid {pid}) did not stop within {SHUTDOWN_WAIT_S:.0f} s; see its "
            f"logs in {info.get('session')}/logs."
        )
    print(f"Stopped the Schooner instance at {client.url}.")
    return 0
