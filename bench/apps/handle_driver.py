"""Measure handle calls from a driver, on Schooner or Ray Serve (``BENCH_SERVE``).

Usage: ``python handle_driver.py MODE PORT DURATION_S WARMUP_S``, MODE being
``calls`` (``handle.echo.remote(1)`` with 1 and with 100 calls in flight) or
``array`` (a 4 MiB float32 numpy array there and back, one call at a time).
Deploys ``bench_apps.echo`` (HTTP on 127.0.0.1:PORT, unused), measures from
an asyncio driver awaiting each ``DeploymentResponse`` (on uvloop when
``BENCH_DRIVER_LOOP=uvloop``), and prints one line ``RESULT {json}``.
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


async def _measure(handle: Any, mode: str, duration_s: float, warmup_s: float) -> dict[str, Any]:
    if mode == "calls":
        out: dict[str, Any] = {}
        for in_flight in (1, 100):
            await _drive(handle, 1, in_flight, warmup_s)
            out[str(in_flight)] = await _drive(handle, 1, in_flight, duration_s)
        return out
    import numpy as np

    array = np.arange(ARRAY_BYTES // 4, dtype=np.float32)
    back = await handle.echo.remote(array)
    if not (isinstance(back, np.ndarray) and np.array_equal(back, array)):
        raise RuntimeError(f"array came back wrong: {type(back)!r}")
    await _drive(handle, array, 1, warmup_s)
    result = await _drive(handle, array, 1, duration_s)
    result["bytes"] = ARRAY_BYTES
    result["gb_per_s"] = ARRAY_BYTES * result["calls_per_s"] / 1e9
    return result


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    duration_s, warmup_s = float(sys.argv[3]), float(sys.argv[4])
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
        coro = _measure(handle, mode, duration_s, warmup_s)
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
