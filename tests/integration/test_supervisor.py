"""The supervisor: its helpers in-process, and the real process with a stand-in head.

The supervisor starts ``python -m <head module>`` (the hidden ``--head-module`` option);
here that is ``fakehead``, a script in ``tmp_path`` that follows a plan, one step per
start (crash, exit cleanly, fail, hang, serve, ...), and records each start (its
arguments, the ports it was handed) and what happened to it. The supervisor itself runs
through a small wrapper that can shorten its waits (backoff, start timeout). Every
process a test starts is killed at the end of the test.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from schooner.exceptions import RayServeException
from schooner.runtime.supervisor import Supervisor, _head_settings, _parse, read_line, report

FAKE_HEAD = textwrap.dedent(
    """
    import argparse, json, os, pathlib, signal, socket, subprocess, sys, time

    parser = argparse.ArgumentParser()
    for flag in ("--ready-fd", "--lifeline-fd", "--supervisor-pid", "--restarts",
                 "--http-fd", "--admin-fd", "--probe-fd"):
        parser.add_argument(flag, type=int, default=-1)
    parser.add_argument("--recovering", action="store_true")
    args, _ = parser.parse_known_args()
    state = pathlib.Path(os.environ["FAKE_HEAD_DIR"])

    def record(name, **fields):
        line = json.dumps({"pid": os.getpid(), "at": time.monotonic(), **fields}) + "\\n"
        fd = os.open(state / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, line.encode())
        os.close(fd)

    def port(fd):
        if fd < 0:
            return None
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.getsockname()[1]

    runs = state / "runs"
    number = len(runs.read_text().splitlines()) if runs.exists() else 0
    plan = (state / "plan").read_text().split()
    step = plan[min(number, len(plan) - 1)]
    record(
        "runs",
        step=step,
        ppid=os.getppid(),
        recovering=args.recovering,
        restarts=args.restarts,
        supervisor_pid=args.supervisor_pid,
        ports=[port(args.http_fd), port(args.admin_fd), port(args.probe_fd)],
    )

    def ready():
        os.write(args.ready_fd, b"READY 1234 -\\n")
        os.close(args.ready_fd)

    def serve():
        while os.read(args.lifeline_fd, 1):  # until the supervisor's lifeline closes
            pass
        record("events", event="lifeline-closed")
        sys.exit(0)

    if step == "serve":  # a graceful stop on SIGTERM, set up before it says READY
        def on_sigterm(*_):
            record("events", event="sigterm")
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
    if step == "fail":
        os.write(args.ready_fd, b"ERROR the fake head failed\\n")
        sys.exit(1)
    if step == "die":
        sys.exit(2)
    if step == "hang":
        serve()
    if step == "orphan":
        child = subprocess.Popen(
            [sys.executable, "-c", os.environ["FAKE_CHILD"], str(args.lifeline_fd),
             str(state / "release")],
            pass_fds=(args.lifeline_fd,),
        )
        record("events", event="child", child=child.pid)
    ready()
    if step == "late-crash":
        time.sleep(float(os.environ.get("FAKE_LATE_S", "0.5")))
    if step in ("crash", "orphan", "late-crash"):
        record("events", event="exit")
        os._exit(3)
    if step == "exit0":
        sys.exit(0)
    if step == "accept":
        with socket.socket(fileno=args.http_fd) as sock:
            sock.settimeout(10)
            conn, _ = sock.accept()
            record("events", event="accepted", data=conn.recv(100).decode())
        sys.exit(0)
    serve()  # "serve" and "serve-plain" (which dies of SIGTERM)
    """
)

#: A replica-like grandchild: exits when told (a file appears) or when the lifeline closes.
FAKE_CHILD = textwrap.dedent(
    """
    import os, pathlib, sys, threading, time

    lifeline, release = int(sys.argv[1]), pathlib.Path(sys.argv[2])

    def watch():
        while os.read(lifeline, 1):
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    while not release.exists():
        time.sleep(0.01)
    """
)

#: Runs the real supervisor, with some of its module constants replaced first (and, with
#: HOLD_RESTART, a crashed head restarted only once that file exists).
WRAPPER = textwrap.dedent(
    """
    import json, os, signal, time
    from schooner.runtime import supervisor

    for name, value in json.loads(os.environ.get("SUPERVISOR_PATCH", "{}")).items():
        setattr(supervisor, name, value)
    if os.environ.get("SIGTERM_AFTER_BIND"):
        bind = supervisor.Supervisor.bind

        def bind_then_sigterm(self):
            socket_args = bind(self)
            os.kill(os.getpid(), signal.SIGTERM)  # as if stopped while it starts up
            return socket_args

        supervisor.Supervisor.bind = bind_then_sigterm
    if os.environ.get("HOLD_RESTART"):
        spawn_head = supervisor.Supervisor.spawn_head

        def spawn_head_when_released(self, socket_args, recovering):
            while recovering and not os.path.exists(os.environ["HOLD_RESTART"]):
                time.sleep(0.01)  # the test creates the file to let the restart go on
            return spawn_head(self, socket_args, recovering)

        supervisor.Supervisor.spawn_head = spawn_head_when_released
    supervisor.main()
    """
)


# -- polling -----------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 5.0) -> Any:
    """Poll ``predicate`` until it returns something truthy (fail after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except FileNotFoundError:
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


def read_to_eof(fd: int, timeout_s: float = 5.0) -> bytes:
    """Everything written to pipe ``fd`` until every writer closed it."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the pipe was not closed; read so far: {data!r}"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                return data
            data += chunk


# -- the supervisor as a process ----------------------------------------------------------------


@dataclass
class Instance:
    """A supervisor started by the test (its starter), and what its heads recorded."""

    proc: subprocess.Popen[bytes]
    ready_fd: int
    dir: Path
    lifeline_w: int | None = None

    def records(self, name: str) -> list[dict[str, Any]]:
        path = self.dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def runs(self) -> list[dict[str, Any]]:
        return self.records("runs")

    def events(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.records("events") if e["event"] == event]

    def wait(self, timeout_s: float = 5.0) -> int:
        return self.proc.wait(timeout_s)

    def log(self) -> str:
        return (self.dir / "session" / "logs" / "supervisor.log").read_text()

    def backoffs(self) -> list[float]:
        return [float(s) for s in re.findall(r"restarting it in ([0-9.]+) s", self.log())]


Start = Callable[..., Instance]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[Instance] = []
    (tmp_path / "fakehead.py").write_text(FAKE_HEAD)
    (tmp_path / "supervise.py").write_text(WRAPPER)
    (tmp_path / "session" / "logs").mkdir(parents=True)

    def start(
        plan: str,
        *head_args: str,
        lifeline: bool = False,
        patch: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
    ) -> Instance:
        (tmp_path / "plan").write_text(plan)
        ready_r, ready_w = os.pipe()
        pass_fds = [ready_w]
        args = ["--ready-fd", str(ready_w), "--head-module", "fakehead"]
        lifeline_w = None
        if lifeline:
            lifeline_r, lifeline_w = os.pipe()
            pass_fds.append(lifeline_r)
            args += ["--lifeline-fd", str(lifeline_r)]
        head = ["--session", str(tmp_path / "session"), "--proxy-location", "Disabled"]
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "supervise.py"), *args, "--", *head, *head_args],
            pass_fds=pass_fds,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONPATH": str(tmp_path),
                "FAKE_HEAD_DIR": str(tmp_path),
                "FAKE_CHILD": FAKE_CHILD,
                "SUPERVISOR_PATCH": json.dumps(patch or {}),
                **(env or {}),
            },
        )
        for fd in pass_fds:
            os.close(fd)
        instance = Instance(proc, ready_r, tmp_path, lifeline_w)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        if instance.proc.poll() is None:
            instance.proc.kill()
            instance.proc.wait()
        os.close(instance.ready_fd)
        if instance.lifeline_w is not None:
            os.close(instance.lifeline_w)
        pids = [r["pid"] for r in instance.runs()]
        pids += [e["child"] for e in instance.events("child")]
        for pid in pids:  # only if it is still one of ours (pids are reused)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if str(tmp_path).encode() in cmdline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- restarts ----------------------------------------------------------------------------------


def test_a_crashing_head_is_restarted_until_it_exits_cleanly(start: Start) -> None:
    sup = start("crash crash exit0")
    # The first READY line, once, and then the pipe is closed.
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    assert sup.wait() == 0
    runs = sup.runs()
    assert [(r["recovering"], r["restarts"]) for r in runs] == [(False, -1), (True, 1), (True, 2)]
    assert all(r["ppid"] == r["supervisor_pid"] == sup.proc.pid for r in runs)
    assert len(sup.backoffs()) == 2


def test_restarts_back_off_doubling_up_to_the_maximum(start: Start) -> None:
    sup = start(
        "crash crash crash crash exit0",
        patch={"FIRST_BACKOFF_S": 0.05, "MAX_BACKOFF_S": 0.15},
    )
    assert sup.wait() == 0
    assert sup.backoffs() == [0.05, 0.10, 0.15, 0.15]
    exits = [e["at"] for e in sup.records("events")]
    starts = [r["at"] for r in sup.runs()]
    for backoff, crashed, restarted in zip(sup.backoffs(), exits, starts[1:], strict=True):
        assert restarted - crashed >= backoff


def test_a_head_that_ran_long_enough_resets_the_backoff(start: Start) -> None:
    sup = start(
        "crash crash late-crash crash exit0",
        patch={"FIRST_BACKOFF_S": 0.05, "MAX_BACKOFF_S": 5.0, "STABLE_AFTER_S": 1.0},
        env={"FAKE_LATE_S": "1.5"},
    )
    assert sup.wait() == 0
    assert sup.backoffs() == [0.05, 0.10, 0.05, 0.10]


def test_a_restarted_head_gets_the_same_listening_sockets(start: Start, tmp_path: Path) -> None:
    release = tmp_path / "release-restart"
    sup = start(
        "crash accept",
        "--proxy-location",
        "EveryNode",
        "--http-port",
        "0",
        "--admin-port",
        "0",
        "--probe-port",
        "0",
        env={"HOLD_RESTART": str(release)},
    )
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    (first,) = wait_for(sup.runs, "the first head")
    wait_for(lambda: not alive(first["pid"]), "the first head to crash")
    http, admin, probe = first["ports"]
    assert len({http, admin, probe}) == 3 and 0 not in (http, admin, probe)
    # No head runs (the restart is held until the test lets it go), yet the port takes
    # the connection...
    with socket.create_connection(("127.0.0.1", http), timeout=5) as client:
        client.sendall(b"hello")
        assert len(sup.runs()) == 1
        release.write_text("")
        # ...and the next head, handed the same listening sockets, accepts it.
        assert sup.wait() == 0
    first, second = sup.runs()
    assert second["ports"] == first["ports"]
    assert [e["data"] for e in sup.events("accepted")] == ["hello"]


def test_an_orphaned_grandchild_of_a_crashed_head_is_reaped_by_the_supervisor(
    start: Start,
) -> None:
    sup = start("orphan serve")
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    (child,) = [e["child"] for e in wait_for(lambda: sup.events("child"), "the grandchild")]
    wait_for(lambda: len(sup.runs()) == 2, "the restarted head")
    # Its parent crashed: the supervisor (the subreaper), not init, adopts it...
    wait_for(lambda: parent_of(child) == sup.proc.pid, "the supervisor to adopt the orphan")
    (sup.dir / "release").write_text("")
    # ...and reaps it when it exits (no zombie stays behind).
    wait_for(lambda: not os.path.exists(f"/proc/{child}"), "the orphan to be reaped")
    assert sup.proc.poll() is None


# -- start-up failures ----------------------------------------------------------------------------


def test_a_head_that_reports_an_error_is_not_restarted(start: Start) -> None:
    sup = start("fail serve")
    assert read_to_eof(sup.ready_fd) == b"ERROR the fake head failed\n"
    assert sup.wait() == 1
    assert len(sup.runs()) == 1


def test_a_head_that_exits_before_it_is_ready_is_reported_and_not_restarted(
    start: Start,
) -> None:
    sup = start("die serve")
    line = read_to_eof(sup.ready_fd).decode()
    log = sup.dir / "session" / "logs" / "controller.log"
    assert line == f"ERROR the head process exited (code 2) before it was ready; see {log}\n"
    assert sup.wait() == 1
    assert len(sup.runs()) == 1


def test_a_head_that_never_becomes_ready_is_killed_and_reported(start: Start) -> None:
    sup = start("hang serve", patch={"HEAD_START_TIMEOUT_S": 0.5})
    assert read_to_eof(sup.ready_fd) == b"ERROR the head process did not become ready in time\n"
    assert sup.wait() == 1
    (run,) = sup.runs()
    assert not alive(run["pid"])


@pytest.mark.parametrize(
    ("flag", "what", "names"),
    [
        ("--http-port", "HTTP", "--http-port (schooner start), --port (schooner run)"),
        ("--admin-port", "the admin API", "--admin-port"),
        ("--probe-port", "health probes", "--probe-port"),
    ],
)
def test_a_port_in_use_is_reported_naming_the_option_to_change(
    start: Start, flag: str, what: str, names: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--http-port": "0", "--admin-port": "0", "--probe-port": "0", flag: str(port)}
        sup = start("serve", "--proxy-location", "EveryNode", *sum(ports.items(), ()))
        line = read_to_eof(sup.ready_fd).decode()
        assert line.startswith(f"ERROR Cannot serve {what} on 127.0.0.1:{port}: ")
        assert f"Pick another with {names}" in line
        assert line.count("\n") == 1
        assert sup.wait() == 1
    assert sup.runs() == []  # no head was started


# -- stopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("plan", "code"), [("serve", 0), ("serve-plain", 1)])
def test_sigterm_is_forwarded_to_the_head_and_nothing_is_restarted(
    start: Start, plan: str, code: int
) -> None:
    sup = start(f"{plan} serve")
    # EOF while the head runs: the head does not hold the starter's pipe open.
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    (run,) = sup.runs()
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == code
    assert len(sup.events("sigterm")) == (1 if plan == "serve" else 0)
    assert not alive(run["pid"])
    assert len(sup.runs()) == 1


def test_sigterm_while_a_restart_waits_starts_no_new_head(start: Start) -> None:
    sup = start("crash serve", patch={"FIRST_BACKOFF_S": 2.0})
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    (first,) = wait_for(sup.runs, "the first head")
    wait_for(lambda: not alive(first["pid"]), "the first head to crash")
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.wait() == 1
    assert len(sup.runs()) == 1


def test_sigterm_before_the_head_is_started_stops_the_instance(start: Start) -> None:
    sup = start("serve", env={"SIGTERM_AFTER_BIND": "1"})
    try:
        code: int | None = sup.wait(3.0)
    except subprocess.TimeoutExpired:
        code = None
    assert code is not None, "the supervisor ignored the SIGTERM and keeps the head running"


def test_when_the_starter_dies_the_supervisor_and_its_head_exit(start: Start) -> None:
    sup = start("serve", lifeline=True)
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    (run,) = sup.runs()
    assert sup.lifeline_w is not None
    os.close(sup.lifeline_w)  # as if the starter died
    sup.lifeline_w = None
    sup.wait()
    wait_for(lambda: sup.events("lifeline-closed"), "the head to see its lifeline close")
    wait_for(lambda: not alive(run["pid"]), "the head to exit")
    assert len(sup.runs()) == 1


def test_a_killed_supervisor_takes_its_head_along(start: Start) -> None:
    sup = start("serve")
    assert read_to_eof(sup.ready_fd) == b"READY 1234 -\n"
    (run,) = sup.runs()
    sup.proc.kill()
    sup.wait()
    wait_for(lambda: not alive(run["pid"]), "the head to exit")
    assert len(sup.events("lifeline-closed")) == 1


# -- helpers, in-process ---------------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_read_line_reads_one_line_also_in_pieces(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"READY 80")
    os.write(w, b"00 http://127.0.0.1:8265\n")
    assert read_line(r, 1.0) == "READY 8000 http://127.0.0.1:8265"


def test_read_line_at_end_of_file_is_empty(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"partial")
    os.close(w)
    assert read_line(r, 1.0) == "partial"
    assert read_line(r, 1.0) == ""


def test_read_line_times_out_with_an_error_line(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    started = time.monotonic()
    assert read_line(r, 0.1) == "ERROR the head process did not become ready in time"
    assert time.monotonic() - started < 2.0


def test_report_writes_one_line_and_closes_the_pipe(pipe: tuple[int, int]) -> None:
    r, w = pipe
    report(w, "ERROR first\nsecond")
    assert read_to_eof(r) == b"ERROR first\\nsecond\n"
    report(-1, "READY 1 -")  # no ready pipe: nothing to do


def test_report_to_a_starter_that_is_gone_does_not_raise(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(r)
    report(w, "READY 1 -")


def test_arguments_before_the_double_dash_are_the_supervisor_s() -> None:
    args, head = _parse(["--ready-fd", "5", "--lifeline-fd", "6", "--", "--session", "/s"])
    assert (args.ready_fd, args.lifeline_fd, args.head_module) == (5, 6, "schooner.controller.head")
    assert head == ["--session", "/s"]
    with pytest.raises(SystemExit, match="usage"):
        _parse(["--ready-fd", "5"])


def test_head_settings_are_read_from_the_head_arguments() -> None:
    settings = _head_settings(
        ["--session", "/s", "--http-port", "9000", "--checkpoint-path", "/c", "--detached"]
    )
    assert (settings.session, settings.http_host, settings.http_port) == ("/s", "127.0.0.1", 9000)
    assert (settings.admin_port, settings.probe_port, settings.proxy_location) == (
        -1,
        -1,
        "EveryNode",
    )


def test_bind_hands_the_head_only_the_sockets_it_asked_for() -> None:
    quiet = Supervisor(-1, ["--session", "/s", "--proxy-location", "Disabled"])
    assert quiet.bind() == []
    sup = Supervisor(
        -1, ["--session", "/s", "--http-port", "0", "--admin-port", "0", "--probe-port", "0"]
    )
    try:
        args = sup.bind()
        assert args[::2] == ["--http-fd", "--admin-fd", "--probe-fd"]
        for fd, sock in zip(args[1::2], sup.sockets, strict=True):
            assert int(fd) == sock.fileno()
            assert sock.get_inheritable()
            assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        for sock in sup.sockets:
            sock.close()
        sup.lifeline.close()
        quiet.lifeline.close()


def test_bind_of_a_port_in_use_raises_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = Supervisor(-1, ["--session", "/s", "--http-port", "0", "--admin-port", str(port)])
        try:
            with pytest.raises(RayServeException, match="--admin-port") as info:
                sup.bind()
            assert f"Cannot serve the admin API on 127.0.0.1:{port}" in str(info.value)
        finally:
            for sock in sup.sockets:  # the HTTP socket bound before the admin one failed
                sock.close()
            sup.lifeline.close()


def test_the_supervisor_module_imports_no_heavy_dependencies() -> None:
    """It starts every instance: only the standard library and small Schooner modules."""
    code = (
        "import sys; import schooner.runtime.supervisor; "
        "print(' '.join(m for m in ('pydantic', 'schooner.controller.controller', "
        "'schooner.rpc.connection', 'asyncio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ""
