"""How each compared system is started: Schooner, bare uvicorn and Ray Serve.

- Schooner: ``schooner run bench_apps:APP --port P`` (the product's own path).
- bare: ``uvicorn bare_app:app --http httptools --loop uvloop``, one process.
- Ray Serve, under load: ``ray_server.py`` (``ray.init(num_cpus=2)`` then
  ``serve.run``); for cold start and memory: ``serve run CONFIG`` with a config
  file that sets the port, the counterpart of ``schooner run``.
- handle drivers: ``handle_driver.py`` run by the system's own Python.
- baseline (``--baseline-python``): another Schooner install, e.g. a venv of
  the previous commit, started exactly as Schooner is: an A/B in one run.
- the ``ray`` scenario: ``ray_cluster.py`` holds one local Ray cluster, and
  ``cluster_driver.py`` (Ray's Python, which must also have Schooner) runs
  the same program on it with Ray Serve, then with Schooner.
- the ``autoscale`` scenario: ``autoscale_driver.py`` run by the system's
  Python; on Ray it starts Ray (dashboard on the admin port), on Schooner it
  joins an instance started with ``schooner start --block``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from bench.options import Options
from bench.procs import Server, ServerSet, free_port

APPS_DIR = Path(__file__).resolve().parent / "apps"
SCHOONER = "schooner"
BARE = "bare"
RAY = "ray"
BASELINE = "baseline"
ALL_SYSTEMS = (SCHOONER, BARE, RAY, BASELINE)
LABELS = {SCHOONER: "Schooner", BARE: "bare", RAY: "Ray", BASELINE: "baseline"}
#: How long each system may take to answer its first request.
READY_TIMEOUT_S = {SCHOONER: 60.0, BARE: 30.0, RAY: 300.0, BASELINE: 60.0}


def _env(system: str, max_ongoing: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BENCH_SERVE", None)
    env.pop("BENCH_MAX_ONGOING", None)
    if max_ongoing is not None:
        env["BENCH_MAX_ONGOING"] = str(max_ongoing)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APPS_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if system == RAY:
        env["BENCH_SERVE"] = "ray"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def schooner_argv(python: str = sys.executable) -> list[str]:
    script = Path(python).with_name("schooner")
    return [str(script)] if script.exists() else [python, "-m", "schooner.cli.main"]


def _python(options: Options, system: str) -> str:
    """The interpreter that runs ``system``'s processes."""
    chosen = {RAY: options.ray_python, BASELINE: options.baseline_python}.get(system)
    return chosen or sys.executable


