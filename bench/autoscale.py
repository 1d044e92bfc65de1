"""The ``autoscale`` scenario (issue 13): how the replica count follows a step load,
and how long the first request to an application scaled to zero waits.

The applications (``apps/autoscale_apps.py``) and the program that deploys them
(``apps/autoscale_driver.py``) are the same for both systems. Ray Serve runs
in the driver (``ray.init(num_cpus=2)``, the dashboard on a free port);
Schooner's instance is ``schooner start --block --num-cpus 2`` with its admin
API on a free port, which the driver joins. Both serve the REST API that the
replica count is read from (``GET /api/serve/applications/``); it is polled
every 0.25 s. Per system:

1. **step load**: HTTP connections to ``Work`` step through 1, 2, 4, 8, 16.
   Each phase lasts at least 1.5 x ``--duration`` (15 s), then until the
   count of RUNNING replicas has held for 15 s in it (longer than Ray's default
   10 s between metrics pushes), at most 60 s. Per phase: requests, failed
   ones (not 200, socket error, or no answer in 10 s), p99 and the replica
   count it ended with;
2. **scale up**: from the start of the 16-connection phase until the replica
   count reached the count the phase ended with (expected 8: 16 ongoing / 2);
3. **scale down**: from the load's end until ``Work`` is back at 1 replica;
4. **cold replica start**: the driver deploys a new one-replica application
   (no autoscaling) and times it to its first 200 (median of 3, or 1);
5. **from zero**: once ``Zero`` has no replica left (polled), one request is
   timed; the first after its deployment is not counted, then 3 (or 1), the
   median kept and compared with the cold replica start.

A system that does not scale is recorded as failing the parts that need it,
after bounded waits: nothing hangs.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from bench import systems
from bench.apps import autoscale_config
from bench.context import Context, log
from bench.load import check_body
from bench.procs import Server, free_port
from bench.step_load import (
    POLL_INTERVAL_S,
    PhaseLog,
    ReplicaWatch,
    RequestLog,
    Step,
    replica_states,
    step_load,
)
from bench.systems import LABELS, RAY, SCHOONER

STEP_LOAD = "autoscale: step load"
SCALE_UP = "autoscale: scale up @16c"
SCALE_DOWN = "autoscale: scale down"
COLD = "autoscale: cold replica"
FROM_ZERO = "autoscale: from zero"
PARTS = (STEP_LOAD, SCALE_UP, SCALE_DOWN, COLD, FROM_ZERO)

CONNECTION_STEPS = (1, 2, 4, 8, 16)
#: A phase lasts at least this times ``--duration``, then until the count has held
#: ``STABLE_S``, and at most ``PHASE_MAX_S``.
PHASE_MIN_DURATIONS = 1.5
STABLE_S = 15.0
PHASE_MAX_S = 60.0
#: How long ``Work`` may take to go back to its minimum once the load stops.
DOWN_LIMIT_S = 60.0
#: How long ``Zero`` may take to lose its replicas, and its first request to answer.
ZERO_LIMIT_S = 60.0
ZERO_REQUEST_TIMEOUT_S = 30.0
#: How long the driver may take for each cold replica start, and to deploy ``Zero``.
DRIVER_STEP_TIMEOUT_S = 150.0


class NotScaled(RuntimeError):
    """The system did not scale as the scenario needs (or not within its time limit)."""


def autoscale(ctx: Context) -> None:
    """Replicas, failures and p99 under a step load; scale up, down and from zero."""
    for system in ctx.available(SCHOONER, RAY):
        try:
            _measure(ctx, system)
        except Exception as exc:
            for part in PARTS:
                ctx.fail(part, system, exc)


def _measure(ctx: Context, system: str) -> None:
    http_port, admin_port = free_port(), free_port()
    with _started(ctx, system, http_port, admin_port) as (instance, driver):
        check_body(http_port, b"ok", path="/work")
        ctx.quiet(f"autoscale {system}", instance)
        try:
            _step_load(ctx, system, instance, http_port, admin_port)
        except Exception as exc:
            for part in (STEP_LOAD, SCALE_UP, SCALE_DOWN):
                ctx.fail(part, system, exc)
        os.kill(driver.pid, signal.SIGUSR1)
        cold_s = None
        try:
            cold_s = _cold(ctx, system, driver)
        except Exception as exc:
            ctx.fail(COLD, system, exc)
        try:
            _from_zero(ctx, system, driver, http_port, admin_port, cold_s)
        except Exception as exc:
            ctx.fail(FROM_ZERO, system, exc)


@contextlib.contextmanager
def _started(
    ctx: Context, system: str, http_port: int, admin_port: int
) -> Iterator[tuple[Server, Server]]:
    """The system serving ``Work`` (the driver printed SERVING): (the process tree of the
    instance, the driver), both stopped by pid afterwards. On Ray they are one."""
    opts, started = ctx.options, []
    try:
        if system == RAY:
            instance = systems.start_autoscale_driver(
                ctx.servers, opts, system, http_port, admin_port
            )
            driver = instance
            started.append(instance)
        else:
            instance = systems.start_schooner_instance(
                ctx.servers, opts, system, http_port, admin_port
            )
            started.append(instance)
            path = "/api/serve/applications/"
            instance.wait_http_ok(admin_port, systems.READY_TIMEOUT_S[system], path, 0.05)
            driver = systems.start_autoscale_driver(
                ctx.servers, opts, system, http_port, admin_port
            )
            started.append(driver)
        _wait_line(driver, "SERVING", systems.READY_TIMEOUT_S[system])
        instance.track()
        yield instance, driver
    finally:
        for server in reversed(started):
            server.stop()


def _wait_line(server: Server, prefix: str, timeout_s: float) -> str:
    """The rest of the first line of ``server``'s output starting with ``prefix``, once
    printed; raises if it prints ``FAILED ...`` or exits first, or after ``timeout_s``."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        for line in server.log_path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
            if line.startswith("FAILED "):
                raise server.fail(f"the driver failed: {line[len('FAILED ') :]}")
        if not server.alive():
            raise server.fail(f"exited with status {server.proc and server.proc.returncode}")
        server.track()
        time.sleep(0.1)
    raise NotScaled(f"{server.name}: no {prefix.strip()} line within {timeout_s:.0f} s")


