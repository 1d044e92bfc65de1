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
for. GPUs are assigned by
index (fractions share a device) and exposed through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

_EPS = 1e-9


def detect_gpus() -> int:
    """Number of GPUs visible to this process (``CUDA_VISIBLE_DEVICES`` or /dev/nvidia*)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    try:
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    except OSError:
        return 0


@dataclass
class Allocation:
    """What one replica holds: its request and the GPU indices (with shares) it got."""

    request: dict[str, float]
    gpus: list[tuple[int, float]] = field(default_factory=list)

    @property
    def cuda_visible_devices(self) -> str | None:
        if not self.gpus:
            return None
        return ",".join(str(i) for i, _ in self.gpus)


class ResourcePool:
    """Capacity of one node and what is allocated from it."""

    def __init__(self, capacity: dict[str, float], *, hard_cpu: bool = False) -> None:
        self.capacity = dict(capacity)
        self.hard_cpu = hard_cpu
        self.used: dict[str, float] = {k: 0.0 for k in capacity}
        self._gpu_free = [1.0] * int(capacity.get("GPU", 0))

    @classmethod
    def detect(
        cls,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
    ) -> ResourcePool:
        capacity: dict[str, float] = {
            "CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1)),
            "GPU": float(num_gpus if num_gpus is not None else detect_gpus()),
        }
        try:
            capacity["memory"] = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
        capacity.update(resources or {})
        return cls(capacity, hard_cpu=num_cpus is not None)

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
