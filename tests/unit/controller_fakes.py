"""Fakes for unit tests of the controller: processes, a launcher, a clock, a replica
connection, and an ``asyncio`` whose ``sleep`` only yields; and the harness that drives a
real Controller with them. Nothing here starts a process or opens a socket."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from schooner.config import DeploymentConfig
from schooner.controller.controller import Controller
from schooner.controller.state import DeploymentState, ReplicaRecord
from schooner.rpc.connection import RemoteCallError, RemoteError
from schooner.rpc.messages import AppSpec, CodeRef, DeploymentID, DeploymentSpec, ReplicaSet
from schooner.runtime.launcher import ProcessSpec
from schooner.runtime.resources import ResourcePool
from schooner.runtime.session import Session
from schooner.schema import ReplicaState


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


TIMEOUT_S = 5.0


# -- harness -----------------------------------------------------------------------------------


def dep_spec(name: str, version: str = "v1", **options: Any) -> DeploymentSpec:
    return DeploymentSpec(
        name=name,
        code=CodeRef(import_path=f"models:{name}"),
        init_blob=b"",
        config=DeploymentConfig.from_options(name=name, **options),
        is_function=False,
        code_version=version,
    )


def app_spec(name: str = "app", route_prefix: str | None = "/", *deps: DeploymentSpec) -> AppSpec:
    deployments = list(deps) or [dep_spec("Model")]
    return AppSpec(
        name=name,
        route_prefix=route_prefix,
        ingress=deployments[0].name,
        deployments=deployments,
    )


class Harness:
    def __init__(self, tmp_path: Path, capacity: dict[str, float] | None = None) -> None:
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.pool = ResourcePool(capacity or {"CPU": 8, "GPU": 0})
        session = Session(root=tmp_path, sockets=tmp_path / "sockets")
        self.ctl = Controller(
            session,
            self.launcher,
            self.pool,
            lifeline_fd=99,
            clock=self.clock,
            wall_clock=lambda: 1.7e9 + (self.clock.now - 1000.0),
        )
        self.conns: dict[str, FakeReplicaConn] = {}

    def dep(self, name: str = "Model", app: str = "app") -> DeploymentState:
        return self.ctl.apps[app].deployments[name]

    def replicas(
        self, name: str = "Model", app: str = "app", state: ReplicaState | None = None
    ) -> list[ReplicaRecord]:
        return [
            r for r in self.dep(name, app).replicas.values() if state is None or r.state == state
        ]

    def ids(
        self, name: str = "Model", app: str = "app", state: ReplicaState | None = None
    ) -> set[str]:
        return {r.replica_id for r in self.replicas(name, app, state)}

    async def settle(self) -> None:
        """Wait for the controller's background steps (initialize, drain) to finish."""
        while self.ctl._tasks:
            await asyncio.gather(*list(self.ctl._tasks))

    async def ready(self, *replica_ids: str, init_error: RemoteError | None = None) -> None:
        """Replicas connect and the controller initializes them (as their processes would)."""
        for rid in replica_ids:
            conn = FakeReplicaConn(init_error)
            self.conns[rid] = conn
            self.ctl.replica_registered(rid, conn)  # type: ignore[arg-type]
        await self.settle()

    async def all_ready(self, name: str = "Model", app: str = "app") -> None:
        await self.ready(*self.ids(name, app, ReplicaState.STARTING))

    def published(self, key: str) -> Any:
        return self.ctl.long_poll.get(key)[1]

    def replica_set(self, name: str = "Model", app: str = "app") -> ReplicaSet:
        value = self.published(DeploymentID(name, app).key)
        assert isinstance(value, ReplicaSet)
        return value


def run(tmp_path: Path, test: Callable[[Harness], Coroutine[Any, Any, None]], **kw: Any) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(Harness(tmp_path, **kw)), TIMEOUT_S)

    asyncio.run(main())
