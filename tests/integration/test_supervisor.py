"""The supervisor with real processes and a stand-in head.

The supervisor runs ``python -m <head module>``; here that module is a small script
that follows a plan (one step per start: crash, fail, serve, exit cleanly) and
records each start, so restarts, the ready pipe, signals and the lifeline can be
checked without a real instance.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port, wait_for

FAKE_HEAD = textwrap.dedent(
    """
    import argparse, os, pathlib, signal, sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--lifeline-fd", type=int)
    parser.add_argument("--recovering", action="store_true")
    args, _ = parser.parse_known_args()
    state = pathlib.Path(os.environ["FAKE_HEAD_DIR"])
    runs = state / "runs"
    done = runs.read_text().splitlines() if runs.exists() else []
    with runs.open("a") as f:
        f.write(f"{os.getpid()} {'recovering' if args.recovering else 'first'}\\n")
    plan = (state / "plan").read_text().split()
    step = plan[min(len(done), len(plan) - 1)]
    if step == "fail":
        os.write(args.ready_fd, b"ERROR the fake head failed\\n")
        sys.exit(1)
    os.write(args.ready_fd, b"READY 1234 -\\n")
    os.close(args.ready_fd)
    if step == "crash":
        os._exit(3)
    if step == "exit0":
        sys.exit(0)

    def on_term(*_):
        (state / "got-sigterm").write_text("yes")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    while os.read(args.lifeline_fd, 1):  # "serve": until the supervisor's lifeline closes
        pass
    (state / "lifeline-closed").write_text("yes")
    """
)


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    ready_fd: int
    state: Path
    lifeline_w: int | None

    def ready_line(self, timeout_s: float = 20) -> str:
        readable, _, _ = select.select([self.ready_fd], [], [], timeout_s)
        assert readable, "no line on the ready pipe"
        return os.read(self.ready_fd, 4096).decode().strip()

    def runs(self) -> list[str]:
        path = self.state / "runs"
        return [line.split()[1] for line in path.read_text().splitlines()] if path.exists() else []

    def head_pids(self) -> list[int]:
        path = self.state / "runs"
        return [int(line.split()[0]) for line in path.read_text().splitlines()]


Supervise = Callable[..., Started]


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Supervise]:
    started: list[Started] = []

    def start(plan: str, *head_args: str, with_lifeline: bool = False) -> Started:
        (tmp_path / "fakehead.py").write_text(FAKE_HEAD)
        (tmp_path / "plan").write_text(plan)
        (tmp_path / "session" / "logs").mkdir(parents=True, exist_ok=True)
        ready_r, ready_w = os.pipe()
        fds = [ready_w]
        args = ["--ready-fd", str(ready_w), "--head-module", "fakehead"]
        lifeline_w = None
        if with_lifeline:
            lifeline_r, lifeline_w = os.pipe()
            fds.append(lifeline_r)
            args += ["--lifeline-fd", str(lifeline_r)]
        head = ["--session", str(tmp_path / "session"), "--proxy-location", "Disabled"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "schooner.runtime.supervisor", *args, "--", *head, *head_args],
            pass_fds=fds,
            env={**os.environ, "PYTHONPATH": str(tmp_path), "FAKE_HEAD_DIR": str(tmp_path)},
            start_new_session=True,
        )
        for fd in fds:
            os.close(fd)
        run = Started(proc, ready_r, tmp_path, lifeline_w)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for pid in run.head_pids() if (run.state / "runs").exists() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(run.ready_fd)
        if run.lifeline_w is not None:
            os.close(run.lifeline_w)


def test_a_crashing_head_is_restarted_until_it_exits_cleanly(supervise: Supervise) -> None:
    run = supervise("crash crash exit0")
    assert run.ready_line() == "READY 1234 -"
    assert run.proc.wait(30) == 0
    assert run.runs() == ["first", "recovering", "recovering"]
    # Only the first head's READY reaches the starter.
    assert os.read(run.ready_fd, 4096) == b""
    log = (run.state / "session" / "logs" / "supervisor.log").read_text()
    assert log.count("restarting it") == 2


def test_a_head_that_fails_to_start_is_reported_and_not_restarted(supervise: Supervise) -> None:
    run = supervise("fail")
    assert run.ready_line() == "ERROR the fake head failed"
    assert run.proc.wait(30) == 1
    assert run.runs() == ["first"]


def test_a_busy_port_is_reported_with_the_flag_to_change(supervise: Supervise) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        run = supervise("serve", "--proxy-location", "EveryNode", "--http-port", str(port))
        line = run.ready_line()
        assert line.startswith(f"ERROR Cannot serve HTTP on 127.0.0.1:{port}")
        assert "--http-port" in line
        assert run.proc.wait(30) == 1
        assert run.runs() == []


def test_sigterm_stops_the_head_gracefully_without_a_restart(supervise: Supervise) -> None:
    run = supervise("serve")
    assert run.ready_line().startswith("READY")
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0
    assert (run.state / "got-sigterm").exists()
    assert run.runs() == ["first"]


def test_when_its_starter_dies_the_supervisor_and_head_exit(supervise: Supervise) -> None:
    run = supervise("serve", with_lifeline=True)
    assert run.ready_line().startswith("READY")
    assert run.lifeline_w is not None
    os.close(run.lifeline_w)  # as if the starter died
    run.lifeline_w = None
    run.proc.wait(30)
    wait_for(
        lambda: (run.state / "lifeline-closed").exists(), message="the head to see the lifeline"
    )
    (head,) = run.head_pids()
    wait_for(lambda: not _alive(head), message="the head to exit")
    assert run.runs() == ["first"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][:1] != "Z"


def test_a_head_killed_by_a_signal_is_restarted(supervise: Supervise) -> None:
    run = supervise("serve serve")
    assert run.ready_line().startswith("READY")
    (first,) = run.head_pids()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(run.runs()) == 2, message="a second head")
    assert run.runs() == ["first", "recovering"]
    assert run.proc.poll() is None  # the second head serves until the test's cleanup