def start_http(
    servers: ServerSet,
    options: Options,
    system: str,
    app: str,
    port: int,
    cli: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start ``app`` (a name in bench_apps) on ``system``, serving HTTP on ``port``.

    ``cli`` selects Ray's ``serve run`` instead of the ``ray.init(num_cpus=2)``
    script (Schooner and bare are always started by their command line). ``extra_env``:
    more environment for the system's processes (the metrics A/B's switch).
    """
    env = {**_env(system, options.max_ongoing), **(extra_env or {})}
    if system in (SCHOONER, BASELINE):
        argv = [*schooner_argv(_python(options, system)), "run", f"bench_apps:{app}"]
        argv += ["--port", str(port), "--app-dir", str(APPS_DIR)]
        return servers.start(f"{system}-{app}", argv, env=env)
    if system == BARE:
        argv = [sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(APPS_DIR)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--http", "httptools"]
        argv += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
        return servers.start(f"bare-{app}", argv, env=env)
    ray_python = options.ray_python
    assert system == RAY and ray_python is not None
    serve_cli = Path(ray_python).with_name("serve")
    if cli and serve_cli.exists():
        config = servers.log_dir / f"ray-{app}-{port}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"http_options:\n  host: 127.0.0.1\n  port: {port}\n"
            f"applications:\n  - name: default\n    route_prefix: /\n"
            f"    import_path: bench_apps:{app}\n"
        )
        argv = [str(serve_cli), "run", str(config)]
        return servers.start(f"ray-serve-run-{app}", argv, env=env, stop_signal=signal.SIGINT)
    argv = [ray_python, str(APPS_DIR / "ray_server.py"), app, str(port)]
    return servers.start(f"ray-{app}", argv, env=env)


def start_ray_cluster(
    servers: ServerSet, options: Options, temp_dir: Path, nodes: int, head_cpus: int
) -> Server:
    """``ray_cluster.py``: a head (and with ``nodes`` = 2 a worker node with 4 CPUs)
    whose files live in ``temp_dir``; prints ``ADDRESS host:port`` once up."""
    assert options.ray_python is not None
    env = _env(SCHOONER, options.max_ongoing)
    env["RAY_TMPDIR"] = str(temp_dir)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    argv = [options.ray_python, str(APPS_DIR / "ray_cluster.py"), str(nodes), str(head_cpus), "4"]
    return servers.start("ray-cluster", argv, env=env, stop_grace_s=60.0)


def start_cluster_driver(
    servers: ServerSet, options: Options, system: str, address: str, temp_dir: Path, port: int
) -> Server:
    """``cluster_driver.py`` for ``system`` (``ray`` or ``schooner``) on the cluster at
    ``address``, serving HTTP on ``port``, with Ray's Python."""
    assert options.ray_python is not None
    env = _env(RAY if system == RAY else SCHOONER, options.max_ongoing)
    env["RAY_TMPDIR"] = str(temp_dir)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["SCHOONER_ADMIN_PORT"] = "0"  # not 8265: the machine may run other instances
    argv = [options.ray_python, str(APPS_DIR / "cluster_driver.py"), address, str(port)]
    argv += [str(options.cold_runs), str(options.duration_s), str(options.warmup_s)]
    argv += [str(options.repeat)]
    return servers.start(f"{system}-on-ray-driver", argv, env=env)


def start_driver(servers: ServerSet, options: Options, system: str, mode: str) -> Server:
    """Start ``handle_driver.py MODE`` with the system's Python; it exits when done."""
    argv = [_python(options, system), str(APPS_DIR / "handle_driver.py"), mode, str(free_port())]
    argv += [str(options.duration_s), str(options.warmup_s), str(options.repeat)]
    env = _env(system, options.max_ongoing)
    env["BENCH_DRIVER_LOOP"] = options.driver_loop
    return servers.start(f"{system}-driver-{mode}", argv, env=env)


def start_schooner_instance(
    servers: ServerSet, options: Options, system: str, http_port: int, admin_port: int
) -> Server:
    """``schooner start --block`` (the instance stays this process's child, so it can be
    followed and stopped by pid) on 2 CPUs, its REST API on ``admin_port``."""
    argv = [*schooner_argv(_python(options, system)), "start", "--block", "--num-cpus", "2"]
    argv += ["--http-port", str(http_port), "--admin-port", str(admin_port)]
    return servers.start(f"{system}-instance", argv, env=_env(system, None))


def start_autoscale_driver(
    servers: ServerSet, options: Options, system: str, http_port: int, admin_port: int
) -> Server:
    """``autoscale_driver.py`` with the system's Python (Schooner: joining the instance
    whose REST API is on ``admin_port``)."""
    argv = [_python(options, system), str(APPS_DIR / "autoscale_driver.py")]
    argv += [str(http_port), str(admin_port), str(options.cold_runs)]
    env = _env(system, None)
    if system == RAY:
        # Ray 2.60 starts a local cluster with token authentication, its REST API
        # included; the token is a credential in the user's home, which the suite leaves
        # alone: this cluster (on 127.0.0.1, for the scenario's length) runs without.
        env["RAY_AUTH_MODE"] = "disabled"
    else:
        env["SCHOONER_ADDRESS"] = f"http://127.0.0.1:{admin_port}"
    return servers.start(f"{system}-autoscale-driver", argv, env=env, stop_grace_s=60.0)
