"""A real multi-node Ray cluster on this one machine, for the Ray-backend tests.

:class:`LocalRayCluster` wraps ``ray.cluster_utils.Cluster``: a head node and
worker nodes, each with its own raylet and agents, small ``num_cpus`` and a
custom resource naming it (``{"node_a": 10}``), so a test can tell where Ray
placed a replica. The dashboard and usage stats are off; Ray's temp dir is
under the suite's TMPDIR.

It stops exactly what it started: :meth:`LocalRayCluster.kill_node` SIGKILLs
one worker node's processes (raylet and agents; its worker processes then
exit on their own) and waits until they and their children are gone;
:meth:`LocalRayCluster.shutdown` does the same for the whole cluster and
returns whatever is still alive. Never ``ray stop``: it kills every Ray
process on the machine, other people's clusters included.

:func:`ray_processes` finds Ray processes of this test session (a Ray
command line and this session's TMPDIR in the environment) for the
session-wide stray-process check.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import wait_for, wait_until_no_processes

#: The Ray namespace of Schooner's actors (the controller, replicas, proxies).
SCHOONER_NAMESPACE = "schooner"

#: Command lines of Ray's processes: workers (``ray::IDLE``, ``ray::SERVE_REPLICA...``,
#: ``ray::SCHOONER_CONTROLLER``), raylet, gcs_server, agents, log monitor, reaper.
_RAY_CMDLINE = re.compile(r"^ray::|site-packages/ray/|(^|\s)-m ray\.")

#: The head's GCS notices a dead raylet after ``period * threshold`` (Ray's default: 15 s).
_SYSTEM_CONFIG = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 4,
    # Do not start num_cpus idle workers for the first driver: they cost memory and
    # CPU on a 2-core machine, and every test driver would trigger them.
    "prestart_worker_first_driver": False,
    "enable_worker_prestart": False,
}

#: The environment the cluster's processes (and test drivers) run with.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Schooner's admin REST API on the Ray backend: any free port, never a fixed 8265.
    "SCHOONER_ADMIN_PORT": "0",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (a zombie has exited; its parent only has to reap it)."""
    state = _proc_state(pid)
    return state is not None and state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def ray_processes(root: Path) -> list[tuple[int, str]]:
    """Live Ray processes started from this test session (TMPDIR=``root`` in their
    environment), on every node of every cluster the session started."""
    marker = f"TMPDIR={root}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        cmdline = _cmdline(pid)
        if not _RAY_CMDLINE.search(cmdline) or not alive(pid):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append((pid, cmdline))
    return found


def descendants(pids: set[int]) -> set[int]:
    """``pids`` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().split(")")[-1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return {pid for pid in found if alive(pid)}


def wait_gone(pids: set[int], timeout_s: float) -> list[tuple[int, str]]:
    """Wait until none of ``pids`` runs; return those still running at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [(pid, _cmdline(pid)) for pid in sorted(pids) if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@dataclass
class RayNode:
    """One node of the cluster: Ray's ``Node`` and what it was started with."""

    node: Any  # ray._private.node.Node
    num_cpus: float
    resources: dict[str, float]

    @property
    def node_id(self) -> str:
        return str(self.node.node_id)

    def pids(self) -> set[int]:
        """The node's own processes (raylet, agents, ...) and everything below them
        (its worker processes, and what those started)."""
        own = {
            info.process.pid
            for infos in self.node.all_processes.values()
            for info in infos
            if info.process.poll() is None
        }
        return descendants(own)


class LocalRayCluster:
    """A head and worker nodes on this machine (see the module docstring)."""

    def __init__(self, root: Path, *, head_cpus: float = 2, head_resources: dict[str, float]):
        from ray.cluster_utils import Cluster

        self.root = root
        self.temp_dir = root / "ray"
        self.temp_dir.mkdir(exist_ok=True)
        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": head_cpus,
                "resources": head_resources,
                "include_dashboard": False,
                # Ray still runs its (minimal) API server; keep it off 8265, the port of
                # Ray's dashboard and of Schooner's admin API, which others may use.
                "dashboard_port": _free_port(),
                "temp_dir": str(self.temp_dir),
                "_system_config": _SYSTEM_CONFIG,
            },
        )
        self.head = RayNode(self._cluster.head_node, head_cpus, head_resources)
        self.workers: list[RayNode] = []

    @property
    def address(self) -> str:
        """The GCS address, for ``ray.init(address=...)``."""
        return str(self._cluster.address)

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    def add_worker(self, resources: dict[str, float], num_cpus: float = 2) -> RayNode:
        """Start a worker node and wait until the cluster sees it."""
        node = self._cluster.add_node(
            num_cpus=num_cpus, resources=resources, include_dashboard=False
        )
        worker = RayNode(node, num_cpus, resources)
        self.workers.append(worker)
        self._cluster.wait_for_nodes()
        return worker

    def kill_node(self, worker: RayNode, timeout_s: float = 30) -> None:
        """Kill a worker node as a crash would: SIGKILL its raylet and agents (no
        graceful unregistering); its worker processes exit once their raylet is gone.
        Returns when every process of the node has exited."""
        self._remove(worker, graceful=False, timeout_s=timeout_s)

    def remove_worker(self, worker: RayNode, timeout_s: float = 30) -> None:
        """Stop a worker node the orderly way (SIGTERM first)."""
        self._remove(worker, graceful=True, timeout_s=timeout_s)

    def _remove(self, worker: RayNode, *, graceful: bool, timeout_s: float) -> None:
        assert worker is not self.head, "the head node cannot be killed: it holds the GCS"
        pids = worker.pids()
        self._cluster.remove_node(worker.node, allow_graceful=graceful)
        self.workers.remove(worker)
        left = wait_gone(pids, timeout_s)
        assert not left, f"processes of node {worker.node_id} still running: {left}"

    def pids(self) -> set[int]:
        """Every live process this cluster started (on all its nodes)."""
        found: set[int] = set()
        for node in self.nodes:
            found |= node.pids()
        return found

    def shutdown(self, timeout_s: float = 60) -> list[tuple[int, str]]:
        """Stop every node; return the processes that are still running after
        ``timeout_s`` (an empty list when everything it started is gone)."""
        pids = self.pids() | {pid for pid, _ in ray_processes(self.root)}
        self._cluster.shutdown()
        self.workers.clear()
        return wait_gone(pids, timeout_s)


# -- a driver on the cluster ---------------------------------------------------------------
def schooner_actors() -> list[str]:
    """Names of Schooner's live actors on the cluster this driver is connected to."""
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == SCHOONER_NAMESPACE
    )


def ray_connect(cluster: LocalRayCluster) -> None:
    import ray

    ray.init(address=cluster.address, log_to_driver=False)


def ray_disconnect_and_check() -> None:
    """``serve.shutdown()`` and ``ray.shutdown()``; fail if Schooner's actors or
    processes outlive them."""
    import ray

    import schooner as serve

    try:
        serve.shutdown()
        wait_for(lambda: not schooner_actors(), timeout_s=60, message="Schooner's actors to go")
    finally:
        ray.shutdown()
    left = wait_until_no_processes(30.0)
    assert not left, f"Schooner processes left on the Ray cluster: {left}"
