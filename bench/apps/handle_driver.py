"""Measure handle calls from a driver, on Schooner or Ray Serve (``BENCH_SERVE``).

Usage: ``python handle_driver.py MODE PORT DURATION_S WARMUP_S REPEAT``, MODE being
``calls`` (``handle.echo.remote(1)`` with 1 and with 100 calls in flight) or
``array`` (a 4 MiB float32 numpy array there and back, one call at a time).
Deploys ``bench_apps.echo`` (HTTP on 127.0.0.1:PORT, unused), measures from
an asyncio driver awaiting each ``DeploymentResponse`` (on uvloop when
``BENCH_DRIVER_LOOP=uvloop``), and prints one line ``RESULT {json}``. Each
point is measured REPEAT times (default 1); the fastest is kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import bench_apps

RAY = os.environ.get("BENCH_SERVE") == "ray"
ARRAY_BYTES = 4 * 1024 * 1024


async def _drive(handle: Any, payload: Any, in_flight: int, duration_s: float) -> dict[str, Any]:
    """Keep ``in_flight`` calls outstanding for ``duration_s``; count completions."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while True:
            start = time.perf_counter()
            if start >= deadline:
                return
            await handle.echo.remote(payload)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "in_flight": in_flight,
        "calls": len(latencies),
        "elapsed_s": elapsed,
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


async def _best(
    handle: Any, payload: Any, in_flight: int, duration_s: float, warmup_s: float, repeat: int
) -> dict[str, Any]:
    """Warm up, then measure ``repeat`` times and keep the fastest run."""
    await _drive(handle, payload, in_flight, warmup_s)
    runs = [await _drive(handle, payload, in_flight, duration_s) for _ in range(repeat)]
    best = max(runs, key=lambda r: r["calls_per_s"])
    best["runs_calls_per_s"] = [r["calls_per_s"] for r in runs]
    return best


async def measure(
    handle: Any, mode: str, duration_s: float, warmup_s: float, repeat: int
) -> dict[str, Any]:
    if mode == "calls":
        return {str(n): await _best(handle, 1, n, duration_s, warmup_s, repeat) for n in (1, 100)}
    import numpy as np

    array = np.arange(ARRAY_BYTES // 4, dtype=np.float32)
    back = await handle.echo.remote(array)
    if not (isinstance(back, np.ndarray) and np.array_equal(back, array)):
        raise RuntimeError(f"array came back wrong: {type(back)!r}")
    result = await _best(handle, array, 1, duration_s, warmup_s, repeat)
    result["bytes"] = ARRAY_BYTES
    result["gb_per_s"] = ARRAY_BYTES * result["calls_per_s"] / 1e9
    return result


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    duration_s, warmup_s = float(sys.argv[3]), float(sys.argv[4])
    repeat = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    http = {"host": "127.0.0.1", "port": port}
    if RAY:
        import ray
        from ray import serve

        ray.init(num_cpus=2)
    else:
        import schooner as serve
    try:
        serve.start(http_options=http)
        handle = serve.run(bench_apps.echo, name="default", route_prefix="/")
        coro = measure(handle, mode, duration_s, warmup_s, repeat)
        if os.environ.get("BENCH_DRIVER_LOOP") == "uvloop":
            import uvloop

            result = uvloop.run(coro)
        else:
            result = asyncio.run(coro)
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        serve.shutdown()
        if RAY:
            ray.shutdown()


if __name__ == "__main__":
    main()
