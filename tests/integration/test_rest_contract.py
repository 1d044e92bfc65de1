"""The admin API's GET body against Ray 2.60's contract, and Ray's own `serve` CLI against us.

Ray's CLI parses the body with models that forbid unknown keys at the instance,
application and deployment levels, so those levels must carry exactly Ray's keys.
Checked three ways: against the captured Ray 2.60 response (always), with Ray's
own ``ServeInstanceDetails`` model, and by running ``serve status/config/deploy -a``
(when Ray is importable here, or a Python with Ray is named by SCHOONER_RAY_PYTHON).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from detached import EXAMPLES, Detached, fruit_config
from helpers import wait_for

#: A GET response captured from a running Ray 2.60 head (copied from the shared contracts).
CAPTURED = Path(__file__).parents[1] / "data" / "ray-2.60-serve-applications-get.json"

# Required keys per level (kuberay-rest.md §2.2).
REQUIRED = {
    "instance": {"proxies", "applications"},
    "application": {
        "name",
        "route_prefix",
        "docs_path",
        "status",
        "message",
        "last_deployed_time_s",
        "source",
        "deployments",
        "external_scaler_enabled",
    },
    "deployment": {
        "name",
        "status",
        "status_trigger",
        "message",
        "deployment_config",
        "target_num_replicas",
        "required_resources",
        "replicas",
    },
    "replica": {"replica_id", "state", "start_time_s"},
}
#: Optional keys Ray 2.60 allows at the strict levels (beyond what the capture shows).
OPTIONAL = {
    "instance": {
        "controller_info",
        "proxy_location",
        "http_options",
        "grpc_options",
        "target_capacity",
        "target_groups",
        "controller_health_metrics",
        "restores_unset_config_options",
    },
    "application": {"deployed_app_config", "deployment_topology"},
    "deployment": {"recent_dead_replicas", "autoscaling_detail"},
}


def _ray_python() -> str | None:
    named = os.environ.get("SCHOONER_RAY_PYTHON")
    if named:
        return named
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return None
    return sys.executable


RAY_PYTHON = _ray_python()
needs_ray = pytest.mark.skipif(
    RAY_PYTHON is None, reason="Ray is not installed (set SCHOONER_RAY_PYTHON to a Python with it)"
)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    workdir = tmp_path_factory.mktemp("contract")
    shutil.copy(EXAMPLES / "fruit.py", workdir / "fruit.py")
    inst = Detached(workdir)
    inst.start()
    try:
        inst.deploy(fruit_config())
        inst.wait_running("fruit")
        yield inst
    finally:
        inst.stop()


def _check_level(level: str, ours: dict[str, Any], captured: dict[str, Any]) -> None:
    allowed = set(captured) | REQUIRED[level] | OPTIONAL.get(level, set())
    extra = set(ours) - allowed
    assert not extra, f"{level}: keys Ray's model forbids: {sorted(extra)}"
    missing = REQUIRED[level] - set(ours)
    assert not missing, f"{level}: required keys missing: {sorted(missing)}"
    for key in set(ours) & set(captured):
        if ours[key] is None or captured[key] is None:
            continue
        number = (int, float)
        if isinstance(captured[key], number) and not isinstance(captured[key], bool):
            assert isinstance(ours[key], number) and not isinstance(ours[key], bool), (level, key)
        else:
            assert type(ours[key]) is type(captured[key]), (level, key, ours[key])


def test_get_body_has_the_shape_of_ray_2_60(running: Detached) -> None:
    captured = json.loads(CAPTURED.read_text())
    resp = running.api.get("/api/serve/applications/")
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    ours = resp.json()
    _check_level("instance", ours, captured)
    cap_app = captured["applications"]["hello"]
    cap_dep = cap_app["deployments"]["Hello"]
    cap_replica = cap_dep["replicas"][0]
    app = ours["applications"]["fruit"]
    _check_level("application", app, cap_app)
    assert app["source"] == "declarative" and app["status"] == "RUNNING"
    assert app["deployed_app_config"]["import_path"] == "fruit:app"
    for dep in app["deployments"].values():
        _check_level("deployment", dep, cap_dep)
        assert dep["status"] == "HEALTHY"
        for replica in dep["replicas"]:
            _check_level("replica", replica, cap_replica)
            assert replica["state"] == "RUNNING" and replica["pid"] > 0
    proxy = next(iter(ours["proxies"].values()))
    assert proxy["status"] == "HEALTHY"
    assert ours["controller_info"]["node_id"]


@needs_ray
def test_ray_serve_instance_details_model_accepts_the_body(running: Detached) -> None:
    body = running.api.get("/api/serve/applications/").text
    code = (
        "import json, sys\n"
        "from ray.serve.schema import ServeInstanceDetails\n"
        "d = ServeInstanceDetails(**json.loads(sys.stdin.read()))\n"
        "print(sorted(d.applications), d.applications['fruit'].status.value)\n"
    )
    assert RAY_PYTHON is not None
    out = subprocess.run(
        [RAY_PYTHON, "-c", code], input=body, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "['fruit'] RUNNING" in out.stdout


def _ray_serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert RAY_PYTHON is not None
    serve_cli = Path(RAY_PYTHON).parent / "serve"
    command = [str(serve_cli)] if serve_cli.exists() else [RAY_PYTHON, "-m", "ray.serve.scripts"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=180)


@needs_ray
def test_ray_serve_cli_status_config_deploy(running: Detached) -> None:
    if sys.executable == RAY_PYTHON:
        # `import ray.serve` works with grpcio installed (the test extra), but Ray's CLI also
        # needs the rest of ray[serve] (watchfiles, ...).
        pytest.importorskip("watchfiles", reason="Ray's serve CLI needs ray[serve] installed")
    out = _ray_serve("status", "-a", running.admin, cwd=running.dir)
    assert out.returncode == 0, out.stderr[-3000:]
    status = yaml.safe_load(out.stdout)
    assert status["applications"]["fruit"]["status"] == "RUNNING"
    out = _ray_serve("config", "-a", running.admin, cwd=running.dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert yaml.safe_load(out.stdout)["import_path"] == "fruit:app"
    config = fruit_config(OrangeStand={"user_config": {"price": 9}})
    (running.dir / "ray_config.yaml").write_text(yaml.safe_dump(config))
    out = _ray_serve("deploy", "ray_config.yaml", "-a", running.admin, cwd=running.dir)
    assert out.returncode == 0, out.stderr[-3000:]
    wait_for(
        lambda: running.http.post("/fruit", json=["ORANGE", 1]).json() == 9,
        message="the config sent by Ray's CLI to take effect",
    )