@dataclass
class PhaseStats:
    """One phase of the step load, as recorded and logged."""

    connections: int
    seconds: float
    requests: int
    failed: int
    p99_ms: float | None
    replicas_start: int | None
    replicas_end: int | None
    replicas_max: int | None
    replicas_expected: int
    system_cores: float


def _expected(connections: int) -> int:
    """Replicas ``Work`` should settle at with ``connections`` requests always ongoing."""
    config = autoscale_config.WORK
    wanted = math.ceil(connections / config["target_ongoing_requests"])
    return int(max(config["min_replicas"], min(config["max_replicas"], wanted)))


def _count_at(watch: ReplicaWatch, t: float) -> int | None:
    """The replica count last read at or before ``t`` (else the first read after it)."""
    found = watch.answered()
    before = [n for at, n in found if at <= t]
    if before:
        return before[-1]
    return found[0][1] if found else None


def _phase_stats(phase: PhaseLog, requests: RequestLog, watch: ReplicaWatch) -> PhaseStats:
    took = [
        took_s
        for started, took_s, ok in zip(requests.started, requests.took_s, requests.ok, strict=True)
        if phase.started <= started < phase.ended and ok
    ]
    failed = sum(
        1
        for started, ok in zip(requests.started, requests.ok, strict=True)
        if phase.started <= started < phase.ended and not ok
    )
    took.sort()
    counts = [n for at, n in watch.answered(phase.started) if at <= phase.ended]
    seconds = phase.ended - phase.started
    return PhaseStats(
        connections=phase.connections,
        seconds=seconds,
        requests=len(took) + failed,
        failed=failed,
        p99_ms=1000 * took[int(0.99 * (len(took) - 1))] if took else None,
        replicas_start=_count_at(watch, phase.started),
        replicas_end=_count_at(watch, phase.ended),
        replicas_max=max(counts) if counts else None,
        replicas_expected=_expected(phase.connections),
        system_cores=(phase.cpu_s_ended - phase.cpu_s_started) / seconds,
    )


