"""The head crashes or the whole instance restarts: what keeps serving and what comes back.

Marked slow (fault injection): select with ``-m slow``, skip with ``-m "not slow"``.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from detached import EXAMPLES, Detached, fruit_config
from helpers import Load, free_port, schooner_processes, wait_for

import schooner as serve
from conftest import BUCKET

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "fruit.py", tmp_path / "fruit.py")
    return tmp_path


@pytest.fixture
def inst(workdir: Path) -> Iterator[Detached]:
    instance = Detached(workdir)
    yield instance
    instance.stop()


def instance_info(inst: Detached) -> dict[str, Any]:
    info: dict[str, Any] = inst.api.get("/api/schooner/instance").json()
    return info


def kill_head(inst: Detached) -> dict[str, Any]:
    """SIGKILL the head; return the instance info once its successor answers."""
    old = instance_info(inst)
    os.kill(old["pid"], signal.SIGKILL)
    return wait_for(
        lambda: (info := instance_info(inst))["pid"] != old["pid"] and info,
        timeout_s=30,
        message="a new head to answer",
    )


def replica_pids(inst: Detached, app: str) -> dict[str, set[int]]:
    deps = inst.details()["applications"][app]["deployments"]
    return {name: inst.pids(app, name) for name in deps}


def session_pids(session: str, module: str) -> set[int]:
    return {pid for pid, cmd in schooner_processes() if session in cmd and module in cmd}


def two_apps() -> dict[str, Any]:
    config = fruit_config()
    second = fruit_config(MangoStand={"user_config": {"price": 7}})["applications"][0]
    second.update(name="market", route_prefix="/market")
    config["applications"].append(second)
    return config


def test_head_killed_under_load_fails_no_request_and_keeps_every_replica(
    inst: Detached,
) -> None:
    inst.start()
    inst.deploy(fruit_config())
    inst.wait_running("fruit")
    session = inst.info["session"]
    before = replica_pids(inst, "fruit")
    proxy = session_pids(session, "schooner.proxy.main")
    served_while_down = []
    with Load(f"{inst.http.base_url}/fruit", body=["MANGO", 2], threads=4) as load:
        for _ in range(2):
            mark = load.ok
            kill_head(inst)
            served_while_down.append(load.ok - mark)  # answered before the new head was up
            inst.wait_running("fruit")
            mark = load.ok
            wait_for(lambda m=mark: load.ok > m + 50, message="answers after the restart")
    assert load.failures == []
    assert set(load.answers) == {6}
    assert all(n > 0 for n in served_while_down), served_while_down
    # Re-adopted, not restarted: the same replica and proxy processes serve on.
    assert replica_pids(inst, "fruit") == before
    assert session_pids(session, "schooner.proxy.main") == proxy
    assert instance_info(inst)["head_restarts"] == 2
    status = inst.cli("status").stdout
    assert "DEPLOY_FAILED" not in status and "UNHEALTHY" not in status


def test_updates_after_a_head_restart_reach_the_readopted_replicas(inst: Detached) -> None:
    inst.start()
    inst.deploy(fruit_config())
    inst.wait_running("fruit")
    before = replica_pids(inst, "fruit")
    kill_head(inst)
    inst.wait_running("fruit")
    # user_config: reconfigured in place on the re-adopted replica (same pid).
    inst.deploy(fruit_config(MangoStand={"user_config": {"price": 5}}))
    wait_for(
        lambda: inst.http.post("/fruit", json=["MANGO", 2]).json() == 10,
        message="the new price to be served",
    )
    assert inst.pids("fruit", "MangoStand") == before["MangoStand"]
    # Scale down: one of the re-adopted replicas is drained and stopped.
    inst.deploy(
        fruit_config(MangoStand={"user_config": {"price": 5}}, FruitMarket={"num_replicas": 1})
    )
    wait_for(
        lambda: (
            len(inst.pids("fruit", "FruitMarket")) == 1 and inst.app("fruit")["status"] == "RUNNING"
        ),  # type: ignore[index]
        message="FruitMarket down to one replica",
    )
    (left,) = inst.pids("fruit", "FruitMarket")
    assert left in before["FruitMarket"]
    gone = before["FruitMarket"] - {left}
    wait_for(
        lambda: not gone & {pid for pid, _ in schooner_processes()},
        message="the removed replica's process to exit",
    )


def test_a_replica_that_died_with_the_head_is_replaced(inst: Detached) -> None:
    inst.start()
    inst.deploy(fruit_config())
    inst.wait_running("fruit")
    victim = next(iter(inst.pids("fruit", "PearStand")))
    head = instance_info(inst)["pid"]
    os.kill(victim, signal.SIGKILL)
    os.kill(head, signal.SIGKILL)
    wait_for(lambda: instance_info(inst)["pid"] != head, message="a new head")
    wait_for(
        lambda: (pids := inst.pids("fruit", "PearStand")) and victim not in pids,
        message="a new PearStand replica",
    )
    inst.wait_running("fruit")
    assert inst.http.post("/fruit", json=["PEAR", 1]).json() == 4


def test_a_driver_owned_instance_survives_its_head_crashing() -> None:
    from schooner import api

    @serve.deployment(num_replicas=2)
    def echo(x: int) -> int:
        return x * 2

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        handle = serve.run(echo.bind(), name="echo", route_prefix="/echo")
        # The handle's router is made on first use: use it now, so that it knows the
        # replicas before the head goes (else its first call waits for the next head).
        assert handle.remote(0).result(timeout_s=10) == 0
        head = api._controller_call("instance_info")["pid"]
        os.kill(head, signal.SIGKILL)
        # Handles keep calling the replicas they know while the head is replaced...
        assert [handle.remote(i).result(timeout_s=10) for i in range(50)] == [
            2 * i for i in range(50)
        ]
        # ...and calls to the controller wait for the new head instead of failing.
        assert serve.status().applications["echo"].status == "RUNNING"
        assert api._controller_call("instance_info")["pid"] != head
        assert handle.remote(21).result(timeout_s=10) == 42
    finally:
        serve.shutdown()


# -- whole-instance restarts with the same checkpoint path -------------------------------

CUSTOM_STORE = '''
import os
import pathlib
import urllib.parse


class DirStore:
    """A checkpoint store of the test's own: one file per key."""

    def __init__(self, argument, namespace):
        self.root = pathlib.Path(argument) / namespace
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key):
        return self.root / urllib.parse.quote(key, safe="")

    def get(self, key):
        path = self._path(key)
        return path.read_bytes() if path.exists() else None

    def put(self, key, value):
        tmp = self._path(key).with_suffix(".tmp")
        tmp.write_bytes(value)
        os.replace(tmp, self._path(key))

    def delete(self, key):
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix=""):
        names = (urllib.parse.unquote(p.name) for p in self.root.iterdir())
        return sorted(n for n in names if n.startswith(prefix) and not n.endswith(".tmp"))

    def close(self):
        pass
