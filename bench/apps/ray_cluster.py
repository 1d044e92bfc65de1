"""Hold one local Ray cluster until SIGTERM or SIGINT (run with a Python that has Ray).

Usage: ``python ray_cluster.py NODES HEAD_CPUS WORKER_CPUS``. Starts a head node
(dashboard off, every port chosen by Ray among the free ones) and, with
``NODES`` = 2, one worker node, prints ``ADDRESS host:port`` (the GCS address
for ``ray.init``) and waits.
On SIGTERM or SIGINT it removes both nodes (``Cluster.shutdown``), prints
``STOPPED`` and exits. Every Ray process is a descendant of this one, so the
suite can follow and stop exactly this cluster; ``RAY_TMPDIR`` (set by the
suite) keeps its session files and address file out of the shared ``/tmp/ray``.
"""

from __future__ import annotations

import signal
import sys
import threading

from ray.cluster_utils import Cluster


def _node_args(num_cpus: int) -> dict[str, object]:
    """No dashboard, and no fixed port: the machine is shared with other clusters. Ports
    left unset (GCS, metrics, runtime-env agent) or None (the dashboard agent, whose
    default is 52365) are bound by Ray itself on any free port, without the race of
    picking a free port here and binding it later."""
    return {"num_cpus": num_cpus, "include_dashboard": False, "dashboard_agent_listen_port": None}


def main() -> None:
    nodes, head_cpus, worker_cpus = (int(arg) for arg in sys.argv[1:4])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = Cluster(initialize_head=True, head_node_args=_node_args(head_cpus))
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**_node_args(worker_cpus))
        print(f"ADDRESS {cluster.address}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        cluster.shutdown()
        print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
