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


class Load:
    """Steady HTTP load from a few threads; counts answers and failures.

    A failure is any exception or a status other than 200; each is kept with
    what it was, so a test can show exactly which requests failed.
    """

    def __init__(
        self,
        url: str,
        *,
        body: object = None,
        threads: int = 4,
        check: Callable[[object], bool] | None = None,
    ) -> None:
        import threading

        import httpx

        self.url = url
        self.body = body
        self.check = check
        self.ok = 0
        self.failures: list[str] = []
        self.answers: list[object] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clients = [httpx.Client(timeout=30) for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(c,), daemon=True) for c in self._clients
        ]

    def _run(self, client: object) -> None:
        import httpx

        assert isinstance(client, httpx.Client)
        while not self._stop.is_set():
            try:
                resp = client.post(self.url, json=self.body)
                if resp.status_code != 200:
                    raise AssertionError(f"HTTP {resp.status_code}: {resp.text[:200]}")
                value = resp.json()
                with self._lock:
                    self.ok += 1
                    self.answers.append(value)
            except Exception as exc:
                with self._lock:
                    self.failures.append(repr(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        wait_for(lambda: self.ok > 10, message="load to get going")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        for c in self._clients:
            c.close()

    def since(self, mark: int) -> list[object]:
        with self._lock:
            return self.answers[mark:]