def _table(stats: list[PhaseStats]) -> list[str]:
    lines = ["  conns      s  requests  failed   p99 ms  replicas: start end max  expected  cores"]
    for st in stats:
        p99 = "-" if st.p99_ms is None else f"{st.p99_ms:.1f}"
        counts = " ".join(
            f"{'-' if n is None else n:>3}"
            for n in (st.replicas_start, st.replicas_end, st.replicas_max)
        )
        lines.append(
            f"  {st.connections:>5}  {st.seconds:5.1f}  {st.requests:>8}  {st.failed:>6}  "
            f"{p99:>7}  {'':>9}{counts}  {st.replicas_expected:>8}  {st.system_cores:5.2f}"
        )
    return lines


def _step_load(
    ctx: Context, system: str, instance: Server, http_port: int, admin_port: int
) -> None:
    """Steps 1-3 of the module docstring; records the step load, scale up and scale down."""
    min_s = PHASE_MIN_DURATIONS * ctx.options.duration_s
    steps = [Step(c, min_s, STABLE_S, PHASE_MAX_S) for c in CONNECTION_STEPS]
    with ReplicaWatch(admin_port, "work", "Work") as watch:
        phases, requests, stopped_at = step_load(
            http_port, "/work", steps, watch, lambda: instance.usage().cpu_s
        )
        stats = [_phase_stats(phase, requests, watch) for phase in phases]
        timeline = _record_steps(ctx, system, stats, phases)
        try:
            _scale_up(ctx, system, watch, phases[-1])
        except Exception as exc:
            ctx.fail(SCALE_UP, system, exc)
        try:
            _scale_down(ctx, system, watch, instance, stopped_at)
        except Exception as exc:
            ctx.fail(SCALE_DOWN, system, exc)
    origin = phases[0].started
    timeline["replicas"] = [[round(at - origin, 2), n] for at, n in watch.samples]


def _record_steps(
    ctx: Context, system: str, stats: list[PhaseStats], phases: list[PhaseLog]
) -> dict[str, Any]:
    """Records the phases; returns the detail of the "failed, all phases" record, where
    the caller puts the replica counts once the scale down has been watched too."""
    for st in stats:
        tag = f"@{st.connections}c"
        ctx.record(STEP_LOAD, f"requests {tag}", system, st.requests, "", True, asdict(st))
        ctx.record(STEP_LOAD, f"failed {tag}", system, st.failed, "", False)
        ctx.record(STEP_LOAD, f"p99 ms {tag}", system, st.p99_ms, "ms", False)
        ctx.record(STEP_LOAD, f"replicas {tag}", system, st.replicas_end, "", False)
    origin = phases[0].started
    detail: dict[str, Any] = {
        "phases_s": [[round(p.started - origin, 2), round(p.ended - origin, 2)] for p in phases],
        "replicas": [],
    }
    failed = sum(st.failed for st in stats)
    ctx.record(STEP_LOAD, "failed, all phases", system, failed, "", False, detail)
    log(f"[autoscale] {LABELS[system]}, step load on Work:")
    for line in _table(stats):
        log(line)
    return detail


def _scale_up(ctx: Context, system: str, watch: ReplicaWatch, phase: PhaseLog) -> None:
    """How long the last (16-connection) phase took to reach the count it ended with."""
    found = [(at, n) for at, n in watch.answered(phase.started) if at <= phase.ended]
    start = _count_at(watch, phase.started)
    if not found or start is None:
        raise NotScaled("the REST API gave no replica count during the phase")
    settled, reached = found[-1][1], found[-1][0]
    for at, n in reversed(found):
        if n != settled:
            break
        reached = at
    expected = _expected(phase.connections)
    if settled <= start:
        raise NotScaled(
            f"Work stayed at {start} replica(s) for {phase.ended - phase.started:.0f} s "
            f"of {phase.connections} connections (expected {expected})"
        )
    if settled != expected:
        ctx.warn(f"[autoscale] {LABELS[system]} settled at {settled} replicas, not {expected}")
    seconds = reached - phase.started
    detail = {"from": start, "expected": expected}
    ctx.record(SCALE_UP, "s to settled count", system, seconds, "s", False, detail)
    ctx.record(SCALE_UP, "replicas settled", system, settled, "", False)
    log(
        f"[autoscale] {LABELS[system]}: {start} -> {settled} replicas in {seconds:.1f} s "
        f"at {phase.connections} connections (expected {expected})"
    )