'''


@pytest.fixture
def checkpoint_path(request: pytest.FixtureRequest, workdir: Path) -> str:
    kind = request.param
    if kind == "file":
        return f"file://{workdir / 'checkpoints'}"
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    if kind == "s3":
        request.getfixturevalue("s3_server")
        return f"s3://{BUCKET}/{uuid.uuid4().hex}"
    (workdir / "teststore.py").write_text(CUSTOM_STORE)
    return f"custom://teststore.DirStore/{workdir / 'custom-checkpoints'}"


@pytest.mark.parametrize(
    ("checkpoint_path", "how"),
    [
        ("file", signal.SIGKILL),
        ("file", signal.SIGTERM),
        ("redis", signal.SIGKILL),
        ("s3", signal.SIGTERM),
        ("custom", signal.SIGKILL),
    ],
    indirect=["checkpoint_path"],
    ids=["file-sigkill", "file-sigterm", "redis-sigkill", "s3-sigterm", "custom-sigkill"],
)
def test_restart_with_the_same_checkpoint_path_brings_every_app_back(
    checkpoint_path: str, inst: Detached, how: signal.Signals
) -> None:
    # checkpoint_path first: a store server that is not installed skips the test before
    # an instance is set up.
    inst.start("--checkpoint-path", checkpoint_path)
    inst.deploy(two_apps())
    inst.wait_running("fruit", "market")
    configs = {
        name: app["deployed_app_config"] for name, app in inst.details()["applications"].items()
    }
    session = inst.info["session"]
    os.kill(inst.info["supervisor_pid"], how)  # the whole instance goes
    wait_for(
        lambda: not [p for p in schooner_processes() if session in p[1]],
        message="every process of the instance to exit",
    )
    inst.start("--checkpoint-path", checkpoint_path)
    apps = inst.wait_running("fruit", "market")
    assert {name: app["deployed_app_config"] for name, app in apps.items()} == configs
    assert {app["source"] for app in apps.values()} == {"declarative"}
    assert inst.http.post("/fruit", json=["MANGO", 2]).json() == 6
    assert inst.http.post("/market", json=["MANGO", 2]).json() == 14
    assert len(inst.pids("fruit", "FruitMarket")) == 2


def test_shutdown_clears_the_checkpoint(inst: Detached, workdir: Path) -> None:
    path = f"file://{workdir / 'checkpoints'}"
    inst.start("--checkpoint-path", path)
    inst.deploy(fruit_config())
    inst.wait_running("fruit")
    inst.cli("shutdown", "-y")
    inst.start("--checkpoint-path", path)
    assert inst.details()["applications"] == {}


def test_a_checkpoint_path_serves_one_running_instance_at_a_time(
    inst: Detached, workdir: Path
) -> None:
    path = f"file://{workdir / 'checkpoints'}"
    inst.start("--checkpoint-path", path)
    inst.deploy(fruit_config())
    inst.wait_running("fruit")
    second = Detached(workdir)
    refused = second.cli(
        "start",
        "--http-port",
        str(second.http_port),
        "--admin-port",
        str(second.admin_port),
        "--checkpoint-path",
        path,
        check=False,
    )
    assert refused.returncode == 1
    assert "in use by another running instance" in refused.stderr
    assert str(inst.info["supervisor_pid"]) in refused.stderr
    assert inst.http.post("/fruit", json=["MANGO", 2]).json() == 6  # untouched
    session = inst.info["session"]
    os.kill(inst.info["supervisor_pid"], signal.SIGKILL)
    wait_for(
        lambda: not [p for p in schooner_processes() if session in p[1]],
        message="the first instance to be gone",
    )
    second.start("--checkpoint-path", path)  # its owner is gone: taken over at once
    try:
        second.wait_running("fruit")
        assert second.http.post("/fruit", json=["MANGO", 2]).json() == 6
    finally:
        second.stop()
