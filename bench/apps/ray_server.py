"""Serve one of ``bench_apps`` on Ray Serve until SIGTERM (run with a Python that has Ray).

Usage: ``python ray_server.py APP PORT``. Starts a local Ray with
``ray.init(num_cpus=2)``, deploys ``bench_apps.<APP>`` with HTTP on
127.0.0.1:PORT, prints ``READY`` and serves until SIGTERM or SIGINT, then
shuts Serve and Ray down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

os.environ["BENCH_SERVE"] = "ray"

import bench_apps
import ray
from ray import serve


def main() -> None:
    app_name, port = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(num_cpus=2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(getattr(bench_apps, app_name), name="default", route_prefix="/")
        print("READY", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
