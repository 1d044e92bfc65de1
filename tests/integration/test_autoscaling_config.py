"""Autoscaling of a detached instance driven by config files and the CLI: an application
policy from the config, what `schooner status` shows, and a head restart that keeps the
autoscaled counts."""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from detached import Detached
from helpers import wait_for

APP = textwrap.dedent(
    """
    import schooner as serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Back:
        def __call__(self, x):
            return x * 2

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Front:
        def __init__(self, back):
            self.back = back

        async def __call__(self, request):
            return await self.back.remote(21)

    app = Front.bind(Back.bind())
    """
)

POLICIES = textwrap.dedent(
    """
    def pair(contexts):
        # Every deployment of the application gets two replicas.
        return {dep: 2 for dep in contexts}, {}

    def three(ctx):
        return 3, {}
    """
)

FAST = {"upscale_delay_s": 0, "downscale_delay_s": 1, "look_back_period_s": 1}


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[Detached]:
    (tmp_path / "scaled.py").write_text(APP)
    (tmp_path / "policies.py").write_text(POLICIES)
    instance = Detached(tmp_path)
    yield instance
    instance.stop()


def config(app_policy: str | None = None, **back: Any) -> dict[str, Any]:
    auto = {"min_replicas": 1, "max_replicas": 3, **FAST}
    entry: dict[str, Any] = {
        "name": "scaled",
        "route_prefix": "/",
        "import_path": "scaled:app",
        "runtime_env": {"working_dir": "."},
        "deployments": [
            {"name": "Front", "autoscaling_config": auto},
            {"name": "Back", "autoscaling_config": {**auto, **back}},
        ],
    }
    if app_policy:
        entry["autoscaling_policy"] = {"policy_function": app_policy}
    return {"applications": [entry]}


def running(inst: Detached, name: str) -> int:
    return len(inst.pids("scaled", name))


def test_an_application_policy_from_the_config_scales_every_deployment(inst: Detached) -> None:
    inst.start()
    inst.deploy(config("policies:pair"))
    wait_for(
        lambda: running(inst, "Front") == 2 and running(inst, "Back") == 2,
        timeout_s=60,
        message="two replicas of each deployment",
    )
    assert inst.http.get("/").json() == 42
    status = yaml.safe_load(inst.cli("status").stdout)
    front = status["applications"]["scaled"]["deployments"]["Front"]
    assert front["autoscaling"]["replicas"] == "2 running, target 2 (min 1, max 3)"
    assert "scale up from 1 to 2" in front["autoscaling"]["last_decision"]
    assert "policy policies:pair" in front["autoscaling"]["last_decision"]


def test_a_bad_application_policy_is_a_clear_config_error(inst: Detached) -> None:
    inst.start()
    bad = config()
    bad["applications"][0]["autoscaling_policy"] = {"function": "policies:pair"}
    (inst.dir / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = inst.cli("deploy", "bad.yaml", check=False)
    assert result.returncode != 0
    assert "autoscaling_policy" in result.stderr + result.stdout


@pytest.mark.slow
def test_a_head_restart_keeps_the_autoscaled_count(inst: Detached) -> None:
    inst.start()
    inst.deploy(config(policy={"policy_function": "policies:three"}))
    wait_for(lambda: running(inst, "Back") == 3, timeout_s=60, message="three Back replicas")
    inst.wait_running("scaled")
    before = inst.pids("scaled", "Back")
    head = inst.api.get("/api/schooner/instance").json()["pid"]
    os.kill(head, signal.SIGKILL)
    wait_for(
        lambda: inst.api.get("/api/schooner/instance").json()["pid"] != head,
        timeout_s=30,
        message="a new head",
    )
    back = inst.details()["applications"]["scaled"]["deployments"]["Back"]
    assert back["target_num_replicas"] == 3  # not initial_replicas / min_replicas (1)
    inst.wait_running("scaled")
    assert inst.pids("scaled", "Back") == before  # the same processes, none restarted
    assert inst.http.get("/").json() == 42
