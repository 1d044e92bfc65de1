"""Fakes for unit tests of the controller: processes, a launcher, a clock, a replica
connection, and an ``asyncio`` whose ``sleep`` only yields. Nothing here starts a
process or opens a socket."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from schooner.rpc.connection import RemoteCallError, RemoteError
from schooner.runtime.launcher import ProcessSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """A replica process that exits when the test says (or on terminate, if it cooperates)."""

    _pids = itertools.count(4000)

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.pid = next(self._pids)
        self.exit_code: int | None = None
        self.exit_on_terminate = True
        self.terminated = False
        self.killed = False

    def arg(self, flag: str) -> str:
        return self.spec.args[self.spec.args.index(flag) + 1]

    @property
    def replica_id(self) -> str:
        return self.arg("--replica-id")

    def poll(self) -> int | None:
        return self.exit_code

    def terminate(self) -> None:
        self.terminated = True
        if self.exit_on_terminate and self.exit_code is None:
            self.exit_code = -15

    def kill(self) -> None:
        self.killed = True
        if self.exit_code is None:
            self.exit_code = -9

    def exit(self, code: int) -> None:
        self.exit_code = code


class FakeLauncher:
    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.fail_with: BaseException | None = None
        self.exit_on_terminate = True

    def launch(self, spec: ProcessSpec) -> FakeProcess:
        if self.fail_with is not None:
            raise self.fail_with
        process = FakeProcess(spec)
        process.exit_on_terminate = self.exit_on_terminate
        self.processes.append(process)
        return process

    def of(self, module: str) -> list[FakeProcess]:
        """The processes started as ``python -m <module>``."""
        return [p for p in self.processes if p.spec.module == module]

    def by_id(self, replica_id: str) -> FakeProcess:
        (process,) = [p for p in self.processes if p.replica_id == replica_id]
        return process


class FakeReplicaConn:
    """The controller's connection to one replica; ``initialize`` succeeds unless told not to."""

    def __init__(self, init_error: RemoteError | None = None) -> None:
        self.init_error = init_error
        #: What ``check_health`` does: None passes, an error fails, "hang" never answers.
        self.health: RemoteError | str | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.notified: list[str] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        if method == "initialize" and self.init_error is not None:
            raise RemoteCallError(self.init_error)
        if method == "check_health":
            if self.health == "hang":
                await asyncio.get_running_loop().create_future()
            if isinstance(self.health, RemoteError):
                raise RemoteCallError(self.health)
        return None

    def health_checks(self) -> int:
        return sum(1 for method, _ in self.calls if method == "check_health")

    def notify(self, method: str, *args: Any) -> None:
        self.notified.append(method)


class InstantSleepAsyncio:
    """The controller module's ``asyncio``, except that ``sleep`` does not wait."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        await asyncio.sleep(0)
        return result
