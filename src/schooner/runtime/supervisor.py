"""The supervisor: the process that owns an instance and restarts its head if it crashes.

``python -m schooner.runtime.supervisor [--ready-fd N] [--lifeline-fd N] -- HEAD-ARGS``

Every instance (started by ``serve.run``, ``schooner run`` or ``schooner start``)
is this small process plus what it starts. It

- binds the instance's listening sockets (HTTP, admin API, probes) once, so
  they stay open while a head is replaced;
- owns the lifeline every other process of the instance is tied to: when the
  supervisor dies, even by SIGKILL, everything exits. A head that crashes
  takes nothing with it: proxies and replicas keep serving and reconnect to
  the next head, which recovers the goal state from the checkpoint store and
  re-adopts them;
- is the child subreaper of the instance (Linux), so replicas whose head
  died become its children and are reaped by it;
- restarts the head when it exits with a non-zero status or a signal (backing
  off up to :data:`MAX_BACKOFF_S` while it keeps crashing), and exits when the
  head exits cleanly (shutdown) or its own starter is gone (``--lifeline-fd``).

It imports only the standard library and a few small Schooner modules, so it
adds little to an instance's start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from schooner.exceptions import RayServeException
from schooner.runtime.lifeline import Lifeline, watch_parent
from schooner.runtime.sockets import bind_listening

logger = logging.getLogger("schooner.supervisor")

#: How long a head may take to say it is ready.
HEAD_START_TIMEOUT_S = 60.0
#: Wait before restarting a crashed head: doubles from the first value up to the second...
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0
#: ...and starts over once a head ran this long.
STABLE_AFTER_S = 30.0
_PR_SET_CHILD_SUBREAPER = 36


def read_line(fd: int, timeout_s: float) -> str:
    """One line from pipe ``fd`` (``""`` at end-of-file; an ``ERROR`` line on timeout)."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "ERROR the head process did not become ready in time"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def report(fd: int, line: str) -> None:
    """Write one line to the starter's ready pipe and close it."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (line.replace("\n", "\\n") + "\n").encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def become_subreaper() -> None:
    """Orphans of our children (replicas of a crashed head) become our children."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        logger.warning("could not become the child subreaper; orphans go to init")


