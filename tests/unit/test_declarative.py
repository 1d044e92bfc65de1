"""Config documents applied to the controller, with builds driven by hand.

The controller gets a fake launcher (as in ``test_reconciler.py``): a build
"runs" when the test writes a pickled :class:`~schooner.builder.BuildResult`
to the ``--result`` file of the launched ``schooner.builder`` process and
marks that process exited. Replicas "register" over a fake connection.
Nothing here starts a process or opens a socket, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from controller_fakes import FakeLauncher, FakeProcess, FakeReplicaConn, InstantSleepAsyncio

import schooner as serve
from schooner.builder import BuildRequest, BuildResult
from schooner.controller import controller as controller_module
from schooner.controller import declarative as declarative_module
from schooner.controller.controller import Controller
from schooner.controller.declarative import DeclarativeConfig
from schooner.deployment import build_app
from schooner.exceptions import ServeConfigError
from schooner.rpc.messages import AppSpec
from schooner.runtime.resources import ResourcePool
from schooner.runtime.session import Session
from schooner.schema import ApplicationStatus, DeploymentStatus, ReplicaState

TIMEOUT_S = 5.0
LIFELINE_FD = 99

# -- deployments the "builder" builds --------------------------------------------------------


@serve.deployment(num_replicas=2, user_config={"v": 1})
class Model:
    pass


@serve.deployment
class Ingress:
    def __init__(self, model: Any) -> None:
        self.model = model


def declarative_spec(name: str = "app", route_prefix: str | None = "/") -> AppSpec:
    return build_app(Ingress.bind(Model.bind()), name, route_prefix, source="declarative")


def imperative_spec(name: str, route_prefix: str | None) -> AppSpec:
    return build_app(Model.bind(), name, route_prefix)


def document(*apps: dict[str, Any]) -> dict[str, Any]:
    return {"applications": list(apps)}


def entry(name: str = "app", route_prefix: str | None = "/", **more: Any) -> dict[str, Any]:
    return {"name": name, "route_prefix": route_prefix, "import_path": "models:app", **more}


@pytest.fixture(autouse=True)
def instant_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "asyncio", InstantSleepAsyncio())
    monkeypatch.setattr(declarative_module, "asyncio", InstantSleepAsyncio())


# -- harness ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.launcher = FakeLauncher()
        self.wall_s = 1.7e9
        session = Session(root=tmp_path, sockets=tmp_path / "sockets")
        self.ctl = Controller(
            session,
            self.launcher,
            ResourcePool({"CPU": 16, "GPU": 0}),
            lifeline_fd=LIFELINE_FD,
            clock=lambda: 1000.0,
            wall_clock=self.wall,
        )
        self.base_dir = tmp_path / "base"
        self.cache_dir = tmp_path / "cache"
        self.dc = DeclarativeConfig(self.ctl, self.base_dir, self.cache_dir)

    def wall(self) -> float:
        self.wall_s += 1.0
        return self.wall_s

    def builders(self) -> list[FakeProcess]:
        return self.launcher.of("schooner.builder")

    async def builder(self, count: int = 1) -> FakeProcess:
        """The ``count``-th builder process, once the build task has launched it."""
        for _ in range(100):
            if len(self.builders()) >= count:
                return self.builders()[count - 1]
            await asyncio.sleep(0)
        raise AssertionError(f"builder process #{count} was never launched")

    async def settle(self) -> None:
        """Let every background task (builds, replica initialization) run to its end."""
        while others := asyncio.all_tasks() - {asyncio.current_task()}:
            await asyncio.gather(*others)

    def builder_of(self, app: str) -> FakeProcess:
        """The running builder process of application ``app``."""
        (process,) = [
            p for p in self.builders() if p.exit_code is None and request_of(p).app["name"] == app
        ]
        return process

    async def finish(self, process: FakeProcess, result: BuildResult) -> None:
        """The builder writes ``result`` and exits; the controller takes it (and, as it
        does so, deletes the result file: from there on it acts without waiting)."""
        result_file = Path(process.arg("--result"))
        result_file.write_bytes(pickle.dumps(result, protocol=5))
        process.exit(0)
        for _ in range(100):
            if not result_file.exists():
                return
            await asyncio.sleep(0)
        raise AssertionError("the build result was never read")

    async def deploy(self, doc: dict[str, Any], spec: AppSpec) -> None:
        """Apply ``doc`` (one app) and build it into ``spec``."""
        count = len(self.builders()) + 1
        self.dc.apply(doc)
        await self.finish(await self.builder(count), BuildResult(spec=spec))

    async def run_replicas(self) -> None:
        """Start every wanted replica and let each register, then reconcile."""
        self.ctl.tick()
        for process in self.launcher.of("schooner.replica.main"):
            if process.exit_code is None:
                self.ctl.replica_registered(process.arg("--replica-id"), FakeReplicaConn())  # type: ignore[arg-type]
        await self.settle()
        self.ctl.tick()

    def status(self, app: str = "app") -> ApplicationStatus:
        return self.ctl.apps[app].status

    def snapshot(self) -> dict[str, Any]:
        return {
            name: (app.status, app.deleting, app.building, app.spec, sorted(app.deployments))
            for name, app in self.ctl.apps.items()
        }


def request_of(process: FakeProcess) -> BuildRequest:
    request: BuildRequest = pickle.loads(Path(process.arg("--request")).read_bytes())
    return request


def run(tmp_path: Path, test: Callable[[Harness], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        harness = Harness(tmp_path)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await test(harness)
        finally:
            harness.dc.close()

    asyncio.run(main())


# -- validation: a bad document changes nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not a mapping", "expected a mapping"),
        ({"applications": [{"import_path": "nocolon"}]}, r"import_path"),
        (document(entry(route_prefix="nope")), r"route_prefix"),
        (document(entry("a", "/a"), entry("a", "/b")), "is used twice"),
        (document(entry("a", "/x"), entry("b", "/x")), "used by more than one"),
        (
            document(entry(deployments=[{"name": "Model", "num_replicas": 0}])),
            r"deployments\[0\] \('Model'\)\.num_replicas",
        ),
        (document(entry(host="0.0.0.0")), "cannot be set per application"),
    ],
)
def test_invalid_document_raises_and_changes_nothing(tmp_path: Path, raw: Any, match: str) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(imperative_spec("imp", "/imp"))
        good = document(entry("app", "/"))
        await h.deploy(good, declarative_spec())
        accepted, configs, before = h.dc.document, dict(h.dc.app_configs), h.snapshot()
        launched = len(h.launcher.processes)
        with pytest.raises(ServeConfigError, match=match):
            h.dc.apply(raw)
        await h.settle()
        assert h.dc.document is accepted
        assert h.dc.app_configs == configs
        assert h.snapshot() == before
        assert len(h.launcher.processes) == launched

    run(tmp_path, body)


def test_route_prefix_of_an_imperative_app_is_rejected(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(imperative_spec("imp", "/api"))
        before = h.snapshot()
        with pytest.raises(ServeConfigError) as info:
            h.dc.apply(document(entry("web", "/other"), entry("api", "/api")))
        assert str(info.value) == (
            "applications ('api').route_prefix: '/api' is already used by application 'imp' "
            "(deployed with serve.run). Pick another route_prefix, or delete that application "
            "first."
        )
        await h.settle()
        assert h.snapshot() == before
        assert h.dc.document is None
        assert h.launcher.processes == []

    run(tmp_path, body)


def test_route_prefix_of_a_deleting_imperative_app_is_free(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(imperative_spec("imp", "/api"))
        h.ctl.tick()  # it has a replica, so deleting takes a while
        h.ctl.delete_app("imp")
        h.dc.apply(document(entry("api", "/api")))
        assert h.status("api") == ApplicationStatus.DEPLOYING

    run(tmp_path, body)


def test_a_document_may_take_over_an_imperative_app_of_the_same_name(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(imperative_spec("app", "/"))
        await h.deploy(document(entry("app", "/")), declarative_spec())
        app = h.ctl.apps["app"]
        assert app.spec.source == "declarative"
        assert sorted(app.deployments) == ["Ingress", "Model"]

    run(tmp_path, body)


def test_an_app_still_deleting_is_rejected(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(imperative_spec("app", "/"))
        h.ctl.tick()  # a replica starts, so the app cannot vanish at once
        h.ctl.delete_app("app")
        before = h.snapshot()
        with pytest.raises(ServeConfigError, match="'app' is still being deleted"):
            h.dc.apply(document(entry("app", "/")))
        assert h.snapshot() == before
        assert h.ctl.apps["app"].deleting
        assert h.builders() == []

    run(tmp_path, body)


# -- converging to the document --------------------------------------------------------------


def test_declarative_apps_missing_from_a_new_document_are_deleted(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.ctl.deploy_app(imperative_spec("imp", "/imp"))
        await h.deploy(document(entry("a", "/a")), declarative_spec("a", "/a"))
        h.dc.apply(document(entry("a", "/a"), entry("b", "/b")))
        await h.builder(3)  # "a" is rebuilt quietly alongside the new "b"
        for name in ("a", "b"):
            await h.finish(h.builder_of(name), BuildResult(spec=declarative_spec(name, f"/{name}")))
        h.ctl.tick()  # replicas start, so deleting "b" takes a tick or two
        assert {n: a.deleting for n, a in h.ctl.apps.items()} == {
            "imp": False,
            "a": False,
            "b": False,
        }
        h.dc.apply(document(entry("a", "/a")))
        assert h.ctl.apps["b"].deleting
        assert all(d.deleting for d in h.ctl.apps["b"].deployments.values())
        assert "b" not in h.dc.app_configs
        assert not h.ctl.apps["imp"].deleting
        assert not h.ctl.apps["a"].deleting
        h.ctl.tick()
        assert h.status("b") == ApplicationStatus.DELETING
        assert [a.name for a in h.dc.document.applications] == ["a"]  # type: ignore[union-attr]
        h.ctl.tick()  # its replicas have exited
        assert sorted(h.ctl.apps) == ["a", "imp"]

    run(tmp_path, body)


def test_removing_an_app_that_is_still_building_cancels_its_build(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry("a", "/a"), entry("b", "/b")))
        await h.builder(2)
        b_build = h.builder_of("b")
        h.dc.apply(document(entry("a", "/a")))
        assert b_build.killed
        assert h.ctl.apps["b"].deleting
        h.ctl.tick()
        assert "b" not in h.ctl.apps  # a placeholder without deployments goes at once
        await asyncio.sleep(0)
        assert not Path(b_build.arg("--request")).exists()

    run(tmp_path, body)


def test_new_app_is_deploying_without_deployments_until_built(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        raw = document(entry("app", "/x", args={"n": 1}))
        doc = h.dc.apply(raw)
        assert doc is h.dc.document
        app = h.ctl.apps["app"]
        assert app.status == ApplicationStatus.DEPLOYING
        assert app.deployments == {}
        assert (app.spec.source, app.spec.ingress, app.spec.route_prefix) == (
            "declarative",
            "",
            "/x",
        )
        assert h.dc.app_configs["app"] == {
            "name": "app",
            "route_prefix": "/x",
            "import_path": "models:app",
            "args": {"n": 1},
        }
        process = await h.builder()
        assert process.spec.module == "schooner.builder"
        assert process.arg("--lifeline-fd") == str(LIFELINE_FD)
        assert LIFELINE_FD in process.spec.pass_fds
        request_file, result_file = Path(process.arg("--request")), Path(process.arg("--result"))
        assert request_file.parent == result_file.parent == tmp_path / "builds"
        request = request_of(process)
        assert request.app == h.dc.app_configs["app"]
        assert (request.base_dir, request.cache_dir) == (str(h.base_dir), str(h.cache_dir))
        assert request.restart_nonce == ""
        # Still building: nothing changes while the builder runs.
        h.ctl.tick()
        assert h.status() == ApplicationStatus.DEPLOYING

        spec = declarative_spec("app", "/x")
        await h.finish(process, BuildResult(spec=spec))
        app = h.ctl.apps["app"]
        assert not app.building and app.build_error is None
        assert app.spec.ingress == "Ingress"
        assert sorted(app.deployments) == ["Ingress", "Model"]
        assert app.deployments["Model"].spec.config.user_config == {"v": 1}
        assert app.deployments["Model"].target_num_replicas == 2
        assert not request_file.exists() and not result_file.exists()
        await h.run_replicas()
        assert len(h.launcher.of("schooner.replica.main")) == 3
        assert h.status() == ApplicationStatus.RUNNING
        assert {d.status for d in app.deployments.values()} == {DeploymentStatus.HEALTHY}

    run(tmp_path, body)


def test_build_error_fails_the_app_with_its_message(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry()))
        message = "Deploying app 'app' failed: No module named 'models'"
        await h.finish(await h.builder(), BuildResult(error=message))
        app = h.ctl.apps["app"]
        assert app.status == ApplicationStatus.DEPLOY_FAILED
        assert app.message == message
        assert app.deployments == {}
        assert not app.building

    run(tmp_path, body)


def test_builder_exiting_without_a_result_fails_the_app(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry()))
        (await h.builder()).exit(1)
        await h.settle()
        assert h.status() == ApplicationStatus.DEPLOY_FAILED
        assert h.ctl.apps["app"].message == (
            "Deploying app 'app' failed: the builder process exited with code 1 before it "
            "finished (see the instance's logs)."
        )

    run(tmp_path, body)


def test_unreadable_result_fails_the_app(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry()))
        process = await h.builder()
        Path(process.arg("--result")).write_bytes(b"not a pickle")
        process.exit(0)
        await h.settle()
        assert h.status() == ApplicationStatus.DEPLOY_FAILED
        assert "unreadable result" in h.ctl.apps["app"].message

    run(tmp_path, body)


def test_built_app_the_controller_rejects_fails_the_app(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry()))
        spec = declarative_spec()
        spec.ingress = "Missing"
        await h.finish(await h.builder(), BuildResult(spec=spec))
        assert h.status() == ApplicationStatus.DEPLOY_FAILED
        assert h.ctl.apps["app"].message == (
            "Deploying app 'app' failed: Ingress deployment 'Missing' is not in the app."
        )

    run(tmp_path, body)


# -- re-applying: quiet rebuilds -------------------------------------------------------------


async def running_app(h: Harness, doc: dict[str, Any]) -> AppSpec:
    spec = declarative_spec()
    await h.deploy(doc, spec)
    await h.run_replicas()
    assert h.status() == ApplicationStatus.RUNNING
    return h.ctl.apps["app"].spec


def test_reapplying_the_same_document_is_quiet(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        doc = document(entry(args={"n": 1}))
        deployed = await running_app(h, doc)
        deployed_at = h.ctl.apps["app"].last_deployed_time_s
        replicas = len(h.launcher.processes)

        h.dc.apply(doc)
        assert h.status() == ApplicationStatus.RUNNING
        assert not h.ctl.apps["app"].building
        process = await h.builder(2)  # rebuilt anyway: the code may have changed
        assert h.status() == ApplicationStatus.RUNNING
        # Same code, same options: the same fingerprint, so nothing is redeployed.
        await h.finish(process, BuildResult(spec=declarative_spec()))
        app = h.ctl.apps["app"]
        assert app.spec is deployed
        assert app.last_deployed_time_s == deployed_at
        h.ctl.tick()
        assert h.status() == ApplicationStatus.RUNNING
        assert len(h.launcher.processes) == replicas + 1  # only the builder

    run(tmp_path, body)


def test_quiet_rebuild_with_changed_code_redeploys(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        doc = document(entry())
        deployed = await running_app(h, doc)
        h.dc.apply(doc)
        changed = declarative_spec()
        for dep in changed.deployments:
            dep.code_version = "edited"
        await h.finish(await h.builder(2), BuildResult(spec=changed))
        app = h.ctl.apps["app"]
        assert app.spec is not deployed
        assert {d.version.split(":")[0] for d in app.deployments.values()} == {"edited"}
        assert h.status() == ApplicationStatus.DEPLOYING

    run(tmp_path, body)


def test_quiet_rebuild_that_fails_reports_the_error(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        doc = document(entry())
        await running_app(h, doc)
        h.dc.apply(doc)
        await h.finish(await h.builder(2), BuildResult(error="Deploying app 'app' failed: boom"))
        assert h.status() == ApplicationStatus.DEPLOY_FAILED
        assert h.ctl.apps["app"].message == "Deploying app 'app' failed: boom"
        # The running version keeps serving.
        assert {d.status for d in h.ctl.apps["app"].deployments.values()} == {
            DeploymentStatus.HEALTHY
        }
        assert all(
            r.state == ReplicaState.RUNNING
            for d in h.ctl.apps["app"].deployments.values()
            for r in d.replicas.values()
        )

    run(tmp_path, body)


def test_a_changed_entry_shows_deploying_at_once(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await running_app(h, document(entry(args={"n": 1})))
        h.dc.apply(document(entry(args={"n": 2})))
        assert h.status() == ApplicationStatus.DEPLOYING
        assert h.ctl.apps["app"].building
        request = request_of(await h.builder(2))
        assert request.app["args"] == {"n": 2}

    run(tmp_path, body)


def test_same_document_after_a_failed_build_is_not_quiet(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        doc = document(entry())
        h.dc.apply(doc)
        await h.finish(await h.builder(), BuildResult(error="Deploying app 'app' failed: x"))
        assert h.status() == ApplicationStatus.DEPLOY_FAILED
        h.dc.apply(doc)
        assert h.status() == ApplicationStatus.DEPLOYING

    run(tmp_path, body)


def test_force_rebuilds_loudly_with_a_restart_nonce(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        doc = document(entry())
        await running_app(h, doc)
        h.dc.apply(doc, force=True)
        assert h.status() == ApplicationStatus.DEPLOYING
        request = request_of(await h.builder(2))
        assert request.restart_nonce != ""

    run(tmp_path, body)


def test_a_newer_document_supersedes_a_running_build(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.dc.apply(document(entry(args={"n": 1})))
        first = await h.builder()
        h.dc.apply(document(entry(args={"n": 2})))
        assert first.killed
        second = await h.builder(2)
        await h.finish(second, BuildResult(spec=declarative_spec()))
        assert h.ctl.apps["app"].spec.ingress == "Ingress"
        assert h.dc.app_configs["app"]["args"] == {"n": 2}

    run(tmp_path, body)
