"""Entry point of the head process: ``python -m schooner.controller.head``.

The head runs the controller and the admin API. It is started by the
instance's supervisor (:mod:`schooner.runtime.supervisor`), inherits the
listening sockets it bound (HTTP, admin, probes) and its lifeline, starts the
proxy and the replicas (tied to the supervisor's lifeline, so they outlive a
crash of the head) and stops them all on shutdown.

Goal state is checkpointed (:mod:`schooner.controller.checkpoint`). A head
that finds a checkpoint at start-up, because the previous head crashed or the
instance was restarted with the same ``--checkpoint-path``, recovers it before
it accepts connections, and re-adopts the proxy and replicas that still run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from schooner import tls
from schooner.admin.server import (
    AdminServer,
)
from schooner.checkpoint import CheckpointStore, open_store
from schooner.controller import checkpoint, ownership
from schooner.controller.app_stats import AppSample, sample_app
from schooner.controller.controller import Controller
from schooner.controller.declarative import DeclarativeConfig
from schooner.controller.details import instance_details
from schooner.controller.head_api import AdminAPI, ControllerSession
from schooner.controller.metrics import controller_series
from schooner.controller.rollout import RolloutOptions
from schooner.controller.traffic_config import RecentRates
from schooner.exceptions import RayServeException
from schooner.instance_config import gRPCOptions
from schooner.logs import setup_process_logging
from schooner.rpc.connection import serve_unix
from schooner.rpc.transport import serve_tcp
from schooner.runtime.backend import ClusterBackend
from schooner.runtime.launcher import (
    AdoptedProcess,
    ProcessHandle,
    ProcessSpec,
    SubprocessLauncher,
    is_session_process,
    pid_alive,
    session_processes,
)
from schooner.runtime.lifeline import watch_parent
from schooner.runtime.loop import new_event_loop
from schooner.runtime.resources import ResourcePool
from schooner.runtime.session import Session
from schooner.runtime.sockets import bind_listening
from schooner.runtime.supervisor import report
from schooner.telemetry import recorder, reporter
from schooner.telemetry.exposition import MetricsStore, write_service_discovery

logger = logging.getLogger("schooner.controller")

SHUTDOWN_TIMEOUT_S = 30.0
#: In the session directory: a Prometheus ``file_sd_configs`` file naming the metrics
#: endpoints (Ray writes ``prom_metrics_service_discovery.json`` likewise).
SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"


_PROXY_MODULE = "schooner.proxy.main"


def cluster_backend(args: argparse.Namespace, proxy_args: list[str]) -> ClusterBackend:
    """The Ray backend for ``--ray-address`` (Ray is imported only here)."""
    from schooner.runtime.ray_backend.head_side import connect_backend

    return connect_backend(args, proxy_args)


class Head:
    """The head process's state: controller, admin API, proxy process, checkpoints."""

    def __init__(
        self,
        args: argparse.Namespace,
        session: Session,
        ssl_keyfile_password: str | None = None,
        cuda_visible_devices: str | None = None,
    ) -> None:
        """``ssl_keyfile_password`` and ``cuda_visible_devices`` come from the environment
        the head was started with, read once at start-up (see :func:`main`)."""
        self.args = args
        self.session = session
        self.http_options: dict[str, Any] = {
            **json.loads(args.http_options),
            "host": args.http_host,
            "port": args.http_port,
            "root_path": args.root_path,
        }
        if ssl_keyfile_password:  # comes in the environment, not on the command line
            self.http_options["ssl_keyfile_password"] = ssl_keyfile_password
        if args.ray_address:  # the builder of config apps checks runtime_envs for Ray
            from schooner.runtime_env.spec import BACKEND_ENV

            os.environ[BACKEND_ENV] = "ray"
        self.cluster = cluster_backend(args, self._proxy_options()) if args.ray_address else None
        self.launcher = SubprocessLauncher()  # after the cluster: it sets SCHOONER_NODE_ID
        self.controller = Controller(
            session,
            self.launcher,
            ResourcePool.detect(
                args.num_cpus,
                args.num_gpus,
                json.loads(args.resources),
                cuda_visible_devices=cuda_visible_devices,
            )
            if self.cluster is None
            else ResourcePool({}),
            args.lifeline_fd,
            backend=self.cluster,
        )
        self.declarative = DeclarativeConfig(self.controller, Path.cwd(), None)
        reporter.identify("controller", "controller", "127.0.0.1")
        recorder.add_collector(lambda: controller_series(self.controller))
        #: Every process's metrics, served at the admin API's /metrics and --metrics-port.
        self.metrics = MetricsStore(session.root.name, local=reporter.identity())
        #: Recent readings of each application's counts (``schooner traffic``'s rates).
        self.rates = RecentRates(self.metrics.snapshots)
        rollouts = self.controller.rollouts
        rollouts.sample = self.sample_app
        rollouts.metrics_enabled = recorder.ENABLED
        # After a restart, a step's baseline waits until every process has reported again.
        rollouts.settle_s = 2 * reporter.INTERVAL_S + 0.5
        self.metrics_server: AdminServer | None = None
        self.metrics_url: str | None = None
        self.checkpoints: checkpoint.Checkpointer | None = None
        self.owner = ownership.Owner.here(str(session.root), args.supervisor_pid or os.getppid())
        self.claim_task: asyncio.Task[None] | None = None
        self.http_socket: socket.socket | None = None
        self.admin: AdminServer | None = None
        self.probes: AdminServer | None = None
        self.admin_url: str | None = None
        self.proxy: ProcessHandle | None = None
        self.stop_requested = asyncio.Event()
        self.fast_stop = False
        #: ``schooner shutdown`` / ``serve.shutdown()``: the checkpoint is cleared too. A stop
        #: by signal keeps it, so a restart with the same checkpoint path recovers.
        self.explicit_stop = False

    def sample_app(self, name: str) -> AppSample:
        """Application ``name``'s cumulative request counts now, from the reported metrics."""
        app = self.controller.apps.get(name)
        ingress = app.spec.ingress if app is not None else ""
        return sample_app(self.metrics.snapshots(), name, ingress, self.controller.wall_clock())

    # -- checkpoints --------------------------------------------------------
    def open_checkpoints(self) -> CheckpointStore:
        """The checkpoint store (``--checkpoint-path``; default: in the session directory),
        claimed for this instance (see :mod:`schooner.controller.ownership`)."""
        store = open_store(self.checkpoint_uri)
        try:
            ownership.claim(store, self.owner)
        except ownership.CheckpointInUse as exc:
            raise RayServeException(f"Checkpoint path {self.checkpoint_uri}: {exc}") from exc
        except Exception as exc:
            raise self._unusable_store(exc) from exc
        self.claim_task = asyncio.get_running_loop().create_task(
            ownership.keep_claim(store, self.owner)
        )
        self.checkpoints = checkpoint.Checkpointer(store, self.controller, self.declarative)
        self.controller.after_tick.append(self.checkpoints.note)
        return store

    @property
    def checkpoint_uri(self) -> str:
        return self.args.checkpoint_path or f"file://{self.session.root / 'checkpoint'}"

    def _unusable_store(self, exc: Exception) -> RayServeException:
        return RayServeException(
            f"Cannot use the checkpoint store {self.checkpoint_uri}: {exc!r}. Check that it is "
            "reachable (or start with another --checkpoint-path)."
        )

    def recover(self, store: CheckpointStore) -> bool:
        """Load the goal state a previous head left, if any; True if there was one."""
        try:
            recovered = checkpoint.load(store)
        except Exception as exc:
            raise self._unusable_store(exc) from exc
        if recovered is None:
            return False
        rebuild = checkpoint.restore(recovered, self.controller, self.declarative)
        for name in rebuild:
            self.declarative.rebuild(name)
        self.adopt_proxy(recovered.state.proxy_pid)
        return True

    def adopt_proxy(self, pid: int | None) -> None:
        """Keep the proxy a previous head started (it reconnects by itself); stop others."""
        root = str(self.session.root)
        if pid is not None and self.local_proxy and is_session_process(pid, _PROXY_MODULE, root):
            self.proxy = AdoptedProcess(pid)
            self._proxy_started()
            self.controller.proxy_status[self.controller.node_id] = "HEALTHY"
            self.controller.proxy_ready.set()
            logger.info("re-adopted the proxy (pid %d)", pid)
        for other in session_processes(root, _PROXY_MODULE):
            if self.proxy is None or other != self.proxy.pid:
                logger.warning("stopping proxy process %d that no record owns", other)
                AdoptedProcess(other).terminate()

    def _proxy_started(self) -> None:
        if self.checkpoints is not None and self.proxy is not None:
            self.checkpoints.proxy_pid = self.proxy.pid

    # -- proxy --------------------------------------------------------------
    def take_http_socket(self) -> None:
        """The HTTP socket the supervisor bound and handed down."""
        sock = socket.socket(fileno=self.args.http_fd)
        sock.set_inheritable(True)
        self.http_socket = sock
        self.args.http_port = sock.getsockname()[1]

    def start_proxy(self) -> None:
        assert self.http_socket is not None
        fd = self.http_socket.fileno()
        self.proxy = self.launcher.launch(
            ProcessSpec(
                module="schooner.proxy.main",
                args=[
                    "--session",
                    str(self.session.root),
                    "--http-fd",
                    str(fd),
                    "--lifeline-fd",
                    str(self.args.lifeline_fd),
                    "--root-path",
                    self.args.root_path,
                    *self._proxy_options(),
                ],
                env=self._proxy_env(),
                pass_fds=(fd, self.args.lifeline_fd),
            )
        )
        self._proxy_started()
        self.controller.proxy_status[self.controller.node_id] = "STARTING"

    def _proxy_options(self) -> list[str]:
        options = []
        timeout = self.http_options.get("request_timeout_s")
        if timeout is not None:
            options += ["--request-timeout-s", str(float(timeout))]
        keep_alive = self.http_options.get("keep_alive_timeout_s")
        if keep_alive is not None:
            options += ["--keep-alive-s", str(int(keep_alive))]
        body_limit = self.http_options.get("max_request_body_bytes")
        if body_limit is not None:
            options += ["--max-request-body-bytes", str(int(body_limit))]
        for field in tls.TLS_FIELDS:
            path = self.http_options.get(field)
            if path:
                options += [f"--{field.replace('_', '-')}", str(path)]
        if self.grpc_options.grpc_servicer_functions:  # else no gRPC server (as Ray)
            options += ["--grpc-options", self.grpc_options.model_dump_json()]
        return options

    @property
    def grpc_options(self) -> gRPCOptions:
        return gRPCOptions.model_validate_json(self.args.grpc_options)

    def _proxy_env(self) -> dict[str, str]:
        password = self.http_options.get("ssl_keyfile_password")
        return {tls.PASSWORD_ENV: str(password)} if password else {}

    def check_tls(self) -> None:
        """Fail start-up (ServeConfigError) if the HTTPS files cannot be used, before the
        proxy tries them."""
        tls.ssl_context_for(self.http_options)

    async def watch_proxy(self) -> None:
        """Restart the proxy if it dies (the listening socket stays open meanwhile)."""
        while not self.stop_requested.is_set():
            await asyncio.sleep(0.2)
            if self.proxy is not None and self.proxy.poll() is not None:
                logger.warning("proxy exited with code %s; restarting it", self.proxy.poll())
                self.controller.proxy_status[self.controller.node_id] = "UNHEALTHY"
                self.start_proxy()

    @property
    def local_proxy(self) -> bool:
        """Whether the head runs the proxy as its child (on a Ray cluster, proxy actors on
        the nodes serve HTTP instead)."""
        return self.serves_http and self.cluster is None

    @property
    def serves_http(self) -> bool:
        return bool(self.args.proxy_location != "Disabled")

    def details(
        self, api_type: str | None = None, include: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        options = {k: v for k, v in self.http_options.items() if k != "location"}
        options["port"] = self.args.http_port
        if options.get("ssl_keyfile_password"):
            options["ssl_keyfile_password"] = "********"  # the REST API does not hand it out
        return instance_details(
            self.controller,
            self.declarative,
            http_options=options,
            grpc_options=self.grpc_options.model_dump(mode="json"),
            proxy_location=self.args.proxy_location,
            controller_pid=os.getpid(),
            api_type=api_type,
            include=include,
        )

    def instance_info(self) -> dict[str, Any]:
        return {
            "session": str(self.session.root),
            "controller_socket": self.session.controller_socket,
            "pid": os.getpid(),
            "supervisor_pid": self.args.supervisor_pid,
            "head_restarts": self.args.restarts,
            "detached": self.args.detached,
            "http_host": self.args.http_host,
            "http_port": self.args.http_port if self.serves_http else None,
            "http_scheme": "https" if self.http_options.get("ssl_certfile") else "http",
            "admin_url": self.admin_url,
            "metrics_url": self.metrics_url,
            "node_id": self.controller.node_id,
            "backend": "ray" if self.cluster is not None else "embedded",
        }

    def delete_app(self, name: str) -> bool:
        self.declarative.forget(name)
        return self.controller.delete_app(name)

    async def delete_all(self) -> None:
        """Delete every application (declarative and imperative) and wait until gone."""
        for name in list(self.controller.apps):
            self.delete_app(name)
        for name in list(self.controller.apps):
            await self.controller.wait_app(name, SHUTDOWN_TIMEOUT_S, "deleted")

    async def start_admin(self) -> None:
        if self.args.admin_fd < 0:
            return
        sock = socket.socket(fileno=self.args.admin_fd)
        self.admin = AdminServer(AdminAPI(self), token=os.environ.get("SCHOONER_ADMIN_TOKEN"))
        await self.admin.start(sock)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.admin_url = f"http://{shown}:{port}"
        if self.args.probe_fd >= 0:
            probe_sock = socket.socket(fileno=self.args.probe_fd)
            self.probes = AdminServer(AdminAPI(self), probes_only=True)
            await self.probes.start(probe_sock)

    async def start_metrics(self) -> None:
        """Serve ``/metrics`` alone on ``--metrics-port``; write the Prometheus
        service-discovery file naming where to scrape: that port if there is one, else
        the admin API (one target: each would export the same series)."""
        targets = []
        if self.admin_url is not None and self.args.metrics_port < 0:
            targets.append(self.admin_url.removeprefix("http://"))
        if self.args.metrics_port >= 0:
            sock = bind_listening(
                self.args.admin_host,
                self.args.metrics_port,
                what="the metrics endpoint",
                flag="--metrics-port",
                backlog=128,
            )
            self.metrics_server = AdminServer(AdminAPI(self), metrics_only=True)
            await self.metrics_server.start(sock)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.metrics_url = f"http://{shown}:{port}/metrics"
            targets.append(f"{shown}:{port}")
        write_service_discovery(self.session.root / SERVICE_DISCOVERY_FILE, targets)

    # -- shutdown -----------------------------------------------------------
    async def shutdown(self) -> None:
        controller = self.controller
        self.declarative.close()
        if self.checkpoints is not None and not self.explicit_stop:
            self.checkpoints.freeze()
        if self.fast_stop:
            controller.begin_shutdown()  # targets drop to zero: nothing is restarted
            controller.kill_all()
        else:
            controller.begin_shutdown()
            try:
                await asyncio.wait_for(controller.stopped.wait(), SHUTDOWN_TIMEOUT_S)
            except TimeoutError:
                logger.warning("replicas did not stop in time; killing them")
                controller.kill_all()
        if self.proxy is not None:
            if self.fast_stop:
                self.proxy.kill()
            else:
                self.proxy.terminate()
        if self.cluster is not None:
            self.cluster.stop_proxies()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alive = (
                controller.live_replicas()
                if self.cluster is not None
                else [p for p in controller.all_pids() if pid_alive(p)]
            )
            if (self.proxy is None or self.proxy.poll() is not None) and not alive:
                break
            await asyncio.sleep(0.02)
            controller.tick()
        if self.proxy is not None:
            self.proxy.kill()
        controller.kill_all()
        controller.stopped.set()
        if self.claim_task is not None:
            self.claim_task.cancel()
        if self.checkpoints is not None:
            if self.explicit_stop:
                await self.checkpoints.clear()
            ownership.release(self.checkpoints.store, self.owner)
            await self.checkpoints.close()

    async def flush(self) -> None:
        """Return once the goal state is in the checkpoint store (before answering a client)."""
        if self.checkpoints is not None:
            await self.checkpoints.flush()

    async def start_rollout(self, app: str, to: str, options: dict[str, Any]) -> dict[str, Any]:
        """Start a rollout (see :mod:`schooner.controller.rollout`); its status as data."""
        status = self.controller.rollouts.start(app, to, RolloutOptions.parse(options))
        self.controller.publish()
        await self.flush()
        return status.to_dict()

    async def rollout_control(self, app: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort`` the rollout of ``app``; its status as data."""
        status = self.controller.rollouts.control(app, action)
        self.controller.publish()
        await self.flush()
        return status.to_dict()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="schooner-head")
    parser.add_argument("--session", required=True)
    parser.add_argument("--http-host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--root-path", default="")
    parser.add_argument("--ready-fd", type=int, default=-1)
    parser.add_argument("--lifeline-fd", type=int, default=-1)
    parser.add_argument("--num-cpus", type=float, default=None)
    parser.add_argument("--num-gpus", type=float, default=None)
    parser.add_argument("--resources", default="{}")
    parser.add_argument("--http-options", default="{}", help="HTTPOptions as JSON (echoed)")
    parser.add_argument("--grpc-options", default="{}", help="gRPCOptions as JSON")
    parser.add_argument("--proxy-location", default="EveryNode")
    parser.add_argument("--admin-host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=-1, help="-1: no admin API")
    parser.add_argument("--probe-port", type=int, default=-1, help="health probes only")
    parser.add_argument("--metrics-port", type=int, default=-1, help="/metrics only")
    parser.add_argument("--detached", action="store_true")
    parser.add_argument("--http-fd", type=int, default=-1, help="bound by the supervisor")
    parser.add_argument("--admin-fd", type=int, default=-1)
    parser.add_argument("--probe-fd", type=int, default=-1)
    parser.add_argument("--supervisor-pid", type=int, default=None)
    parser.add_argument("--recovering", action="store_true", help="the previous head crashed")
    parser.add_argument("--restarts", type=int, default=0, help="heads started after crashes")
    parser.add_argument("--checkpoint-path", default=None)
    # The Ray backend (the secret comes in the environment: SCHOONER_SECRET).
    parser.add_argument("--ray-address", default=None, help="run replicas on this Ray cluster")
    parser.add_argument("--instance-id", default="")
    parser.add_argument("--controller-host", default="127.0.0.1")
    parser.add_argument("--controller-port", type=int, default=0)
    return parser.parse_args(argv)


async def _run(
    args: argparse.Namespace,
    session: Session,
    ssl_keyfile_password: str | None = None,
    cuda_visible_devices: str | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    try:
        head = Head(args, session, ssl_keyfile_password, cuda_visible_devices)
    except RayServeException as exc:
        logger.error("%s", exc)
        report(args.ready_fd, f"ERROR {exc}")
        return 1

    def request_stop(fast: bool) -> None:
        head.fast_stop = head.fast_stop or fast
        head.stop_requested.set()

    if args.lifeline_fd >= 0 and head.cluster is not None:
        # The host actor died: Ray starts another, whose head re-adopts the replica actors
        # (they stop by themselves if the instance is removed instead).
        watch_parent(args.lifeline_fd, lambda: os._exit(1))
    elif args.lifeline_fd >= 0:
        watch_parent(args.lifeline_fd, lambda: loop.call_soon_threadsafe(request_stop, True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, False)
    try:
        if head.local_proxy:
            head.check_tls()
            head.take_http_socket()
        recovered = head.recover(head.open_checkpoints())
        await head.start_admin()
        await head.start_metrics()
    except (RuntimeError, RayServeException) as exc:
        logger.error("%s", exc)
        report(args.ready_fd, f"ERROR {exc}")
        return 1
    head.controller.publish()  # reconnecting proxies and replicas get what they had
    server = await serve_unix(session.controller_socket, lambda: ControllerSession(head))
    tcp_server = None
    if head.cluster is not None:  # replicas and proxies on other nodes dial in
        tcp_server = await serve_tcp(
            args.controller_host,
            args.controller_port,
            lambda: ControllerSession(head),
            secret=head.cluster.secret,
        )
    head.controller.launch_spare()  # warms up while the driver imports and deploys
    reconcile = loop.create_task(head.controller.run())
    watcher = None
    if head.local_proxy:
        if head.proxy is None:
            head.start_proxy()  # serve.run waits for it together with the application
        watcher = loop.create_task(head.watch_proxy())
    elif not head.serves_http:
        head.controller.proxy_ready.set()
    (session.root / "address").write_text(json.dumps(head.instance_info()))
    report(args.ready_fd, f"READY {args.http_port} {head.admin_url or '-'}")
    logger.info(
        "head ready%s; HTTP on %s:%s, admin API %s",
        " (recovered from the checkpoint)" if recovered else "",
        args.http_host,
        args.http_port,
        head.admin_url or "off",
    )
    await head.stop_requested.wait()
    if watcher is not None:
        watcher.cancel()
    await head.shutdown()
    reconcile.cancel()
    for admin in (head.admin, head.probes, head.metrics_server):
        if admin is not None:
            await admin.close()
    await asyncio.sleep(0.05)  # let the shutdown RPC's answer reach the caller
    server.close()
    if tcp_server is not None:
        tcp_server.close()
    session.remove_sockets()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    session = Session.open(Path(args.session))
    setup_process_logging(session.logs, "controller", "controller", replica="-")
    # Taken out of the environment at once: replicas (user code) must not inherit it.
    password = os.environ.pop(tls.PASSWORD_ENV, None)
    # The node's GPUs: replicas get devices from this list (see runtime.resources).
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    loop = new_event_loop()
    code = loop.run_until_complete(_run(args, session, password, visible))
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