def _head_settings(head_args: list[str]) -> argparse.Namespace:
    """The head options the supervisor needs (the sockets to bind, the session)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--session", required=True)
    parser.add_argument("--http-host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--proxy-location", default="EveryNode")
    parser.add_argument("--admin-host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=-1)
    parser.add_argument("--probe-port", type=int, default=-1)
    parser.add_argument("--ray-address", default=None)
    settings, _ = parser.parse_known_args(head_args)
    return settings


class Supervisor:
    def __init__(
        self, ready_fd: int, head_args: list[str], head_module: str = "schooner.controller.head"
    ) -> None:
        self.ready_fd = ready_fd
        self.head_args = head_args
        self.head_module = head_module
        self.settings = _head_settings(head_args)
        self.lifeline = Lifeline()
        self.sockets: list[socket.socket] = []
        self.head: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts = 0

    # -- sockets --------------------------------------------------------------
    def bind(self) -> list[str]:
        """Bind the instance's ports; the head options that hand them over."""
        s = self.settings
        args: list[str] = []
        if s.proxy_location != "Disabled" and s.ray_address is None:  # Ray: proxy actors bind
            args += ["--http-fd", self._bind(s.http_host, s.http_port, "HTTP", 2048)]
        if s.admin_port >= 0:
            args += ["--admin-fd", self._bind(s.admin_host, s.admin_port, "the admin API", 128)]
        if s.probe_port >= 0:
            args += ["--probe-fd", self._bind(s.admin_host, s.probe_port, "health probes", 128)]
        return args

    def _bind(self, host: str, port: int, what: str, backlog: int) -> str:
        flag = {
            "HTTP": "--http-port (schooner start), --port (schooner run) or http_options.port",
            "the admin API": "--admin-port",
            "health probes": "--probe-port",
        }[what]
        sock = bind_listening(host, port, what=what, flag=flag, backlog=backlog)
        self.sockets.append(sock)
        return str(sock.fileno())

    # -- the head -------------------------------------------------------------
    def spawn_head(self, socket_args: list[str], recovering: bool) -> int:
        """Start a head; returns the read end of its ready pipe."""
        ready_r, ready_w = os.pipe()
        args = [
            sys.executable,
            "-m",
            self.head_module,
            *self.head_args,
            *socket_args,
            "--ready-fd",
            str(ready_w),
            "--lifeline-fd",
            str(self.lifeline.read_fd),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        if recovering:
            args += ["--recovering", "--restarts", str(self.restarts)]
        fds = (ready_w, self.lifeline.read_fd, *(s.fileno() for s in self.sockets))
        try:
            self.head = subprocess.Popen(args, pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            os.close(ready_w)
        if self.stopping:
            self.stop()  # SIGTERM came while this head was being started: pass it on
        return ready_r

    def wait_first_head(self, ready_r: int) -> str:
        line = read_line(ready_r, HEAD_START_TIMEOUT_S)
        os.close(ready_r)
        return line

    def log_restarted_head(self, ready_r: int) -> None:
        def read() -> None:
            line = read_line(ready_r, HEAD_START_TIMEOUT_S)
            os.close(ready_r)
            logger.info("restarted head: %s", line or "exited before it was ready")

        threading.Thread(target=read, name="head-ready", daemon=True).start()

    def wait_head(self) -> int:
        """Block until the head exits (reaping orphaned replicas meanwhile); its exit code."""
        head = self.head
        assert head is not None
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return head.wait()
            if pid == head.pid:
                head.returncode = os.waitstatus_to_exitcode(status)
                return head.returncode

    def stop(self, *_: object) -> None:
        """SIGTERM/SIGINT: stop the head gracefully and do not restart it."""
        self.stopping = True
        if self.head is not None and self.head.returncode is None:
            try:
                self.head.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def starter_gone(self) -> None:
        """The process that started us died: everything goes (the lifeline tells them)."""
        self.stopping = True
        self.lifeline.close()

    # -- main loop ------------------------------------------------------------
    def run(self) -> int:
        become_subreaper()
        try:
            socket_args = self.bind()
        except RayServeException as exc:
            report(self.ready_fd, f"ERROR {exc}")
            return 1
        line = self.wait_first_head(self.spawn_head(socket_args, recovering=False))
        if not line.startswith("READY"):
            head = self.head
            assert head is not None
            if head.poll() is None:
                head.kill()
            code = head.wait()
            report(
                self.ready_fd,
                line
                if line.startswith("ERROR")
                else f"ERROR the head process exited (code {code}) before it was ready; "
                f"see {Path(self.settings.session) / 'logs' / 'controller.log'}",
            )
            return 1
        report(self.ready_fd, line)
        backoff = FIRST_BACKOFF_S
        while True:
            started = time.monotonic()
            code = self.wait_head()
            if self.stopping or code == 0:
                logger.info("head exited with code %s; the instance is stopped", code)
                return 0 if code == 0 else 1
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            logger.warning("head exited with code %s; restarting it in %.2f s", code, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            if self.stopping:
                return 1
            self.restarts += 1
            self.log_restarted_head(self.spawn_head(socket_args, recovering=True))


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m schooner.runtime.supervisor [options] -- HEAD-ARGS")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="schooner-supervisor")
    parser.add_argument("--ready-fd", type=int, default=-1)
    parser.add_argument("--lifeline-fd", type=int, default=-1)
    parser.add_argument("--head-module", default="schooner.controller.head", help=argparse.SUPPRESS)
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def main(argv: list[str] | None = None) -> None:
    args, head_args = _parse(sys.argv[1:] if argv is None else argv)
    supervisor = Supervisor(args.ready_fd, head_args, args.head_module)
    logs = Path(supervisor.settings.session) / "logs"
    logging.basicConfig(
        filename=str(logs / "supervisor.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s supervisor pid=%(process)d %(message)s",
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.stop)
    if args.lifeline_fd >= 0:
        watch_parent(args.lifeline_fd, supervisor.starter_gone)
    try:
        code = supervisor.run()
    finally:
        supervisor.lifeline.close()
        for sock in supervisor.sockets:
            sock.close()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
