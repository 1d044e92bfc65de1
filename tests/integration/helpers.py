"""Helpers for integration tests: free ports and waiting with a deadline (never a bare sleep)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float = 30.0,
    interval_s: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {message}; last error: {last_exc!r}"
    )


def schooner_processes(root: Path | None = None) -> list[tuple[int, str]]:
    """Live processes of ours: any python -m schooner.* whose session is under ``root``."""
    root = root or Path(os.environ["TMPDIR"])
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.split(")")[-1].split()[0] == "Z":
            continue  # zombie: already exited, waiting to be reaped by its parent
        if "-m schooner." in cmdline and str(root) in cmdline:
            found.append((int(entry), cmdline))
    return found


def wait_until_no_processes(
    timeout_s: float = 10.0, root: Path | None = None
) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = schooner_processes(root)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
