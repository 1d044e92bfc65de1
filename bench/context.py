"""What a run knows: its options, the servers it started and what it measured."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import systems
from bench.cpu import CpuWatch, wait_for_quiet
from bench.load import LoadResult, run_load
from bench.options import Options
from bench.procs import Server, ServerSet, free_port

#: Cores used by processes that are neither measured nor the load generator,
#: above which a measurement is flagged as noisy.
NOISY_OTHER_CORES = 0.3


@dataclass
class Record:
    """One number: ``scenario`` / ``metric`` measured on ``system``."""

    scenario: str
    metric: str
    system: str
    value: float | None
    unit: str
    higher_is_better: bool
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Context:
    """Shared by the scenarios: starts systems, measures load, keeps records."""

    def __init__(self, options: Options, log_dir: Path) -> None:
        self.options = options
        self.servers = ServerSet(log_dir)
        self.records: list[Record] = []
        self.cache: dict[str, LoadResult] = {}
        self.warnings: list[str] = []

    def available(self, *wanted: str) -> list[str]:
        """Those of ``wanted`` this run compares (Ray and baseline only given their Python)."""
        found = [s for s in wanted if s in self.options.systems]
        needs = {
            systems.RAY: self.options.ray_python,
            systems.BASELINE: self.options.baseline_python,
        }
        return [s for s in found if needs.get(s, True)]

    def record(
        self,
        scenario: str,
        metric: str,
        system: str,
        value: float | None,
        unit: str,
        higher_is_better: bool = True,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.records.append(
            Record(scenario, metric, system, value, unit, higher_is_better, detail or {})
        )

    def fail(self, scenario: str, system: str, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        log(f"[{scenario}] {systems.LABELS[system]} FAILED: {message}")
        self.records.append(Record(scenario, "", system, None, "", True, error=message))

    def warn(self, message: str) -> None:
        log(f"WARNING: {message}")
        self.warnings.append(message)

    @contextlib.contextmanager
    def serving(
        self, system: str, app: str, cli: bool = False, extra_env: dict[str, str] | None = None
    ) -> Iterator[tuple[Server, int]]:
        """Start ``app`` on ``system``, wait for its first 200 OK, stop it afterwards."""
        port = free_port()
        server = systems.start_http(self.servers, self.options, system, app, port, cli, extra_env)
        try:
            interval = 0.1 if system == systems.RAY else 0.01
            server.wait_http_ok(port, systems.READY_TIMEOUT_S[system], interval_s=interval)
            server.track()
            yield server, port
        finally:
            server.stop()

    def load(
        self,
        scenario: str,
        server: Server,
        port: int,
        connections: int,
        body_bytes: int = 0,
        path: str = "/",
    ) -> LoadResult:
        """Warm up, then measure (``--repeat`` times, keeping the fastest run); record
        the CPU split, load average and every run in ``extra``. ``server`` is whose
        process tree the CPU split counts as the system's."""
        opts = self.options
        where = f"{server.name}{path if path != '/' else ''} @{connections}c"
        label = f"{scenario} {where}"
        runs: list[LoadResult] = []
        for _ in range(opts.repeat):
            self.quiet(label, server)
            run_load(port, connections, opts.warmup_s, body_bytes, opts.loadgen, path)
            watch = CpuWatch(server)
            result = run_load(port, connections, opts.duration_s, body_bytes, opts.loadgen, path)
            split = watch.stop()
            result.extra = {"cpu": split.as_dict(), "load_average_1m": os.getloadavg()[0]}
            log(
                f"[{scenario}] {where}: "
                f"{result.requests_per_s:,.0f} req/s, p50 {result.p50_ms:.3f} ms, "
                f"p99 {result.p99_ms:.3f} ms, cores: system {split.system_cores:.2f}, "
                f"loadgen {split.loadgen_cores:.2f}, other {split.other_cores:.2f}"
            )
            runs.append(result)
        best = max(runs, key=lambda r: r.requests_per_s)
        best.extra["runs"] = [
            {"requests_per_s": r.requests_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}
            for r in runs
        ]
        other = best.extra["cpu"]["other_cores"]
        if other > NOISY_OTHER_CORES:
            self.warn(f"{label}: other processes used {other:.2f} cores (noisy)")
        if best.errors:
            self.warn(f"{label}: {best.errors} errors or non-2xx answers")
        return best

    def quiet(self, label: str, server: Server | None = None) -> None:
        """Wait (bounded by ``--quiet-wait``) until the rest of the machine is idle."""
        if self.options.quiet_wait_s <= 0:
            return
        waited, other = wait_for_quiet(server, self.options.quiet_wait_s)
        if other >= 0.25:
            log(f"[{label}] machine still busy after {waited:.0f} s ({other:.2f} cores)")
        elif waited > 1:
            log(f"[{label}] waited {waited:.0f} s for a quiet machine")

    def run_driver(self, system: str, mode: str, budget_s: float) -> dict[str, Any]:
        """Run ``handle_driver.py MODE`` on ``system`` and return its RESULT."""
        self.quiet(f"{mode} {system}")
        server = systems.start_driver(self.servers, self.options, system, mode)
        try:
            limit_s = budget_s + systems.READY_TIMEOUT_S[system]
            deadline = time.perf_counter() + limit_s
            while server.alive() and time.perf_counter() < deadline:
                server.track()
                time.sleep(0.2)
            if server.alive():
                raise server.fail(f"still running after {limit_s:.0f} s")
            for line in server.log_path.read_text(errors="replace").splitlines():
                if line.startswith("RESULT "):
                    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                    return result
            raise server.fail(f"exited ({server.proc and server.proc.returncode}) without RESULT")
        finally:
            server.stop()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
