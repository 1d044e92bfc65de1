"""One system's part of the ``ray`` scenario, on a running Ray cluster.

Usage: ``python cluster_driver.py ADDRESS PORT COLD_RUNS DURATION_S WARMUP_S REPEAT``
with ``BENCH_SERVE=ray`` (Ray Serve) or unset (Schooner). The program is the
same for both: ``ray.init(address=ADDRESS)``, then ``bench_apps`` imported with
``from ray import serve`` or ``import schooner as serve``. In order:

1. cold start of the instance: from ``serve.start`` (HTTP on 127.0.0.1:PORT,
   one proxy on the head node) through ``serve.run(hello)`` to the first 200
   on ``/hello``;
2. cold start of an application on the running instance, ``COLD_RUNS`` times:
   ``serve.run`` of a new hello application to its first 200, then deleted;
3. deploys the chain on ``/chain``, prints ``SERVING`` and waits for SIGUSR1
   while the suite loads ``/hello`` and ``/chain`` over HTTP;
4. handle calls on ``echo`` with 1 and with 100 in flight (``handle_driver``);
5. prints ``RESULT {json}``, shuts the system down (``serve.shutdown()``), and
   prints ``LEFTOVER [...]``: the named actors still alive on the cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any

import ray
from first_ok import FirstOk

RAY = os.environ.get("BENCH_SERVE") == "ray"
READY_TIMEOUT_S = 300.0


def main() -> None:
    address, port, cold_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    duration_s, warmup_s, repeat = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    proceed = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: proceed.set())
    ray.init(address=address, logging_level=logging.WARNING)
    if RAY:
        from ray import serve
    else:
        import schooner as serve
    import bench_apps
    from handle_driver import measure

    result: dict[str, Any] = {}
    try:
        poll, start = FirstOk(port, "/hello", READY_TIMEOUT_S), time.perf_counter()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(bench_apps.hello, name="hello", route_prefix="/hello")
        result["cold_instance_s"] = poll.wait(start)
        runs = []
        for i in range(cold_runs):
            poll, start = FirstOk(port, f"/cold{i}", READY_TIMEOUT_S), time.perf_counter()
            serve.run(bench_apps.Hello.bind(), name=f"cold{i}", route_prefix=f"/cold{i}")
            runs.append(poll.wait(start))
            serve.delete(f"cold{i}")
        result["cold_app_runs_s"] = runs
        result["cold_app_s"] = statistics.median(runs)
        serve.run(bench_apps.chain, name="chain", route_prefix="/chain")
        print("SERVING", flush=True)
        proceed.wait()
        serve.delete("hello")
        serve.delete("chain")
        handle = serve.run(bench_apps.echo, name="echo", route_prefix="/echo")
        result["handle"] = asyncio.run(measure(handle, "calls", duration_s, warmup_s, repeat))
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        serve.shutdown()
        named = ray.util.list_named_actors(all_namespaces=True)
        print("LEFTOVER " + json.dumps(named), flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