def _scale_down(
    ctx: Context, system: str, watch: ReplicaWatch, instance: Server, stopped_at: float
) -> None:
    """How long after the load stopped ``Work`` was back at its minimum."""
    minimum = int(autoscale_config.WORK["min_replicas"])
    before = _count_at(watch, stopped_at)
    if before is None or before <= minimum:
        raise NotScaled(f"Work had {before} replica(s) when the load stopped: nothing to undo")
    deadline = stopped_at + DOWN_LIMIT_S
    while time.perf_counter() < deadline:
        back = [at for at, n in watch.answered(stopped_at) if n <= minimum]
        if back:
            seconds = back[0] - stopped_at
            detail = {"from": before, "to": minimum}
            ctx.record(SCALE_DOWN, "s back to min after load", system, seconds, "s", False, detail)
            log(f"[autoscale] {LABELS[system]}: {before} -> {minimum} replicas in {seconds:.1f} s")
            return
        instance.track()
        time.sleep(POLL_INTERVAL_S)
    raise NotScaled(
        f"Work still had {watch.latest()} replicas {DOWN_LIMIT_S:.0f} s after the load stopped"
    )


def _cold(ctx: Context, system: str, driver: Server) -> float:
    """The driver's cold replica starts (deploy to first 200); returns their median."""
    timeout_s = DRIVER_STEP_TIMEOUT_S * ctx.options.cold_runs
    runs: list[float] = json.loads(_wait_line(driver, "COLD ", timeout_s))["cold_runs_s"]
    median = statistics.median(runs)
    ctx.record(COLD, "s deploy to first 200", system, median, "s", False, {"runs_s": runs})
    log(f"[autoscale] {LABELS[system]}: cold replica start median {median:.3f} s of {runs}")
    return median


def _wait_for_zero(admin_port: int) -> float:
    """Wait until ``Zero`` lists no replica (in any state); returns the seconds waited."""
    start = time.perf_counter()
    states = None
    while time.perf_counter() - start < ZERO_LIMIT_S:
        states = replica_states(admin_port, "zero", "Zero")
        if states == []:
            return time.perf_counter() - start
        time.sleep(POLL_INTERVAL_S)
    raise NotScaled(f"Zero still had replicas {states} after {ZERO_LIMIT_S:.0f} s")


def _timed_get(port: int, path: str) -> float:
    """Seconds one ``GET path`` on a new connection takes to answer 200."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ZERO_REQUEST_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
    except OSError as exc:
        took = time.perf_counter() - start
        raise NotScaled(f"GET {path}: {type(exc).__name__} {exc} after {took:.1f} s") from None
    finally:
        connection.close()
    took = time.perf_counter() - start
    if response.status != 200:
        raise NotScaled(f"GET {path}: {response.status} after {took:.2f} s")
    return took


def _from_zero(
    ctx: Context,
    system: str,
    driver: Server,
    http_port: int,
    admin_port: int,
    cold_s: float | None,
) -> None:
    """First-request latency of ``Zero`` at 0 replicas, against the cold replica start."""
    _wait_line(driver, "ZERO", DRIVER_STEP_TIMEOUT_S)
    waited: list[float] = []
    runs: list[float] = []
    for _ in range(1 + ctx.options.cold_runs):
        waited.append(_wait_for_zero(admin_port))
        runs.append(_timed_get(http_port, "/zero"))
        driver.track()
    first, counted = runs[0], runs[1:]
    median = statistics.median(counted)
    detail = {"runs_s": counted, "first_after_deploy_s": first, "waited_for_zero_s": waited}
    ctx.record(FROM_ZERO, "s first request", system, median, "s", False, detail)
    text = f"[autoscale] {LABELS[system]}: first request from 0 replicas {median:.3f} s "
    text += f"(median of {counted}; {first:.3f} s after the deploy)"
    if cold_s is not None:
        difference = median - cold_s
        ctx.record(FROM_ZERO, "s minus cold replica start", system, difference, "s", False)
        text += f", {difference:+.3f} s against a cold replica start"
    log(text)
