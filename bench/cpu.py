"""Where the CPU went during a measurement: the system measured, the load
generator, and everything else on the machine (the noise)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Server, process_label

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its reaped children (wrk, once it has exited)."""
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class CpuSplit:
    """Average cores used during a measurement, by whom."""

    system_cores: float
    loadgen_cores: float
    other_cores: float
    #: The system's cores by process (label -> cores, summed over same labels).
    by_process: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {
            "system_cores": round(self.system_cores, 3),
            "loadgen_cores": round(self.loadgen_cores, 3),
            "other_cores": round(self.other_cores, 3),
            "by_process": {k: round(v, 3) for k, v in self.by_process.items()},
        }


class CpuWatch:
    """Call :meth:`stop` after the measured work; ``server`` is the system measured."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.t0 = time.perf_counter()
        self.busy0 = _machine_busy_s()
        self.own0 = _own_cpu_s()
        self.system0 = server.usage()

    def stop(self) -> CpuSplit:
        elapsed = time.perf_counter() - self.t0
        usage = self.server.usage()
        system = usage.cpu_s - self.system0.cpu_s
        own = _own_cpu_s() - self.own0
        busy = _machine_busy_s() - self.busy0
        by_process: dict[str, float] = {}
        for pid, cpu_s in usage.cpu_by_pid.items():
            used = cpu_s - self.system0.cpu_by_pid.get(pid, 0.0)
            label = process_label(pid)
            by_process[label] = by_process.get(label, 0.0) + used / elapsed
        other = max(0.0, busy - system - own) / elapsed
        return CpuSplit(system / elapsed, own / elapsed, other, by_process)


def wait_for_quiet(
    server: Server | None, max_wait_s: float, threshold_cores: float = 0.25, window_s: float = 0.5
) -> tuple[float, float]:
    """Wait until processes other than ``server``'s tree (and this one) use less
    than ``threshold_cores``, measured over ``window_s``; give up after ``max_wait_s``.

    Returns (seconds waited, cores the others used in the last window).
    """
    start = time.perf_counter()
    other = 0.0
    while True:
        busy0, own0 = _machine_busy_s(), _own_cpu_s()
        system0 = server.usage().cpu_s if server else 0.0
        t0 = time.perf_counter()
        time.sleep(window_s)
        elapsed = time.perf_counter() - t0
        system = (server.usage().cpu_s if server else 0.0) - system0
        busy = _machine_busy_s() - busy0 - (_own_cpu_s() - own0)
        other = max(0.0, busy - system) / elapsed
        waited = time.perf_counter() - start
        if other < threshold_cores or waited >= max_wait_s:
            return waited, other
