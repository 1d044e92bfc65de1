"""``schooner run``: serve an application or a config file in the foreground.

It uses a running detached instance when there is one (or the one
``--address`` names), else starts its own, which stops with it. An import
path is imported here and deployed like ``serve.run``; a config file, or any
target with ``--reload``, is deployed through the controller like ``schooner
deploy`` (the instance imports it), and ``--reload`` redeploys whenever a
watched file changes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schooner.admin.client import find_instance
from schooner.cli import reload
from schooner.exceptions import RayServeException

if TYPE_CHECKING:
    from schooner.runtime.head_launch import PendingHead

#: How often ``--reload`` looks for changed files.
RELOAD_POLL_S = 0.5
#: The admin API port an owned instance takes when it is free (so `schooner status` works).
DEFAULT_ADMIN_PORT = 8265


def cmd_run(args: argparse.Namespace) -> int:
    from schooner.cli.config_cmds import is_config_file

    from_config = is_config_file(args.target)
    declarative = from_config or args.reload
    if args.ray_address:  # serve.start() below uses (or starts) the instance on the cluster
        os.environ["SCHOONER_RAY_ADDRESS"] = args.ray_address
    instance = None if args.ray_address else find_instance(args.address, detached_only=True)
    pending = None
    if instance is None and not declarative and not args.ray_address:
        # Boot the instance first: it starts while this process imports the application.
        pending = _launch(args, None)
    from schooner import api
    from schooner.importing import parse_kv_args

    api._pending_head = pending
    kv_args = parse_kv_args(args.args)
    document: dict[str, Any] | None = None
    if declarative:
        document = _document(args, kv_args, from_config)
    if instance is not None:
        api._attach(instance)
        if from_config and document is not None:
            _warn_unapplied_http_options(document)
    elif pending is None and not args.ray_address:
        api._pending_head = _launch(args, document if from_config else None)
    stop = threading.Event()
    lost = threading.Event()  # the instance went away under us
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deployed: list[str] = []  # filled as applications are deployed
    try:
        if document is not None:
            _run_declarative(args, kv_args, from_config, document, deployed, stop, lost)
        else:
            _run_imported(args, kv_args, deployed, stop, lost)
            _print_serving(deployed)
            while not stop.wait(0.5):
                pass
        if lost.is_set():
            print("The Schooner instance stopped; exiting.", flush=True)
            return 1
        print("Shutting down...", flush=True)
    finally:
        if lost.is_set():
            api._disconnect(stop=False)
        elif api.attached_instance() is not None:
            for name in deployed:  # only what this command deployed: the instance is shared
                api.delete(name)
            api._disconnect(stop=False)
        else:
            api._abandon_pending_head()
            api.shutdown()
    return 0


def _warn_unapplied_http_options(document: dict[str, Any]) -> None:
    """A config's http_options do not change an instance that already runs: say so."""
    from schooner import api
    from schooner.cli.config_cmds import unapplied_http_options

    running = api._controller_call("details").get("http_options") or {}
    warning = unapplied_http_options(document, running)
    if warning:
        print(f"Warning: {warning}", file=sys.stderr, flush=True)


def _watch_instance(stop: threading.Event, lost: threading.Event) -> None:
    """Stop this command if the instance it uses goes away (``schooner shutdown``, a crash)."""
    from schooner import _core

    def gone() -> None:
        lost.set()
        stop.set()

    _core.get_core().on_lost(gone)


def _launch(args: argparse.Namespace, document: dict[str, Any] | None) -> PendingHead:
    """Start an instance this command owns; a config file's instance options win over the
    flags' defaults."""
    from schooner.cli.main import parse_resources
    from schooner.runtime.head_launch import launch_head

    host, port, location = args.host, args.port, "EveryNode"
    http_options: dict[str, Any] = {}
    grpc_options: dict[str, Any] | None = None
    if document is not None:
        from schooner.schema import parse_config_document

        parsed = parse_config_document(document)
        if "http_options" in parsed.model_fields_set:
            host, port = parsed.http_options.host or host, parsed.http_options.port
            http_options = parsed.http_options.model_dump(mode="json", exclude={"location"})
        location = parsed.proxy_location.value
        if "grpc_options" in parsed.model_fields_set:
            grpc_options = parsed.grpc_options.model_dump(mode="json")
    return launch_head(
        http_options=http_options,
        grpc_options=grpc_options,
        http_host=host,
        http_port=port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        resources=parse_resources(args.resources),
        admin_port=_admin_port(args.admin_port),
        metrics_port=args.metrics_port,
        proxy_location=location,
    )


