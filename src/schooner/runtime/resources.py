"""Accounting of this machine's resources for replicas.

CPUs are a *soft* resource in the embedded runtime: a replica's ``num_cpus``
is recorded and reported, and oversubscription is allowed, so that an
application whose replicas each ask for the default one CPU runs on a small
laptop or a 2-core VM (processes share cores; most serving code waits on I/O
or releases the GIL). A machine whose operator wants hard CPU limits passes
``num_cpus`` explicitly, which makes CPUs a hard limit too.

GPUs, memory (the machine's physical memory, in bytes) and custom resources
(including ``accelerator_type:<name>``, which a node must declare) are *hard*
limits: a replica that does not fit waits, and its status says what it is waiting
for. GPUs are assigned by slot (fractions share a device) and exposed through
``CUDA_VISIBLE_DEVICES``: slot n is the n-th device of the node's own
``CUDA_VISIBLE_DEVICES`` when that is set (``"3,5"``: slot 0 is device 3), else
device n; a replica that asks for no GPU gets ``CUDA_VISIBLE_DEVICES=""``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from schooner.exceptions import RayServeException

_EPS = 1e-9


def visible_gpu_ids(cuda_visible_devices: str | None) -> list[str] | None:
    """The device ids a ``CUDA_VISIBLE_DEVICES`` value lists, in order (indices such as
    ``"3"`` or UUIDs such as ``"GPU-8f2c..."``); None when it is unset. As CUDA does, an
    id ``-1`` hides itself and every id after it; ``""`` lists none."""
    if cuda_visible_devices is None:
        return None
    ids = []
    for item in cuda_visible_devices.split(","):
        item = item.strip()
        if item == "-1":
            break
        if item:
            ids.append(item)
    return ids


def detect_gpus(cuda_visible_devices: str | None = None) -> int:
    """Number of GPUs of this node: those ``cuda_visible_devices`` (the value of the head's
    ``CUDA_VISIBLE_DEVICES``, read at start-up) lists when set, else /dev/nvidia*."""
    ids = visible_gpu_ids(cuda_visible_devices)
    if ids is not None:
        return len(ids)
    try:
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    except OSError:
        return 0


def check_num_gpus(num_gpus: float | None, cuda_visible_devices: str | None) -> None:
    """Raise RayServeException if ``num_gpus`` asks for more GPUs than
    ``CUDA_VISIBLE_DEVICES`` lists (there would be no device to give the others)."""
    ids = visible_gpu_ids(cuda_visible_devices)
    if num_gpus is not None and ids is not None and int(num_gpus) > len(ids):
        raise RayServeException(
            f"num_gpus is {num_gpus:g}, but CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} "
            f"lists {len(ids)} GPU{'' if len(ids) == 1 else 's'}: give at most {len(ids)}, "
            "or list more devices."
        )


@dataclass
class Allocation:
    """What one replica holds: its request and the GPU indices (with shares) it got."""

    request: dict[str, float]
    gpus: list[tuple[int, float]] = field(default_factory=list)
    #: Ray backend: the node chosen for the replica (None: Ray chooses, in a placement
    #: group), and the deployment it counts for (``max_replicas_per_node``).
    node_id: str | None = None
    group: str = ""


class ResourcePool:
    """Capacity of one node and what is allocated from it."""

    def __init__(
        self,
        capacity: dict[str, float],
        *,
        hard_cpu: bool = False,
        gpu_ids: list[str] | None = None,
    ) -> None:
        """``gpu_ids``: the device id of each GPU slot (by default ``"0"``, ``"1"``, ...);
        the node's own ``CUDA_VISIBLE_DEVICES`` when that is set."""
        self.capacity = dict(capacity)
        self.hard_cpu = hard_cpu
        self.used: dict[str, float] = {k: 0.0 for k in capacity}
        slots = int(capacity.get("GPU", 0))
        self._gpu_free = [1.0] * slots
        ids = list(gpu_ids or [])[:slots]
        self.gpu_ids = ids + [str(i) for i in range(len(ids), slots)]

    @classmethod
    def detect(
        cls,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
        cuda_visible_devices: str | None = None,
    ) -> ResourcePool:
        """This node's pool. ``cuda_visible_devices``: the head's ``CUDA_VISIBLE_DEVICES``
        (None: unset); when set, it decides how many GPUs there are and which device each
        slot is. Raises RayServeException if ``num_gpus`` is more than it lists."""
        check_num_gpus(num_gpus, cuda_visible_devices)
        capacity: dict[str, float] = {
            "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
            "GPU": float(num_gpus if num_gpus is not None else detect_gpus(cuda_visible_devices)),
        }
        try:
            capacity["memory"] = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
        capacity.update(resources or {})
        return cls(
            capacity,
            hard_cpu=num_cpus is not None,
            gpu_ids=visible_gpu_ids(cuda_visible_devices),
        )

    def cuda_visible_devices(self, allocation: Allocation) -> str:
        """``CUDA_VISIBLE_DEVICES`` for a replica holding ``allocation``: the ids of its GPU
        slots, or ``""`` (no GPU visible, as Ray does) when it asked for none."""
        return ",".join(self.gpu_ids[i] for i, _ in allocation.gpus if i < len(self.gpu_ids))

    def available(self) -> dict[str, float]:
        return {k: self.capacity[k] - self.used.get(k, 0.0) for k in self.capacity}

    def why_not(self, request: dict[str, float]) -> str | None:
        """None if ``request`` fits now, else a sentence saying what is missing."""
        missing = []
        for name, amount in request.items():
            if amount <= 0 or (name == "CPU" and not self.hard_cpu):
                continue
            if name not in self.capacity:
                missing.append(f"{name}: needs {amount:g}, this node has none")
                continue
            if name == "GPU":
                if not self._gpu_slots(amount):
                    missing.append(f"GPU: needs {amount:g}, {self._gpu_summary()}")
                continue
            free = self.capacity[name] - self.used.get(name, 0.0)
            if amount > free + _EPS:
                missing.append(
                    f"{name}: needs {amount:g}, {free:g} of {self.capacity[name]:g} free"
                )
        if not missing:
            return None
        return "Waiting for resources (" + "; ".join(missing) + ")."

    def _gpu_summary(self) -> str:
        total = len(self._gpu_free)
        return f"{sum(self._gpu_free):g} of {total} free" if total else "this node has none"

    def _gpu_slots(self, amount: float) -> list[tuple[int, float]] | None:
        if amount < 1:
            for index, free in enumerate(self._gpu_free):
                if free + _EPS >= amount:
                    return [(index, amount)]
            return None
        whole = math.ceil(amount - _EPS)
        free_ids = [i for i, f in enumerate(self._gpu_free) if f > 1 - _EPS]
        if len(free_ids) < whole:
            return None
        return [(i, 1.0) for i in free_ids[:whole]]

    def allocate(self, request: dict[str, float]) -> Allocation | None:
        """Take ``request`` from the pool, or return None if it does not fit."""
        if self.why_not(request) is not None:
            return None
        allocation = Allocation(request=dict(request))
        gpus = request.get("GPU", 0.0)
        if gpus > 0:
            slots = self._gpu_slots(gpus) or []
            for index, share in slots:
                self._gpu_free[index] -= share
            allocation.gpus = slots
        for name, amount in request.items():
            self.used[name] = self.used.get(name, 0.0) + amount
        return allocation

    def release(self, allocation: Allocation) -> None:
        for index, share in allocation.gpus:
            self._gpu_free[index] = min(1.0, self._gpu_free[index] + share)
        for name, amount in allocation.request.items():
            self.used[name] = max(0.0, self.used.get(name, 0.0) - amount)

    def restore(self, allocation: Allocation) -> None:
        """Count ``allocation`` as taken again (a re-adopted replica holds it), even if
        the pool has shrunk since: what runs is not taken away."""
        for index, share in allocation.gpus:
            if index < len(self._gpu_free):
                self._gpu_free[index] = max(0.0, self._gpu_free[index] - share)
        for name, amount in allocation.request.items():
            self.used[name] = self.used.get(name, 0.0) + amount
