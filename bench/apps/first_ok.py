"""When a path first answers 200: the poller the drivers time deployments with."""

from __future__ import annotations

import socket
import threading
import time

POLL_INTERVAL_S = 0.005


def status(port: int, path: str) -> int | None:
    """Status code of ``GET path`` on 127.0.0.1:port, or None if there is no answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = sock.recv(4096)
        return int(head.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return None


class FirstOk:
    """Polls ``GET path`` every 5 ms from a thread until it answers 200 (at most
    ``timeout_s``); :meth:`wait` gives when, counted from a given instant."""

    def __init__(self, port: int, path: str, timeout_s: float) -> None:
        self.port, self.path, self.timeout_s = port, path, timeout_s
        self.at: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        deadline = time.perf_counter() + self.timeout_s
        while time.perf_counter() < deadline:
            if status(self.port, self.path) == 200:
                self.at = time.perf_counter()
                break
            time.sleep(POLL_INTERVAL_S)
        self._done.set()

    def wait(self, since: float) -> float:
        self._done.wait()
        if self.at is None:
            raise RuntimeError(f"no 200 on {self.path} within {self.timeout_s:.0f} s")
        return self.at - since