def _document(args: argparse.Namespace, kv_args: dict[str, str], from_config: bool) -> Any:
    from schooner.cli.config_cmds import config_from_target

    base = Path.cwd()
    if from_config:
        return config_from_target(args.target, kv_args, base)
    target = args.target
    module, sep, attr = target.rpartition(":")
    if sep and module.endswith(".py"):
        target = f"{os.path.abspath(module)}:{attr}"
    app: dict[str, Any] = {
        "name": args.name,
        "route_prefix": args.route_prefix,
        "import_path": target,
        "runtime_env": {"working_dir": str(Path(args.app_dir).resolve())},
    }
    if kv_args:
        app["args"] = kv_args
    document = {"applications": [app]}
    from schooner.schema import parse_config_document

    parse_config_document(document)
    return document


def _admin_port(requested: int | None) -> int | None:
    """The admin API port for an instance this command owns: as asked, or 8265 when free."""
    if requested is not None:
        return None if requested < 0 else requested
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", DEFAULT_ADMIN_PORT))
        except OSError:
            return None
    return DEFAULT_ADMIN_PORT


def _run_imported(
    args: argparse.Namespace,
    kv_args: dict[str, str],
    deployed: list[str],
    stop: threading.Event,
    lost: threading.Event,
) -> None:
    import schooner as serve
    from schooner import api
    from schooner.importing import build_application, import_attr

    try:
        target = import_attr(args.target, args.app_dir)
        app = build_application(target, kv_args, args.target)
    except BaseException:
        api._abandon_pending_head()
        raise
    serve.start()
    _watch_instance(stop, lost)
    deployed.append(args.name)
    serve.run(app, name=args.name, route_prefix=args.route_prefix)


def _run_declarative(
    args: argparse.Namespace,
    kv_args: dict[str, str],
    from_config: bool,
    document: Any,
    deployed: list[str],
    stop: threading.Event,
    lost: threading.Event,
) -> None:
    """Deploy ``document`` next to whatever else the instance runs (merged into its
    config, not replacing it); with ``--reload``, redeploy on every change."""
    import schooner as serve
    from schooner import api

    serve.start()
    _watch_instance(stop, lost)
    names: list[str] = api._controller_call("apply_config", document, False, True)
    deployed[:] = names
    _wait_and_report(names, stop)
    if not args.reload:
        while not stop.wait(0.5):
            pass
        return
    roots = _watch_roots(document)
    if from_config:
        roots.append(Path(args.target).resolve())
    print(f"Watching {', '.join(map(str, roots))} for changes.", flush=True)
    before = reload.snapshot(roots)
    while not stop.wait(RELOAD_POLL_S):
        after = reload.snapshot(roots)
        changed = reload.changed_files(before, after)
        if not changed:
            continue
        before = after
        shown = ", ".join(os.path.relpath(p) for p in changed[:3])
        print(f"Change detected in {shown}; redeploying.", flush=True)
        try:
            if from_config:  # the file itself may have changed
                document = _document(args, kv_args, True)
            names = api._controller_call("apply_config", document, True, True)
        except RayServeException as exc:
            print(f"Not redeployed: {exc}", flush=True)
            continue
        for name in set(deployed) - set(names):  # dropped from the file
            api.delete(name, _blocking=False)
        deployed[:] = names
        _wait_and_report(names, stop)


def _watch_roots(document: Any) -> list[Path]:
    roots: list[Path] = []
    apps = document.get("applications") or [document]
    for app in apps:
        wd = (app.get("runtime_env") or {}).get("working_dir")
        if isinstance(wd, str) and "://" not in wd:
            roots.append(Path(wd))
    return sorted(set(roots)) or [Path.cwd()]


def _wait_and_report(names: list[str], stop: threading.Event) -> None:
    """Wait until every application settles; say where it serves or why it failed."""
    from schooner import api

    pending = set(names)
    while pending and not stop.is_set():
        for name in sorted(pending):
            state = api._controller_call("wait_app", name, 0.5, "ready", timeout_s=30)
            if state == "DEPLOYING":
                continue
            pending.discard(name)
            if state == "RUNNING":
                _print_serving([name])
            else:
                details = api._controller_call("details")
                app = details["applications"].get(name, {})
                print(f"Application '{name}' is {state}: {app.get('message', '')}", flush=True)


def _print_serving(names: list[str]) -> None:
    from schooner import api

    details = api._controller_call("details")
    for name in names:
        app = details["applications"].get(name) or {}
        prefix = app.get("route_prefix")
        where = (
            f"{api.http_address()}{'' if prefix in (None, '/') else prefix}"
            if prefix is not None and api.http_address()
            else "(no HTTP route)"
        )
        print(f"Schooner is serving application '{name}' at {where} (Ctrl-C to stop)", flush=True)
