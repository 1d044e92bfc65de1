"""The settings of one run, as parsed from the command line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    #: Seconds each measurement lasts, and the warm-up before it.
    duration_s: float
    warmup_s: float
    #: How many cold starts per system (the median is reported).
    cold_runs: int
    #: Seconds an instance idles before its memory is read.
    settle_s: float
    #: ``auto`` (wrk if installed), ``wrk`` or ``builtin``.
    loadgen: str
    #: A Python with ``ray[serve]``; None: no Ray columns.
    ray_python: str | None
    #: Nodes of the local Ray cluster of the ``ray`` scenario (1, or 2: replicas on a
    #: worker node, proxy on the head).
    ray_nodes: int
    #: Another Schooner install's Python (the ``baseline`` system); None: no baseline.
    baseline_python: str | None
    #: The systems compared: some of ``schooner``, ``bare``, ``ray``.
    systems: tuple[str, ...]
    #: ``max_ongoing_requests`` of every bench deployment; None: the default (5).
    max_ongoing: int | None
    #: Load measurements per point (the fastest is reported).
    repeat: int
    #: Seconds to wait at most for other processes to go idle before measuring.
    quiet_wait_s: float
    #: Event loop of the handle drivers: ``asyncio`` or ``uvloop``.
    driver_loop: str
