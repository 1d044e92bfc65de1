"""Starting, watching and stopping worker processes on this machine.

Processes are started with ``subprocess`` (fork immediately followed by exec,
or posix_spawn), never a bare fork of our threaded process, so it is safe
with threads and CUDA. Every child inherits the head's lifeline (see
:mod:`schooner.runtime.lifeline`) and exits when the head dies.

The launcher is an interface so the controller can be unit-tested with a fake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class ProcessSpec:
    """What to start: ``python -m <module> <args>`` with extra environment."""

    module: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    pass_fds: tuple[int, ...] = ()


class ProcessHandle(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None:
        """The exit code once the process has exited, else None."""

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


class Launcher(Protocol):
    def launch(self, spec: ProcessSpec) -> ProcessHandle: ...


class _Popen:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def terminate(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()


class SubprocessLauncher:
    """Starts children of this process with the current Python interpreter.

    Children inherit stdout and stderr, so ``print`` output of user code
    reaches the terminal of ``schooner run``.
    """

    def __init__(self, base_env: dict[str, str] | None = None) -> None:
        self._base_env = dict(os.environ if base_env is None else base_env)

    def launch(self, spec: ProcessSpec) -> ProcessHandle:
        env = {**self._base_env, **spec.env}
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module, *spec.args],
            env=env,
            stdin=subprocess.DEVNULL,
            pass_fds=spec.pass_fds,
            close_fds=True,
        )
        return _Popen(proc)


class AdoptedProcess:
    """A process this one did not start, known by pid (a replica or proxy of a crashed head).

    Its exit code cannot be known (the supervisor reaps it): :meth:`poll` gives -1 once
    it is gone.
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._gone = False

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        if not self._gone and not pid_alive(self._pid):
            self._gone = True
        return -1 if self._gone else None

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self._pid, sig)
            except ProcessLookupError:
                self._gone = True


def session_processes(session_root: str, module: str) -> list[int]:
    """Pids of live ``python -m <module> --session <session_root> ...`` processes (Linux)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit() and _runs(int(entry), module, session_root):
            found.append(int(entry))
    return found


def is_session_process(pid: int, module: str, session_root: str) -> bool:
    """Whether ``pid`` is a live ``python -m <module>`` of this session (not a reused pid).

    Where ``/proc`` is missing, only whether the pid is alive."""
    if not os.path.isdir("/proc/self"):
        return pid_alive(pid)
    return pid_alive(pid) and _runs(pid, module, session_root)


def _runs(pid: int, module: str, session_root: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    try:
        at = argv.index("-m")
        session = argv[argv.index("--session") + 1]
    except (ValueError, IndexError):
        return False
    return at + 1 < len(argv) and argv[at + 1] == module and session == session_root
