"""The system's side of the ``autoscale`` scenario: one program for Ray Serve and Schooner.

Usage: ``python autoscale_driver.py HTTP_PORT ADMIN_PORT COLD_RUNS`` with
``BENCH_SERVE=ray`` (Ray Serve) or unset (Schooner). In order:

1. starts or joins the instance: Ray Serve starts a local Ray here
   (``ray.init(num_cpus=2)``, its dashboard, which serves the REST API, on
   127.0.0.1:ADMIN_PORT); Schooner joins the instance the suite started with
   ``schooner start --block`` (``SCHOONER_ADDRESS`` names it). Then
   ``serve.start`` with HTTP on 127.0.0.1:HTTP_PORT;
2. deploys ``Work`` on ``/work``, prints ``SERVING`` and waits for SIGUSR1
   while the suite loads it;
3. cold replica start, ``COLD_RUNS`` times: ``serve.run`` of a new one-replica
   application to its first 200 (polled every 5 ms), then deleted; prints
   ``COLD {json}``;
4. deploys ``Zero`` on ``/zero`` (no replica to start with), prints ``ZERO``
   and serves until SIGTERM or SIGINT, then shuts the system down.

A step that fails prints ``FAILED <why>`` and the driver waits for its signal
to stop: the suite records the failure and goes on with what it can measure.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from first_ok import FirstOk

RAY = os.environ.get("BENCH_SERVE") == "ray"
READY_TIMEOUT_S = 120.0


def main() -> None:
    http_port, admin_port, cold_runs = (int(arg) for arg in sys.argv[1:4])
    if RAY:
        import ray

        ray.init(
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=admin_port,
            logging_level=logging.WARNING,
        )
        from ray import serve
    else:
        import schooner as serve
    import autoscale_apps as apps

    # After ray.init, which installs a SIGTERM handler of its own.
    proceed, stop = threading.Event(), threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: proceed.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(apps.Work.bind(), name="work", route_prefix="/work")
        print("SERVING", flush=True)
        while not (proceed.wait(0.5) or stop.is_set()):
            pass
        runs: list[float] = []
        for i in range(cold_runs):
            if stop.is_set():
                break
            poll, start = FirstOk(http_port, f"/cold{i}", READY_TIMEOUT_S), time.perf_counter()
            serve.run(apps.Cold.bind(), name=f"cold{i}", route_prefix=f"/cold{i}")
            runs.append(poll.wait(start))
            serve.delete(f"cold{i}")
        result: dict[str, Any] = {"cold_runs_s": runs}
        print("COLD " + json.dumps(result), flush=True)
        serve.run(apps.Zero.bind(), name="zero", route_prefix="/zero")
        print("ZERO", flush=True)
    except Exception:
        print("FAILED " + traceback.format_exc().replace("\n", " | "), flush=True)
    while not stop.wait(0.5):
        pass
    serve.shutdown()
    if RAY:
        ray.shutdown()


if __name__ == "__main__":
    main()
