"""The ``ray`` scenario (issue 11): Schooner on a Ray cluster against Ray Serve on the
same cluster, in the same run, with the same program.

One local Ray cluster is started for the scenario (``ray_cluster.py``: a head,
and with ``--ray-nodes 2`` a worker node that gets every replica while the
head keeps the proxy; dashboard off, free ports, its files in a temporary
directory of its own) and stopped at the end, by pid, also on errors and
Ctrl-C. On it, Ray Serve and then Schooner each run ``cluster_driver.py``:
``ray.init(address=...)``, then ``bench_apps`` imported with ``from ray import
serve`` or ``import schooner as serve``. Each system is shut down
(``serve.shutdown()``) before the other starts. Measured:

- cold start: ``serve.start`` + ``serve.run`` to the first 200 (the instance
  and an app), and ``serve.run`` of an app on the running instance (median);
- hello over HTTP at 1 and 32 connections, the chain at 32 (wrk);
- handle calls from the driver with 1 and 100 in flight.

Needs a Python with ``ray[serve]`` and Schooner (``--ray-python``); without
one the scenario says so and is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import systems
from bench.context import Context, log
from bench.load import check_body
from bench.procs import Server, ServerError, free_port
from bench.systems import LABELS, RAY, SCHOONER

SCENARIO = "on Ray"
#: How long the cluster may take to come up, and a driver to reach ``SERVING``.
CLUSTER_TIMEOUT_S = 120.0
SERVING_TIMEOUT_S = 420.0


def on_ray(ctx: Context) -> None:
    """Schooner on a local Ray cluster vs Ray Serve on the same cluster (issue 11)."""
    opts = ctx.options
    wanted = [s for s in (RAY, SCHOONER) if s in opts.systems]
    if opts.ray_python is None:
        log("[ray] skipped: no Python with ray[serve] and schooner (give --ray-python PATH)")
        return
    if not wanted:
        log("[ray] skipped: --systems names neither ray nor schooner")
        return
    if SCHOONER in wanted and (problem := _schooner_problem(opts.ray_python)):
        ctx.fail(f"{SCENARIO}: hello", SCHOONER, RuntimeError(problem))
        wanted.remove(SCHOONER)
    temp_dir = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))
    failed = False
    try:
        with _cluster(ctx, temp_dir) as (cluster, address):
            for system in wanted:
                try:
                    _measure(ctx, cluster, address, temp_dir, system)
                except Exception as exc:
                    failed = True
                    ctx.fail(f"{SCENARIO}: hello", system, exc)
    except ServerError as exc:  # the cluster did not come up
        failed = True
        for system in wanted:
            ctx.fail(f"{SCENARIO}: hello", system, exc)
    finally:
        if failed:
            log(f"[ray] the cluster's own logs are kept in {temp_dir}")
        else:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _schooner_problem(ray_python: str) -> str | None:
    """Why Ray's Python cannot run Schooner-on-Ray as this checkout does, or None."""
    here = Path(__file__).resolve().parent.parent / "src" / "schooner"
    code = "import schooner, pathlib; print(pathlib.Path(schooner.__file__).parent.resolve())"
    done = subprocess.run([ray_python, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return f"{ray_python} cannot import schooner: pip install -e {here.parent.parent}"
    found = Path(done.stdout.strip())
    if found != here:
        log(f"[ray] WARNING: {ray_python} imports schooner from {found}, not from {here}")
    return None


@contextlib.contextmanager
def _cluster(ctx: Context, temp_dir: Path) -> Iterator[tuple[Server, str]]:
    """One local Ray cluster for the scenario, its files in ``temp_dir``; stopped (by pid)
    however the block ends."""
    nodes = ctx.options.ray_nodes
    head_cpus = 4 if nodes == 1 else 0
    cluster = systems.start_ray_cluster(ctx.servers, ctx.options, temp_dir, nodes, head_cpus)
    try:
        cluster.wait_output("ADDRESS ", CLUSTER_TIMEOUT_S)
        address = _line(cluster, "ADDRESS ")
        cluster.track()
        log(f"[ray] local Ray cluster of {nodes} node(s) at {address} (files in {temp_dir})")
        yield cluster, address
    finally:
        cluster.stop()


def _line(server: Server, prefix: str) -> str:
    """The rest of the last line of ``server``'s output that starts with ``prefix``."""
    lines = server.log_path.read_text(errors="replace").splitlines()
    found = [line[len(prefix) :] for line in lines if line.startswith(prefix)]
    if not found:
        raise server.fail(f"printed no {prefix.strip()} line")
    return found[-1]


def _measure(ctx: Context, cluster: Server, address: str, temp_dir: Path, system: str) -> None:
    """One system's part: start its driver, load its apps over HTTP, read its RESULT."""
    opts = ctx.options
    port = free_port()
    ctx.quiet(f"ray {system}", cluster)
    driver = systems.start_cluster_driver(ctx.servers, opts, system, address, temp_dir, port)
    try:
        driver.wait_output("SERVING", SERVING_TIMEOUT_S)
        cluster.track()
        check_body(port, b"hello", path="/hello")
        check_body(port, b"hello", path="/chain")
        for connections in (1, 32):
            result = ctx.load(f"{SCENARIO}: hello", cluster, port, connections, path="/hello")
            _record_load(ctx, "hello", system, connections, result.as_dict())
        result = ctx.load(f"{SCENARIO}: chain", cluster, port, 32, path="/chain")
        _record_load(ctx, "chain", system, 32, result.as_dict())
        os.kill(driver.pid, signal.SIGUSR1)
        budget_s = 2 * (opts.repeat * opts.duration_s + opts.warmup_s) + 180
        deadline = time.perf_counter() + budget_s
        while driver.alive() and time.perf_counter() < deadline:
            cluster.track()
            time.sleep(0.2)
        if driver.alive():
            raise driver.fail(f"still running {budget_s:.0f} s after the HTTP load")
        measured: dict[str, Any] = json.loads(_line(driver, "RESULT "))
        leftover = json.loads(_line(driver, "LEFTOVER "))
    finally:
        driver.stop()
    if leftover:
        ctx.warn(f"[ray] {LABELS[system]} left named actors after serve.shutdown(): {leftover}")
    _record_driver(ctx, system, measured)


def _record_load(
    ctx: Context, app: str, system: str, connections: int, detail: dict[str, Any]
) -> None:
    scenario, tag = f"{SCENARIO}: {app}", f"@{connections}c"
    ctx.record(scenario, f"req/s {tag}", system, detail["requests_per_s"], "req/s", True, detail)
    ctx.record(scenario, f"p50 ms {tag}", system, detail["p50_ms"], "ms", False)
    ctx.record(scenario, f"p99 ms {tag}", system, detail["p99_ms"], "ms", False)


def _record_driver(ctx: Context, system: str, measured: dict[str, Any]) -> None:
    scenario = f"{SCENARIO}: handle"
    for in_flight in ("1", "100"):
        r = measured["handle"][in_flight]
        tag = f"@{in_flight} in flight"
        ctx.record(scenario, f"calls/s {tag}", system, r["calls_per_s"], "calls/s", True, r)
        ctx.record(scenario, f"p50 ms {tag}", system, r["p50_ms"], "ms", False)
    scenario = f"{SCENARIO}: cold start"
    instance_s, app_s = measured["cold_instance_s"], measured["cold_app_s"]
    ctx.record(scenario, "s to first 200, instance + app", system, instance_s, "s", False)
    detail = {"runs_s": measured["cold_app_runs_s"]}
    ctx.record(scenario, "s to first 200, app", system, app_s, "s", False, detail)
    log(
        f"[ray] {LABELS[system]}: cold start {instance_s:.2f} s (instance + app), "
        f"{app_s:.2f} s (app); handle calls @100 in flight "
        f"{measured['handle']['100']['calls_per_s']:,.0f}/s"
    )
