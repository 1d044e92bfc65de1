"""The module-level API: start, run, status, delete, shutdown, handles.

A process that calls :func:`run` or :func:`start` without an instance starts
one it owns (a head process, a proxy and replicas); the instance is torn
down by :func:`shutdown`, at interpreter exit, or, if the process dies, by
the head noticing through its lifeline.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schooner import _core, context, start_options
from schooner.admin.client import find_instance
from schooner.config import HTTPOptions, LoggingConfig
from schooner.deployment import Application, build_app
from schooner.exceptions import DeployFailedError, RayServeException, ServeConfigError
from schooner.handle import DeploymentHandle, _user_exception
from schooner.rpc.connection import RemoteCallError
from schooner.rpc.messages import AppSpec
from schooner.runtime.head_launch import HeadHandle, PendingHead, launch_head
from schooner.runtime.launcher import pid_alive
from schooner.runtime.session import Session
from schooner.schema import ServeStatus

logger = logging.getLogger("schooner")

__all__ = [
    "RunTarget",
    "delete",
    "get_app_handle",
    "get_deployment_handle",
    "run",
    "run_many",
    "shutdown",
    "shutdown_async",
    "start",
    "status",
]

_head: HeadHandle | None = None
#: A head the CLI launched early (before importing the user's code); start() adopts it.
_pending_head: PendingHead | None = None
#: The running instance this process attached to (``schooner start``), if any.
_attached: dict[str, Any] | None = None
#: Applications this process deployed (on a shared instance, only these are its to clean up).
_deployed_here: set[str] = set()
#: Whether the instance this process started serves HTTP (``proxy_location`` not Disabled).
_serves_http = True
#: Keyword arguments of :func:`start` beyond Ray's (this node's capacity, the checkpoint store).
_START_EXTRAS = frozenset({"num_cpus", "num_gpus", "resources", "checkpoint_path", "metrics_port"})
_lock = threading.RLock()
_atexit_registered = False
#: How long serve.run waits for an application to become RUNNING.
RUN_TIMEOUT_S = 600.0


def _controller_call(method: str, *args: Any, timeout_s: float | None = 60) -> Any:
    try:
        return _core.get_core().call_controller_sync(method, *args, timeout_s=timeout_s)
    except RemoteCallError as exc:
        user_exc = _user_exception(exc)
        raise user_exc from user_exc.__cause__


def start(
    proxy_location: Any = None,
    http_options: HTTPOptions | dict[str, Any] | None = None,
    grpc_options: Any = None,
    logging_config: Any = None,
    tracing_config: Any = None,
    controller_options: Any = None,
    **kwargs: Any,
) -> None:
    """Start an instance owned by this process, unless one is already connected.

    The options (see :mod:`schooner.start_options`) take effect only when the
    instance starts; given for an instance already running, those that differ
    are logged as ignored (as Ray does). ``proxy_location="Disabled"`` starts no
    HTTP proxy (handles still work). Extra keyword arguments ``num_cpus``,
    ``num_gpus`` and ``resources`` set this node's capacity (by default:
    detected), and ``checkpoint_path`` the checkpoint store's URI (``file://``,
    ``redis://``, ``s3://``, ``custom://``; by default a directory in the
    session) from which the instance recovers its applications when it starts.
    ``metrics_port`` serves the instance's Prometheus metrics (``/metrics``) on that
    port of 127.0.0.1 (0: any free port; see docs/operating.md).
    """
    global _head, _atexit_registered, _pending_head, _serves_http
    for key in ("http_host", "http_port", "http_middlewares"):
        if key in kwargs:
            raise ValueError(
                f"{key} is deprecated, please use serve.start(http_options="
                f'{{"{key}": {kwargs[key]!r}}}) instead.'
            )
    unknown = set(kwargs) - _START_EXTRAS
    if unknown:
        raise TypeError(f"serve.start() got unexpected keyword arguments {sorted(unknown)}")
    options = start_options.normalize(
        proxy_location,
        http_options,
        grpc_options,
        logging_config,
        tracing_config,
        controller_options,
    )
    with _lock:
        if _core.get_core_or_none() is not None:
            if options.given:
                start_options.warn_ignored(options, _running_details())
            return
        if _pending_head is not None:
            pending, _pending_head = _pending_head, None
            head = pending.wait_ready()
            _serves_http = True
        elif _ray_backend():
            _attach_ray(options, kwargs, create=True)
            return
        elif (instance := find_instance(detached_only=True)) is not None:
            _attach(instance)
            if options.given:
                start_options.warn_ignored(options, _running_details())
            return
        else:
            http = options.http
            head = launch_head(
                http_host=http.host or "127.0.0.1",
                http_port=http.port,
                root_path=http.root_path,
                proxy_location=(
                    options.proxy_location.value if options.serves_http else "Disabled"
                ),
                http_options=http.model_dump(mode="json", exclude={"location"}),
                grpc_options=options.grpc.model_dump(mode="json"),
                num_cpus=kwargs.get("num_cpus"),
                num_gpus=kwargs.get("num_gpus"),
                resources=kwargs.get("resources"),
                checkpoint_path=kwargs.get("checkpoint_path"),
                metrics_port=kwargs.get("metrics_port"),
                env=options.head_env(),
            ).wait_ready()
            _serves_http = options.serves_http
        try:
            core = _core.Core.start_background(head.session)
        except BaseException:
            head.kill()
            head.release()
            raise
        process = head.process
        core.loop.call_soon_threadsafe(
            functools.partial(core.keep_connected, alive=lambda: process.poll() is None)
        )
        _head = head
        _core.set_core(core)
        if not _atexit_registered:
            atexit.register(_shutdown_at_exit)
            _atexit_registered = True
        if _serves_http:
            logger.info(
                "Schooner started; HTTP on %s://%s:%s",
                head.http_scheme,
                head.http_host,
                head.http_port,
            )
        else:
            logger.info("Schooner started without an HTTP proxy (proxy_location=Disabled)")


def _running_details() -> dict[str, Any]:
    """The running instance's details, to compare options with; empty if they cannot be
    fetched here (on a replica's own loop, say): then every given option is reported."""
    try:
        details: dict[str, Any] = _controller_call("details")
    except (RuntimeError, RayServeException):
        return {}
    return details


def _abandon_pending_head() -> None:
    """Stop a head launched ahead of need that will not be used (the CLI failed first)."""
    global _pending_head
    with _lock:
        pending, _pending_head = _pending_head, None
    if pending is not None:
        pending.abandon()


def _ray_backend() -> bool:
    """Whether to run on a Ray cluster: Ray is initialized in this process (a Ray Serve
    program's ``ray.init(...)``), or ``SCHOONER_RAY_ADDRESS`` names a cluster."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return True
    return bool(os.environ.get("SCHOONER_RAY_ADDRESS"))


def _attach_ray(options: Any, kwargs: dict[str, Any], *, create: bool) -> bool:
    """Use (``create``: or start) the instance on the Ray cluster; False if there is none."""
    global _attached, _atexit_registered
    import ray

    from schooner.router.pool import set_local_node_id
    from schooner.rpc.transport import set_default_secret
    from schooner.runtime.ray_backend import host
    from schooner.runtime.ray_backend.names import InstanceAlive, host_exists
    from schooner.runtime_env.spec import use_ray_backend

    if not ray.is_initialized():
        ray.init(address=os.environ["SCHOONER_RAY_ADDRESS"])
    info = host.attach(_ray_start_options(options, kwargs) if create else None, create)
    if info is None:
        return False
    set_default_secret(bytes.fromhex(info["secret"]))
    use_ray_backend(True)  # runtime_envs may use Ray's own fields (conda, ...)
    node_id = host.driver_node_id()
    set_local_node_id(node_id)
    # Always TCP: its port outlives the head and the host actor, where the Unix socket of a
    # restarted host actor's new session would not.
    address = info["controller_address"]
    core = _core.Core.start_background(Session.open(Path(info["session"])), address)
    core.loop.call_soon_threadsafe(
        functools.partial(core.keep_connected, alive=InstanceAlive(host_exists))
    )
    _core.set_core(core)
    _attached = info
    if not _atexit_registered:
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True
    if create and options is not None and options.given:
        start_options.warn_ignored(options, _running_details())
    logger.info("Using the Schooner instance on the Ray cluster (admin %s)", info["admin_url"])
    return True


def _ray_start_options(options: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the instance on the cluster is started with (serve.start's options)."""
    from schooner.rpc.transport import instance_environment

    http = options.http
    admin_port = int(os.environ.get("SCHOONER_ADMIN_PORT", "8265"))
    return {
        "http_host": http.host or "127.0.0.1",
        "http_port": http.port,
        "root_path": http.root_path,
        "proxy_location": options.proxy_location.value if options.serves_http else "Disabled",
        "http_options": http.model_dump(mode="json", exclude={"location"}),
        "grpc_options": options.grpc.model_dump(mode="json"),
        "admin_port": admin_port if admin_port >= 0 else None,
        "checkpoint_path": kwargs.get("checkpoint_path"),
        "metrics_port": kwargs.get("metrics_port"),
        "env": {**options.head_env(), **instance_environment()},
    }


def _attach(instance: dict[str, Any]) -> None:
    """Use a running (detached) instance: its controller socket, its HTTP address."""
    global _attached, _atexit_registered
    core = _core.Core.start_background(Session.open(Path(instance["session"])))
    supervisor = instance.get("supervisor_pid")
    core.loop.call_soon_threadsafe(
        functools.partial(
            core.keep_connected,
            alive=(lambda: pid_alive(int(supervisor))) if supervisor else None,
        )
    )
    _core.set_core(core)
    _attached = instance
    if not _atexit_registered:
        atexit.register(_shutdown_at_exit)
        _atexit_registered = True
    logger.info("Using the Schooner instance at %s", instance.get("admin_url"))


def http_address() -> str | None:
    """``http(s)://host:port`` of the instance this process started or uses, if any."""
    if _head is not None:
        if not _serves_http:
            return None
        return f"{_head.http_scheme}://{_head.http_host}:{_head.http_port}"
    if _attached is not None and _attached.get("http_port"):
        host = _attached["http_host"]
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"{_attached.get('http_scheme', 'http')}://{host}:{_attached['http_port']}"
    return None


def attached_instance() -> dict[str, Any] | None:
    """The running instance this process attached to (not started), if any."""
    return _attached


@dataclass(frozen=True)
class RunTarget:
    """One application for :func:`run_many` (Ray's ``serve.RunTarget``)."""

    target: Application
    name: str = "default"
    route_prefix: str | None = "/"
    logging_config: LoggingConfig | dict[str, Any] | None = None
    external_scaler_enabled: bool = False


def run(
    target: Application,
    blocking: bool = False,
    name: str = "default",
    route_prefix: str | None = "/",
    logging_config: LoggingConfig | dict[str, Any] | None = None,
    _local_testing_mode: bool = False,
    external_scaler_enabled: bool = False,
    controller_options: Any = None,
) -> DeploymentHandle:
    """Deploy ``target`` as application ``name`` and wait until it is RUNNING.

    Returns a handle to the ingress deployment. Raises
    :class:`~schooner.exceptions.DeployFailedError` (with the cause) if the
    application fails to deploy. With ``blocking=True`` it then serves until
    interrupted (Ctrl-C or SIGTERM) and shuts the instance down.
    ``logging_config`` applies to the deployments that set none.
    ``_local_testing_mode=True`` runs the application inside this process, with
    no instance (see :mod:`schooner.local_testing`).
    """
    return run_many(
        [RunTarget(target, name, route_prefix, logging_config, external_scaler_enabled)],
        blocking=blocking,
        _local_testing_mode=_local_testing_mode,
        controller_options=controller_options,
    )[0]


def _run(
    target: Application,
    *,
    _blocking: bool = True,
    name: str = "default",
    route_prefix: str | None = "/",
    logging_config: LoggingConfig | dict[str, Any] | None = None,
    _local_testing_mode: bool = False,
    external_scaler_enabled: bool = False,
    controller_options: Any = None,
) -> DeploymentHandle:
    """Ray's internal ``serve._run``: deploy without blocking; ``_blocking`` waits for RUNNING."""
    return _run_many(
        [RunTarget(target, name, route_prefix, logging_config, external_scaler_enabled)],
        wait_for_applications_running=_blocking,
        _local_testing_mode=_local_testing_mode,
        controller_options=controller_options,
    )[0]


def run_many(
    targets: Sequence[RunTarget],
    blocking: bool = False,
    wait_for_ingress_deployment_creation: bool = True,
    wait_for_applications_running: bool = True,
    _local_testing_mode: bool = False,
    controller_options: Any = None,
) -> list[DeploymentHandle]:
    """Deploy several applications at once; returns their ingress handles, in order.

    Every target is validated before anything is deployed. With
    ``wait_for_applications_running`` (the default) it returns once all of them
    are RUNNING (raising :class:`~schooner.exceptions.DeployFailedError` for the
    first that fails); with ``blocking=True`` it then serves until interrupted.
    """
    _check_targets(targets)
    if _local_testing_mode:
        from schooner import local_testing

        handles = [local_testing.run(t.target, t.name, t.route_prefix) for t in targets]
        if blocking:
            _serve_until_interrupted(lambda: None)
        return handles
    specs = [_spec_of(t) for t in targets]
    for spec in specs:
        _resolve_deployment_envs(spec)
    handles = [DeploymentHandle(spec.ingress, spec.name) for spec in specs]
    deploy = functools.partial(
        _deploy_all, specs, wait_for_applications_running, controller_options
    )
    if blocking:
        _serve_until_interrupted(deploy)
    else:
        deploy()
    return handles


def _run_many(
    targets: Sequence[RunTarget],
    wait_for_ingress_deployment_creation: bool = True,
    wait_for_applications_running: bool = True,
    _local_testing_mode: bool = False,
    controller_options: Any = None,
) -> list[DeploymentHandle]:
    """Ray's internal ``serve._run_many``: :func:`run_many` that never blocks."""
    return run_many(
        targets,
        blocking=False,
        wait_for_ingress_deployment_creation=wait_for_ingress_deployment_creation,
        wait_for_applications_running=wait_for_applications_running,
        _local_testing_mode=_local_testing_mode,
        controller_options=controller_options,
    )


def _check_targets(targets: Sequence[RunTarget]) -> None:
    if not targets:
        raise ValueError("No applications provided.")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ServeConfigError(f"Application names must be unique, got {names}.")


def _deploy_all(specs: Sequence[AppSpec], wait_for_running: bool, controller_options: Any) -> None:
    start(controller_options=controller_options)
    for spec in specs:
        _controller_call("deploy_app", spec)
        _deployed_here.add(spec.name)
    if wait_for_running:
        for spec in specs:
            _wait_running(spec.name)


def _serve_until_interrupted(deploy: Callable[[], None]) -> None:
    """Deploy, then serve until Ctrl-C or SIGTERM; then stop serving.

    Serving starts before the controller's reply that the apps are RUNNING reaches
    this process (the proxy may already answer), so an interrupt while deploying
    also means "stop serving" rather than a KeyboardInterrupt out of ``run()``.
    """
    with _sigterm_interrupts():
        try:
            deploy()
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    _stop_serving()


def _spec_of(target: RunTarget) -> AppSpec:
    spec = build_app(target.target, target.name, target.route_prefix)
    spec.external_scaler_enabled = bool(target.external_scaler_enabled)
    if target.logging_config is not None:
        app_logging = (
            target.logging_config
            if isinstance(target.logging_config, LoggingConfig)
            else LoggingConfig.model_validate(target.logging_config)
        )
        for dep in spec.deployments:
            if dep.config.logging_config is None:
                dep.config = dep.config.merge({"logging_config": app_logging})
    return spec


def _wait_running(name: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = "DEPLOYING"
    while time.monotonic() < deadline:
        state = _controller_call(
            "wait_app", name, min(30.0, deadline - time.monotonic()), "ready", timeout_s=60
        )
        if state != "DEPLOYING":
            break
    if state != "RUNNING":
        app_status = status().applications.get(name)
        message = app_status.message if app_status is not None else "it was deleted"
        raise DeployFailedError(f"Deploying application '{name}' failed ({state}): {message}")
    logger.info("Deployed app '%s' successfully.", name)


def _resolve_deployment_envs(spec: AppSpec) -> None:
    """Set up deployments' own ``ray_actor_options["runtime_env"]`` (downloads, pip)."""
    if not any((d.config.ray_actor_options or {}).get("runtime_env") for d in spec.deployments):
        return
    from schooner.builder import attach_process_envs
    from schooner.runtime_env import ResolvedRuntimeEnv, default_cache_dir

    attach_process_envs(spec, {}, ResolvedRuntimeEnv(), default_cache_dir(), Path.cwd())


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM interrupts the main thread as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_serving() -> None:
    """The end of a blocking run: shut down this process's instance, or, on an instance it
    attached to, delete only the applications it deployed."""
    if _attached is not None:
        for name in sorted(_deployed_here):
            delete(name)
        _disconnect(stop=False)
    else:
        shutdown()


def _connect_to_running() -> bool:
    """Attach to a running detached instance if this process has none; True if connected."""
    with _lock:
        if _core.get_core_or_none() is not None:
            return True
        if _ray_backend():
            return _attach_ray(None, {}, create=False)
        instance = find_instance(detached_only=True)
        if instance is None:
            return False
        _attach(instance)
        return True


def status() -> ServeStatus:
    """Status of every application, deployment and replica (Ray's ``ServeStatus`` shape).

    Without an instance of its own, this process looks at a running detached one."""
    if not _connect_to_running():
        return ServeStatus.from_dict({"proxies": {}, "applications": {}, "target_capacity": None})
    return ServeStatus.from_dict(_controller_call("status"))


def delete(name: str, _blocking: bool = True) -> None:
    """Delete application ``name`` (its replicas are drained and stopped)."""
    if _core.get_core_or_none() is None:
        return
    _controller_call("delete_app", name)
    _deployed_here.discard(name)
    if _blocking:
        while _controller_call("wait_app", name, 30.0, "deleted", timeout_s=60) != "NOT_STARTED":
            pass


async def shutdown_async() -> None:
    """:func:`shutdown` for async code: the blocking part runs in a worker thread."""
    await asyncio.to_thread(shutdown)


def shutdown() -> None:
    """Delete every application and stop the instance this process started.

    In a process that attached to a running instance (``schooner start``),
    every application is deleted and the instance keeps running, as Ray
    Serve's ``shutdown`` leaves a long-running cluster up. Applications run in
    local testing mode are stopped too.
    """
    local = sys.modules.get("schooner.local_testing")
    if local is not None:
        local.shutdown()
    _disconnect(stop=True)


def _disconnect(*, stop: bool) -> None:
    global _head, _attached
    with _lock:
        core = _core.get_core_or_none()
        if core is None or _replica_context_is_set():
            return
        on_ray = _attached is not None and _attached.get("backend") == "ray"
        method = "delete_all" if _attached is not None and not on_ray else "shutdown"
        if stop:
            try:
                core.call_controller_sync(method, timeout_s=120)
            except Exception as exc:
                logger.debug("%s RPC failed: %r", method, exc)
        _attached = None
        _deployed_here.clear()
        core.close()
        _core.set_core(None)
        if on_ray:
            from schooner.runtime_env.spec import use_ray_backend

            use_ray_backend(None)
        if stop and on_ray:  # as Ray Serve's shutdown: the instance leaves the cluster
            from schooner.runtime.ray_backend.host import stop_instance

            stop_instance()
        head, _head = _head, None
        if head is not None:
            if not head.wait(10):
                head.kill()
            head.release()


def _require_instance() -> None:
    if not _connect_to_running():
        raise RayServeException(
            "No Schooner instance: call serve.run() or serve.start() first, or start one "
            "with `schooner start` (set SCHOONER_ADDRESS if it is not at the default address)."
        )


def _replica_context_is_set() -> bool:
    return context._replica_context is not None


def _shutdown_at_exit() -> None:
    """An instance this process started stops with it; one it attached to keeps running."""
    try:
        _disconnect(stop=_attached is None)
    except Exception:
        pass


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to the ingress deployment of application ``name``."""
    _require_instance()
    info = _controller_call("app_info", name)
    if info is None:
        raise RayServeException(f"Application '{name}' does not exist.")
    return DeploymentHandle(info["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: str | None = None) -> DeploymentHandle:
    """A handle to deployment ``deployment_name`` of ``app_name``.

    Inside a replica ``app_name`` defaults to the replica's own application,
    elsewhere to ``"default"``.
    """
    _require_instance()
    if app_name is None:
        replica = context._replica_context
        app_name = replica.app_name if replica is not None else "default"
    info = _controller_call("app_info", app_name)
    if info is None or deployment_name not in info["deployments"]:
        raise RayServeException(
            f"Deployment '{deployment_name}' in application '{app_name}' does not exist."
        )
    return DeploymentHandle(deployment_name, app_name)
