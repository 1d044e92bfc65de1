"""The scenarios. Each runs the same application on every system compared,
one system at a time, and records its numbers in the context."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench import systems
from bench.autoscale import autoscale
from bench.context import Context, log
from bench.faults import faults
from bench.load import LoadResult, check_body
from bench.on_ray import on_ray
from bench.procs import free_port
from bench.systems import BARE, BASELINE, LABELS, RAY, SCHOONER
from bench.traffic import traffic
from bench.updates import live_updates

MIB = 1024 * 1024
ECHO_CONNECTIONS = 4
#: Seconds over which an idle instance's CPU use is measured.
IDLE_CPU_WINDOW_S = 2.0


def _record_load(ctx: Context, scenario: str, system: str, tag: str, result: LoadResult) -> None:
    detail = result.as_dict()
    ctx.record(scenario, f"req/s {tag}", system, result.requests_per_s, "req/s", True, detail)
    ctx.record(scenario, f"p50 ms {tag}", system, result.p50_ms, "ms", False)
    ctx.record(scenario, f"p99 ms {tag}", system, result.p99_ms, "ms", False)


def hello(ctx: Context) -> None:
    """HTTP hello world, one replica: req/s, p50, p99 at 1 and at 32 connections."""
    for system in ctx.available(SCHOONER, BASELINE, BARE, RAY):
        try:
            with ctx.serving(system, "hello") as (server, port):
                check_body(port, b"hello")
                for connections in (1, 32):
                    result = ctx.load("hello", server, port, connections)
                    _record_load(ctx, "hello", system, f"@{connections}c", result)
                    if system == BARE and connections == 32:
                        ctx.cache["bare_hello_32"] = result
        except Exception as exc:
            ctx.fail("hello", system, exc)


def chain(ctx: Context) -> None:
    """Ingress -> model through a handle, over HTTP at 32 connections; bare = uvicorn hello."""
    for system in ctx.available(SCHOONER, BASELINE, BARE, RAY):
        try:
            if system == BARE:
                result = ctx.cache.get("bare_hello_32")
                if result is None:
                    with ctx.serving(BARE, "hello") as (server, port):
                        result = ctx.load("chain", server, port, 32)
                _record_load(ctx, "chain", BARE, "@32c", result)
                continue
            with ctx.serving(system, "chain") as (server, port):
                check_body(port, b"hello")
                _record_load(ctx, "chain", system, "@32c", ctx.load("chain", server, port, 32))
        except Exception as exc:
            ctx.fail("chain", system, exc)


def handle(ctx: Context) -> None:
    """Handle calls from an asyncio driver: calls/s with 1 and with 100 in flight."""
    opts = ctx.options
    budget_s = 2 * (opts.repeat * opts.duration_s + opts.warmup_s) + 60
    for system in ctx.available(SCHOONER, BASELINE, RAY):
        try:
            result = ctx.run_driver(system, "calls", budget_s)
        except Exception as exc:
            ctx.fail("handle", system, exc)
            continue
        for in_flight in ("1", "100"):
            r = result[in_flight]
            tag = f"@{in_flight} in flight"
            ctx.record("handle", f"calls/s {tag}", system, r["calls_per_s"], "calls/s", True, r)
            ctx.record("handle", f"p50 ms {tag}", system, r["p50_ms"], "ms", False)
            log(f"[handle] {LABELS[system]} {tag}: {r['calls_per_s']:,.0f} calls/s")


def echo(ctx: Context) -> None:
    """1 MiB request echoed back over HTTP, 4 connections: MB/s of payload echoed."""
    payload = b"b" * MIB
    for system in ctx.available(SCHOONER, BASELINE, BARE, RAY):
        try:
            with ctx.serving(system, "echo") as (server, port):
                check_body(port, payload, payload)
                result = ctx.load("echo", server, port, ECHO_CONNECTIONS, body_bytes=MIB)
                tag = f"@{ECHO_CONNECTIONS}c"
                mb_s = result.requests_per_s * MIB / 1e6
                ctx.record(
                    "echo 1 MiB", f"MB/s {tag}", system, mb_s, "MB/s", True, result.as_dict()
                )
                ctx.record("echo 1 MiB", f"p50 ms {tag}", system, result.p50_ms, "ms", False)
        except Exception as exc:
            ctx.fail("echo 1 MiB", system, exc)


def array(ctx: Context) -> None:
    """A 4 MiB float32 numpy array there and back through a handle, one call at a time."""
    opts = ctx.options
    budget_s = opts.repeat * opts.duration_s + opts.warmup_s + 60
    for system in ctx.available(SCHOONER, BASELINE, RAY):
        try:
            r = ctx.run_driver(system, "array", budget_s)
        except Exception as exc:
            ctx.fail("array 4 MiB", system, exc)
            continue
        ctx.record("array 4 MiB", "GB/s", system, r["gb_per_s"], "GB/s", True, r)
        ctx.record("array 4 MiB", "ms per round trip", system, r["p50_ms"], "ms", False)
        log(f"[array] {LABELS[system]}: {r['gb_per_s']:.2f} GB/s, p50 {r['p50_ms']:.2f} ms")


def cold(ctx: Context) -> None:
    """Wall time from launching the run command to the first 200 OK (polled every 5 ms)."""
    for system in ctx.available(SCHOONER, BASELINE, BARE, RAY):
        times: list[float] = []
        try:
            for _ in range(ctx.options.cold_runs):
                ctx.quiet(f"cold start {system}")
                times.append(_cold_once(ctx, system))
        except Exception as exc:
            ctx.fail("cold start", system, exc)
            continue
        median = statistics.median(times)
        detail = {"runs_s": times}
        ctx.record("cold start", "s to first 200", system, median, "s", False, detail)
        log(f"[cold] {LABELS[system]}: median {median:.3f} s of {times}")


def _cold_once(ctx: Context, system: str) -> float:
    port = free_port()
    server = systems.start_http(ctx.servers, ctx.options, system, "hello", port, cli=True)
    try:
        return server.wait_http_ok(port, systems.READY_TIMEOUT_S[system], interval_s=0.005)
    finally:
        server.stop()


def memory(ctx: Context) -> None:
    """Total RSS (and PSS) of an idle instance serving hello with one replica, and
    the CPU it burns while idle."""
    for system in ctx.available(SCHOONER, BASELINE, BARE, RAY):
        try:
            with ctx.serving(system, "hello", cli=True) as (server, _port):
                deadline = time.perf_counter() + ctx.options.settle_s
                while time.perf_counter() < deadline:
                    server.track()
                    time.sleep(0.25)
                before, t0 = server.usage(), time.perf_counter()
                time.sleep(IDLE_CPU_WINDOW_S)
                usage = server.usage()
                idle_cores = (usage.cpu_s - before.cpu_s) / (time.perf_counter() - t0)
        except Exception as exc:
            ctx.fail("memory idle", system, exc)
            continue
        detail = {"processes": usage.processes, "rss_bytes": usage.rss_bytes}
        detail["pss_bytes"] = usage.pss_bytes
        ctx.record("memory idle", "RSS MB", system, usage.rss_bytes / 1e6, "MB", False, detail)
        ctx.record("memory idle", "PSS MB", system, usage.pss_bytes / 1e6, "MB", False)
        ctx.record("memory idle", "processes", system, usage.processes, "", False)
        ctx.record("memory idle", "CPU % of a core", system, 100 * idle_cores, "%", False)
        log(
            f"[memory] {LABELS[system]}: RSS {usage.rss_bytes / 1e6:.0f} MB, "
            f"PSS {usage.pss_bytes / 1e6:.0f} MB in {usage.processes} processes, "
            f"idle CPU {100 * idle_cores:.1f}% of a core"
        )


#: The metrics A/B: pairs of environments for Schooner's processes, (on, off).
NO_ACCESS_LOG = '{"enable_access_log": false}'
SWITCHES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "metrics": ({}, {"SCHOONER_METRICS": "0"}),
    "access log": ({}, {"SCHOONER_LOGGING_CONFIG": NO_ACCESS_LOG}),
}
AB_ROUNDS = 3


def metrics_cost(ctx: Context) -> None:
    """What built-in metrics (and access lines) cost: hello world @32c with the switch
    on and off, in rounds of on, off, off, on (ABBA: a machine whose speed drifts
    during a round slows both alike). Each round gives an on/off throughput ratio;
    the median round is recorded."""
    for switch, (on_env, off_env) in SWITCHES.items():
        ratios: list[tuple[float, LoadResult, LoadResult]] = []
        for _ in range(AB_ROUNDS):
            results: dict[str, list[LoadResult]] = {"on": [], "off": []}
            try:
                for state in ("on", "off", "off", "on"):
                    env = on_env if state == "on" else off_env
                    with ctx.serving(SCHOONER, "hello", extra_env=env) as (server, port):
                        check_body(port, b"hello")
                        results[state].append(ctx.load("metrics", server, port, 32))
            except Exception as exc:
                ctx.fail("metrics", SCHOONER, exc)
                return
            on = statistics.mean(r.requests_per_s for r in results["on"])
            off = statistics.mean(r.requests_per_s for r in results["off"])
            ratios.append((on / off, results["on"][0], results["off"][0]))
        ratios.sort(key=lambda item: item[0])
        ratio, on_result, off_result = ratios[len(ratios) // 2]
        _record_load(ctx, "metrics", SCHOONER, f"@32c {switch} on", on_result)
        _record_load(ctx, "metrics", SCHOONER, f"@32c {switch} off", off_result)
        ctx.record("metrics", f"{switch} on/off throughput", SCHOONER, ratio, "x", True)
        log(
            f"[metrics] {switch}: hello @32c throughput on/off, per round: "
            f"{', '.join(f'{r:.3f}' for r, _, _ in ratios)}; median {ratio:.3f} "
            f"({100 * (1 - ratio):+.1f}% cost)"
        )


SCENARIOS: dict[str, Callable[[Context], None]] = {
    "hello": hello,
    "chain": chain,
    "handle": handle,
    "echo": echo,
    "array": array,
    "cold": cold,
    "memory": memory,
    "updates": live_updates,
    "faults": faults,
    "ray": on_ray,
    "metrics": metrics_cost,
    "autoscale": autoscale,
    "traffic": traffic,
}
