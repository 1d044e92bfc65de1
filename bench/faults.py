"""Fault injection under load: replicas killed, the head killed, an application deleted,
and a deployment overloaded.

- **replica kills**: three replicas at steady HTTP load; one replica is killed
  with SIGKILL every second for 20 s. Reports the failed-request ratio (only
  requests running on a killed replica should fail).
- **head kills**: the same load; the head process is killed with SIGKILL three
  times, 3 s apart, and restarted by the supervisor each time. Reports failed
  requests (target 0), how long the control plane was away each time, and how
  many replicas were restarted because of it (target 0: they are re-adopted).
- **delete another app**: the same load while another application is deleted.
- **overload**: one replica that takes 10 ms per request, ``max_ongoing=2``,
  ``max_queued=4``, offered about ten times what it can serve. Reports the
  share of requests refused at once (503), how fast refusals are, the p99 of
  accepted requests, and whether ``/-/healthz`` kept answering meanwhile.

Schooner only, on a detached instance started with ``schooner start``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import textwrap
import threading
import time
from typing import Any

from bench.context import Context, log
from bench.detached import Detached, running_instance
from bench.load import LoadResult, read_response, run_load
from bench.systems import SCHOONER

KILL_EVERY_S = 1.0
HEAD_KILLS = 3
HEAD_KILL_EVERY_S = 3.0
KILL_FOR_S = 20.0
OVERLOAD_S = 10.0
OVERLOAD_CONNECTIONS = 64

APP = textwrap.dedent(
    """
    import asyncio
    import schooner as serve

    @serve.deployment(num_replicas=3, max_ongoing_requests=16)
    async def worker(request):
        await asyncio.sleep(0.002)
        return "ok"

    @serve.deployment(max_ongoing_requests=2, max_queued_requests=4)
    async def slow(request):
        await asyncio.sleep(0.01)
        return "ok"

    workers = worker.bind()
    slow_app = slow.bind()
    """
)

CONFIG = {
    "applications": [
        {"name": "workers", "route_prefix": "/", "import_path": "faultapp:workers"},
        {"name": "slow", "route_prefix": "/slow", "import_path": "faultapp:slow_app"},
    ]
}
OTHER = {"name": "other", "route_prefix": "/other", "import_path": "faultapp:workers"}


def faults(ctx: Context) -> None:
    """Replica kills and overload (see the module docstring)."""
    if SCHOONER not in ctx.available(SCHOONER):
        return
    with running_instance("bench-faults-", {"faultapp.py": APP}) as inst:
        inst.deploy(CONFIG)
        inst.wait_running("workers", "slow")
        scenarios = (
            ("replica kills", _kills),
            ("head kills", _head_kills),
            ("delete another app", _delete_other),
            ("overload", _overload),
        )
        for name, run in scenarios:
            try:
                run(ctx, inst)
            except Exception as exc:
                ctx.fail(name, SCHOONER, exc)


def _kills(ctx: Context, inst: Detached) -> None:
    thread, result = _under_load(inst, KILL_FOR_S + 3, warmup_s=1.5)
    killed = 0
    end = time.monotonic() + KILL_FOR_S
    while time.monotonic() < end:
        pids = inst.replica_pids("workers")
        if pids:
            os.kill(random.choice(pids), signal.SIGKILL)
            killed += 1
        time.sleep(KILL_EVERY_S)
    thread.join()
    r = result["load"]
    ratio = r.errors / max(1, r.requests + r.errors)
    detail = {**r.as_dict(), "killed": killed}
    ctx.record("replica kills", "failed %", SCHOONER, 100 * ratio, "%", False, detail)
    ctx.record("replica kills", "failed requests", SCHOONER, r.errors, "", False)
    ctx.record("replica kills", "replicas killed", SCHOONER, killed, "", False)
    ctx.record("replica kills", "req/s", SCHOONER, r.requests_per_s, "req/s", True)
    log(
        f"[faults] {killed} replicas killed in {KILL_FOR_S:.0f} s: {r.errors} failed of "
        f"{r.requests} requests ({100 * ratio:.3f}%)"
    )


def _under_load(
    inst: Detached, duration_s: float, warmup_s: float = 1.0
) -> tuple[threading.Thread, dict[str, LoadResult]]:
    """Start ``duration_s`` of load (8 connections) in a thread; return after ``warmup_s``.
    The thread puts its result under ``"load"``."""
    result: dict[str, LoadResult] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("load", run_load(inst.http_port, 8, duration_s))
    )
    thread.start()
    time.sleep(warmup_s)
    return thread, result


def _head_kills(ctx: Context, inst: Detached) -> None:
    before = sorted(inst.replica_pids("workers"))
    thread, result = _under_load(inst, HEAD_KILLS * HEAD_KILL_EVERY_S + 2)
    away: list[float] = []
    for _ in range(HEAD_KILLS):
        pid = int(inst.instance()["pid"])
        killed_at = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                if int(inst.instance()["pid"]) != pid:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        away.append(time.perf_counter() - killed_at)
        inst.wait_running("workers")
        time.sleep(max(0.0, HEAD_KILL_EVERY_S - (time.perf_counter() - killed_at)))
    thread.join()
    r = result["load"]
    restarted = len(set(before) - set(inst.replica_pids("workers")))
    detail = {**r.as_dict(), "head_kills": HEAD_KILLS, "away_s": [round(a, 3) for a in away]}
    ctx.record("head kills", "failed requests", SCHOONER, r.errors, "", False, detail)
    ctx.record("head kills", "control plane away s", SCHOONER, max(away), "s", False)
    ctx.record("head kills", "replicas restarted", SCHOONER, restarted, "", False)
    ctx.record("head kills", "req/s", SCHOONER, r.requests_per_s, "req/s", True)
    log(
        f"[faults] head killed {HEAD_KILLS} times: {r.errors} failed of {r.requests} requests; "
        f"new head answered after {', '.join(f'{a:.2f}' for a in away)} s; "
        f"{restarted} of {len(before)} replicas restarted"
    )


def _delete_other(ctx: Context, inst: Detached) -> None:
    inst.deploy({"applications": [*CONFIG["applications"], OTHER]})
    inst.wait_running("workers", "slow", "other")
    thread, result = _under_load(inst, 5.0)
    inst.deploy(CONFIG)  # "other" is no longer in the config: deleted
    while "other" in inst.applications():
        time.sleep(0.05)
    thread.join()
    r = result["load"]
    ctx.record("delete another app", "failed requests", SCHOONER, r.errors, "", False, r.as_dict())
    log(f"[faults] another app deleted under load: {r.errors} failed of {r.requests} requests")


async def _overload_client(
    port: int, path: str, deadline: float, out: list[tuple[int, float]]
) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            out.append((status, time.perf_counter() - start))
    finally:
        writer.close()


async def _overload_run(port: int) -> tuple[list[tuple[int, float]], list[float]]:
    deadline = time.perf_counter() + OVERLOAD_S
    answers: list[tuple[int, float]] = []
    health: list[float] = []

    async def probe() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await reader.read()
            writer.close()
            if data.startswith(b"HTTP/1.1 200"):
                health.append(time.perf_counter() - start)
            await asyncio.sleep(0.1)

    clients = [
        _overload_client(port, "/slow", deadline, answers) for _ in range(OVERLOAD_CONNECTIONS)
    ]
    await asyncio.gather(probe(), *clients)
    return answers, health


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))] if values else float("nan")


def _overload(ctx: Context, inst: Detached) -> None:
    answers, health = asyncio.run(_overload_run(inst.http_port))
    ok = [t for status, t in answers if status == 200]
    refused = [t for status, t in answers if status == 503]
    other = len(answers) - len(ok) - len(refused)
    share = len(refused) / max(1, len(answers))
    detail: dict[str, Any] = {
        "answers": len(answers),
        "ok": len(ok),
        "refused": len(refused),
        "other": other,
        "health_answers": len(health),
        "accepted_p50_ms": 1000 * _pct(ok, 0.5),
    }
    ctx.record("overload", "503 share %", SCHOONER, 100 * share, "%", False, detail)
    ctx.record("overload", "503 p99 ms", SCHOONER, 1000 * _pct(refused, 0.99), "ms", False)
    ctx.record("overload", "accepted p99 ms", SCHOONER, 1000 * _pct(ok, 0.99), "ms", False)
    ctx.record("overload", "accepted req/s", SCHOONER, len(ok) / OVERLOAD_S, "req/s", True)
    ctx.record("overload", "healthz p99 ms", SCHOONER, 1000 * _pct(health, 0.99), "ms", False)
    log(
        f"[faults] overload: {len(answers)} answers, {len(ok)} ok, {len(refused)} refused "
        f"({100 * share:.1f}%, p99 {1000 * _pct(refused, 0.99):.1f} ms), other {other}; "
        f"accepted p99 {1000 * _pct(ok, 0.99):.1f} ms; healthz answered {len(health)} times, "
        f"p99 {1000 * _pct(health, 0.99):.1f} ms"
    )
