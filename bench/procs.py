"""Processes the suite starts: launch, readiness, process trees, memory, stopping.

Every server runs in a new session (its own process group) with its output in
a log file. Systems that start further processes in sessions of their own
(Schooner's head, Ray's raylet and workers) are followed through ``/proc``:
each :class:`Server` remembers every descendant it has seen, by pid and
start time, so that :meth:`Server.stop` ends exactly the processes this suite
caused to exist and no others. Linux only (``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerError(RuntimeError):
    """A server did not come up, or died; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (index 0 = state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children = _children_map()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_label(pid: int) -> str:
    """A short name for a process: ``proxy.main``, ``raylet``, ``ray::ProxyActor``..."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv if a]
    if args and args[0].startswith("ray::"):
        return args[0].split()[0]
    if "-m" in args[:-1]:
        return args[args.index("-m") + 1].removeprefix("schooner.")
    for arg in args[1:3]:
        if arg.endswith(".py") or "/bin/" in arg:
            return f"{comm}:{Path(arg).name}"
    return comm


@dataclass
class TreeUsage:
    """Memory and CPU of a set of processes at one instant; ``cpu_by_pid`` in seconds."""

    processes: int
    rss_bytes: int
    pss_bytes: int
    cpu_s: float
    cpu_by_pid: dict[int, float] = field(default_factory=dict)


def tree_usage(pids: Iterable[int]) -> TreeUsage:
    """Sum RSS, PSS (``smaps_rollup``) and CPU time (user + system) over ``pids``."""
    count = rss = pss = 0
    cpu: dict[int, float] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z":
            continue
        count += 1
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss += int(fields[21]) * PAGE_SIZE
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
    return TreeUsage(count, rss, pss, sum(cpu.values()), cpu)


def http_get_status(port: int, path: str = "/", timeout_s: float = 2.0) -> int | None:
    """Status code of ``GET path`` on 127.0.0.1:port, or None if it cannot connect."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                head += chunk
    except OSError:
        return None
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


@dataclass
class Server:
    """A process this suite started, and everything it started in turn."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    stop_grace_s: float = 30.0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    seen: dict[int, int | None] = field(default_factory=dict)

    def start(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.seen[self.proc.pid] = _start_time(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def track(self) -> list[int]:
        """Record and return the live process tree (the server and its descendants)."""
        if not self.alive():
            return []
        pids = descendants(self.pid)
        for pid in pids:
            self.seen.setdefault(pid, _start_time(pid))
        return pids

    def usage(self) -> TreeUsage:
        return tree_usage(self.track())

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> ServerError:
        return ServerError(f"{self.name}: {why}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def wait_http_ok(
        self, port: int, timeout_s: float, path: str = "/", interval_s: float = 0.005
    ) -> float:
        """Poll ``GET path`` every ``interval_s`` until 200; return seconds since start."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if http_get_status(port, path) == 200:
                return time.perf_counter() - self.started_at
            if not self.alive():
                raise self.fail(f"exited with status {self.proc and self.proc.returncode}")
            time.sleep(interval_s)
        raise self.fail(f"no 200 OK on port {port} within {timeout_s:.0f} s")

    def wait_output(self, marker: str, timeout_s: float) -> None:
        """Wait until ``marker`` appears in the log (or the process exits)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if marker in self.log_path.read_text(errors="replace"):
                return
            if not self.alive():
                raise self.fail(f"exited with status {self.proc and self.proc.returncode}")
            time.sleep(0.05)
        raise self.fail(f"{marker!r} not printed within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop gracefully, then SIGKILL whatever of the tree is left (by pid)."""
        if self.proc is None:
            return
        self.track()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
            deadline = time.perf_counter() + self.stop_grace_s
            while self.alive() and time.perf_counter() < deadline:
                self.track()
                time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._kill_seen()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def _kill_seen(self) -> None:
        """SIGKILL every remembered process still alive, then wait for them to go."""
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline:
            left = [pid for pid, t0 in self.seen.items() if t0 and _start_time(pid) == t0]
            left = [pid for pid in left if (_stat_fields(pid) or ["Z"])[0] != "Z"]
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


class ServerSet:
    """Servers started by the suite; :meth:`stop_all` ends any still running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_grace_s: float = 30.0,
    ) -> Server:
        log_path = self.log_dir / f"{len(self.servers):02d}-{name}.log"
        server = Server(name, argv, log_path, env, stop_signal, stop_grace_s)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
