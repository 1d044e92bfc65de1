"""The production workflow end to end, against a detached instance started by the CLI.

`schooner start` → `build` → `deploy` → `status`/`config` → live updates of each kind
under steady HTTP load (counting failed requests) → `shutdown` with nothing left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from detached import EXAMPLES, Detached, fruit_config
from helpers import Load, free_port, wait_for


@pytest.fixture(scope="module")
def detached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    workdir = tmp_path_factory.mktemp("prod")
    shutil.copy(EXAMPLES / "fruit.py", workdir / "fruit.py")
    inst = Detached(workdir)
    out = inst.start()
    assert inst.admin in out.stdout and str(inst.http_port) in out.stdout
    assert inst.info["detached"] is True
    yield inst
    inst.stop()


def price(inst: Detached, fruit: str, amount: float) -> Any:
    resp = inst.http.post("/fruit", json=[fruit, amount])
    assert resp.status_code == 200, resp.text
    return resp.json()


# ----------------------------------------------------------------------------- commands


def test_start_refuses_a_second_instance_on_the_same_admin_port(detached: Detached) -> None:
    out = detached.cli(
        "start",
        "--admin-port",
        str(detached.admin_port),
        "--http-port",
        str(free_port()),
        check=False,
    )
    assert out.returncode == 1
    assert "already running" in out.stderr


def test_build_writes_every_deployment_with_every_setting(detached: Detached) -> None:
    detached.cli("build", "fruit:app", "-o", "built.yaml")
    doc = yaml.safe_load((detached.dir / "built.yaml").read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "fruit:app" and app["runtime_env"] == {}
    deps = {d["name"]: d for d in app["deployments"]}
    assert set(deps) == {"MangoStand", "OrangeStand", "PearStand", "FruitMarket"}
    assert deps["MangoStand"]["user_config"] == {"price": 3}
    assert deps["FruitMarket"]["num_replicas"] == 2
    for dep in deps.values():
        for setting in (
            "num_replicas",
            "max_ongoing_requests",
            "max_queued_requests",
            "user_config",
            "graceful_shutdown_wait_loop_s",
            "graceful_shutdown_timeout_s",
            "health_check_period_s",
            "health_check_timeout_s",
            "ray_actor_options",
        ):
            assert setting in dep, (dep["name"], setting)


def test_deploy_returns_at_once_then_converges(detached: Detached) -> None:
    detached.cli("build", "fruit:app", "-o", "built.yaml")
    doc = yaml.safe_load((detached.dir / "built.yaml").read_text())
    doc["applications"][0].update(name="fruit", route_prefix="/fruit")
    (detached.dir / "built.yaml").write_text(yaml.safe_dump(doc))
    out = detached.cli("deploy", "built.yaml")
    assert "Sent deploy request successfully" in out.stdout
    assert "schooner status" in out.stdout
    detached.wait_running("fruit")
    assert price(detached, "MANGO", 2) == 6
    assert price(detached, "PEAR", 1) == 4
    status = yaml.safe_load(detached.cli("status").stdout)
    fruit = status["applications"]["fruit"]
    assert fruit["status"] == "RUNNING" and fruit["message"] == ""
    assert fruit["last_deployed_time_s"] > 0
    market = fruit["deployments"]["FruitMarket"]
    assert market["status"] == "HEALTHY" and market["replica_states"] == {"RUNNING": 2}
    one = yaml.safe_load(detached.cli("status", "-n", "fruit").stdout)
    assert one["status"] == "RUNNING" and set(one["deployments"]) == set(fruit["deployments"])
    config = yaml.safe_load(detached.cli("config", "-n", "fruit").stdout)
    assert config["import_path"] == "fruit:app" and config["route_prefix"] == "/fruit"


def test_deploy_is_idempotent(detached: Detached) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    before = detached.pids("fruit", "FruitMarket")
    deployed_at = detached.app("fruit")["last_deployed_time_s"]  # type: ignore[index]
    detached.deploy(fruit_config())
    assert detached.app("fruit")["status"] == "RUNNING"  # type: ignore[index]
    assert detached.app("fruit")["last_deployed_time_s"] == deployed_at  # type: ignore[index]
    assert detached.pids("fruit", "FruitMarket") == before


# ---------------------------------------------------------------------- live updates


def test_user_config_update_reconfigures_live_replicas_without_failures(
    detached: Detached,
) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    pids = detached.pids("fruit", "MangoStand")
    with Load(f"http://127.0.0.1:{detached.http_port}/fruit", body=["MANGO", 1]) as load:
        mark = len(load.answers)
        detached.deploy(fruit_config(MangoStand={"user_config": {"price": 7}}))
        wait_for(lambda: 7 in load.since(mark), message="the new price")
        detached.wait_running("fruit")
    assert load.failures == [], load.failures[:5]
    assert detached.pids("fruit", "MangoStand") == pids  # same processes
    print(f"user_config update: {load.ok} ok, {len(load.failures)} failed")


def test_num_replicas_update_only_adds_or_removes_replicas(detached: Detached) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    before = detached.pids("fruit", "FruitMarket")
    with Load(f"http://127.0.0.1:{detached.http_port}/fruit", body=["PEAR", 1]) as load:
        detached.deploy(fruit_config(FruitMarket={"num_replicas": 3}))
        wait_for(lambda: len(detached.pids("fruit", "FruitMarket")) == 3, message="3 replicas")
        detached.wait_running("fruit")
        grown = detached.pids("fruit", "FruitMarket")
        detached.deploy(fruit_config(FruitMarket={"num_replicas": 1}))
        wait_for(lambda: len(detached.pids("fruit", "FruitMarket")) == 1, message="1 replica")
        detached.wait_running("fruit")
        shrunk = detached.pids("fruit", "FruitMarket")
    assert load.failures == [], load.failures[:5]
    assert before < grown and shrunk < grown
    print(f"num_replicas update: {load.ok} ok, {len(load.failures)} failed")


def test_light_option_update_applies_without_restart(detached: Detached) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    before = detached.pids("fruit", "FruitMarket")
    with Load(f"http://127.0.0.1:{detached.http_port}/fruit", body=["ORANGE", 1]) as load:
        detached.deploy(fruit_config(FruitMarket={"max_ongoing_requests": 3}))
        wait_for(
            lambda: (
                detached.app("fruit")["deployments"]["FruitMarket"]["deployment_config"][  # type: ignore[index]
                    "max_ongoing_requests"
                ]
                == 3
            ),
            message="new max_ongoing_requests",
        )
        detached.wait_running("fruit")
    assert load.failures == [], load.failures[:5]
    assert detached.pids("fruit", "FruitMarket") == before
    print(f"light update: {load.ok} ok, {len(load.failures)} failed")


def test_code_and_actor_option_updates_roll_replicas_over(detached: Detached) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    before = detached.pids("fruit", "FruitMarket")
    url = f"http://127.0.0.1:{detached.http_port}/fruit"
    with Load(url, body=["MANGO", 1]) as load:
        detached.deploy(fruit_config(FruitMarket={"ray_actor_options": {"num_cpus": 0.5}}))
        wait_for(
            lambda: (
                detached.app("fruit")["status"] == "DEPLOYING"  # type: ignore[index]
                or not (detached.pids("fruit", "FruitMarket") & before)
            ),
            message="the rollout to start",
        )
        detached.wait_running("fruit")
        wait_for(lambda: not (detached.pids("fruit", "FruitMarket") & before), message="rollover")
    assert load.failures == [], load.failures[:5]
    assert len(detached.pids("fruit", "FruitMarket")) == 2
    print(f"ray_actor_options update: {load.ok} ok, {len(load.failures)} failed")

    # A code change: the module now doubles every price.
    source = (detached.dir / "fruit.py").read_text()
    (detached.dir / "fruit.py").write_text(
        source.replace("return self.price * amount", "return 2 * self.price * amount")
    )
    try:
        mangos = detached.pids("fruit", "MangoStand")
        with Load(url, body=["MANGO", 1]) as load:
            mark = len(load.answers)
            detached.cli("deploy", "config.yaml")
            wait_for(lambda: 6 in load.since(mark), message="the new code's answer")
            detached.wait_running("fruit")
        assert load.failures == [], load.failures[:5]
        assert not (detached.pids("fruit", "MangoStand") & mangos)
        print(f"code update: {load.ok} ok, {len(load.failures)} failed")
    finally:
        (detached.dir / "fruit.py").write_text(source)


# ------------------------------------------------------------------ declarative semantics


def test_apps_missing_from_the_config_are_deleted_imperative_ones_kept(
    detached: Detached,
) -> None:
    two = fruit_config()
    two["applications"].append(
        {"name": "fruit2", "route_prefix": "/fruit2", "import_path": "fruit:app"}
    )
    detached.deploy(two)
    detached.wait_running("fruit", "fruit2")
    script = textwrap.dedent(
        """
        import schooner as serve

        @serve.deployment
        def hello(request):
            return "hi"

        serve.run(hello.bind(), name="imperative", route_prefix="/hi")
        """
    )
    (detached.dir / "imperative.py").write_text(script)
    subprocess.run(
        [sys.executable, "imperative.py"],
        cwd=detached.dir,
        env={**os.environ, "SCHOONER_ADDRESS": detached.admin},
        check=True,
        timeout=60,
    )
    # The driver exited; its app keeps running on the detached instance.
    assert detached.http.get("/hi").text == "hi"
    # A new process sees it with serve.status(), without starting anything.
    look = "import schooner as serve; print(sorted(serve.status().applications))"
    out = subprocess.run(
        [sys.executable, "-c", look],
        cwd=detached.dir,
        env={**os.environ, "SCHOONER_ADDRESS": detached.admin},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "['fruit', 'fruit2', 'imperative']"
    assert detached.details("imperative")["applications"].keys() == {"imperative"}
    assert detached.details("declarative")["applications"].keys() == {"fruit", "fruit2"}
    detached.deploy(fruit_config())
    wait_for(lambda: "fruit2" not in detached.details()["applications"], message="fruit2 gone")
    assert detached.http.get("/fruit2").status_code == 404
    assert detached.http.get("/hi").text == "hi"
    assert detached.app("imperative")["source"] == "imperative"  # type: ignore[index]
    detached.api.delete("/api/serve/applications/")
    assert detached.details()["applications"] == {}


def test_bad_configs_are_rejected_and_change_nothing(detached: Detached) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    pids = detached.pids("fruit", "FruitMarket")
    dup_name = fruit_config()
    dup_name["applications"].append(dict(dup_name["applications"][0], route_prefix="/x"))
    (detached.dir / "bad.yaml").write_text(yaml.safe_dump(dup_name))
    out = detached.cli("deploy", "bad.yaml", check=False)
    assert out.returncode == 1 and "'fruit' is used twice" in out.stderr
    dup_route = fruit_config()
    dup_route["applications"].append(
        {"name": "b", "route_prefix": "/fruit", "import_path": "fruit:app"}
    )
    (detached.dir / "bad.yaml").write_text(yaml.safe_dump(dup_route))
    out = detached.cli("deploy", "bad.yaml", check=False)
    assert out.returncode == 1 and "route_prefix '/fruit'" in out.stderr
    init_args = fruit_config(MangoStand={"init_args": [1]})
    (detached.dir / "bad.yaml").write_text(yaml.safe_dump(init_args))
    out = detached.cli("deploy", "bad.yaml", check=False)
    assert out.returncode == 1 and "'init_args' cannot be set in a config file" in out.stderr
    # The same documents through the REST API: 400 with the reason.
    resp = detached.api.put("/api/serve/applications/", json=dup_route)
    assert resp.status_code == 400 and "route_prefix" in resp.text
    assert detached.app("fruit")["status"] == "RUNNING"  # type: ignore[index]
    assert detached.pids("fruit", "FruitMarket") == pids


def test_a_broken_redeploy_keeps_the_previous_version_serving(detached: Detached) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    broken = fruit_config()
    broken["applications"][0]["import_path"] = "fruit:no_such_app"
    detached.deploy(broken)
    app = wait_for(
        lambda: (a := detached.app("fruit")) and a["status"] == "DEPLOY_FAILED" and a,
        message="DEPLOY_FAILED",
    )
    assert "no attribute 'no_such_app'" in app["message"]
    assert price(detached, "MANGO", 1) == 3
    wrong_dep = fruit_config(NoSuchStand={})
    wrong_dep["applications"][0]["deployments"].append({"name": "NoSuchStand"})
    detached.deploy(wrong_dep)
    app = wait_for(
        lambda: (a := detached.app("fruit")) and "NoSuchStand" in a["message"] and a,
        message="message naming the unknown deployment",
    )
    assert app["status"] == "DEPLOY_FAILED" and "MangoStand" in app["message"]
    assert price(detached, "MANGO", 1) == 3
    detached.deploy(fruit_config())
    detached.wait_running("fruit")


def test_builder_args_from_config_and_command_line(detached: Detached) -> None:
    (detached.dir / "greeter.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            import schooner as serve

            class Args(BaseModel):
                greeting: str = "hello"
                times: int = 1

            @serve.deployment
            class Greeter:
                def __init__(self, greeting: str, times: int):
                    self.text = " ".join([greeting] * times)

                def __call__(self, request):
                    return self.text

            def build(args: Args):
                return Greeter.bind(args.greeting, args.times)
            """
        )
    )
    config = {
        "applications": [
            {
                "name": "greet",
                "route_prefix": "/greet",
                "import_path": "greeter:build",
                "args": {"greeting": "ahoy", "times": 2},
            }
        ]
    }
    detached.deploy(config)
    detached.wait_running("greet")
    assert detached.http.get("/greet").text == "ahoy ahoy"
    detached.cli("deploy", "config.yaml", "greeting=hey")
    wait_for(lambda: detached.http.get("/greet").text == "hey hey", message="new args")
    config["applications"][0]["args"] = {"times": "many"}
    detached.deploy(config)
    app = wait_for(
        lambda: (a := detached.app("greet")) and a["status"] == "DEPLOY_FAILED" and a,
        message="bad args rejected",
    )
    assert "times" in app["message"]
    detached.api.delete("/api/serve/applications/")


# ------------------------------------------------------------------------- the REST API


def kuberay_body(config: dict[str, Any]) -> bytes:
    """As KubeRay sends serveConfigV2: compact JSON, keys sorted at every level."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def test_kuberay_flow(detached: Detached) -> None:
    config = fruit_config()
    resp = detached.api.put(
        "/api/serve/applications/",
        content=kuberay_body(config),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 200 and resp.content == b""
    assert resp.elapsed.total_seconds() < 2

    def all_running() -> bool:
        body = detached.details("declarative")
        apps = body["applications"]
        return bool(apps) and all(a["status"] == "RUNNING" for a in apps.values())

    wait_for(all_running, 60, message="KubeRay's readiness (every app RUNNING)")
    assert price(detached, "PEAR", 2) == 8
    config = fruit_config(PearStand={"user_config": {"price": 10}})
    resp = detached.api.put("/api/serve/applications/", content=kuberay_body(config))
    assert resp.status_code == 200
    wait_for(lambda: price(detached, "PEAR", 2) == 20, message="the new price")
    wait_for(all_running, 60, message="RUNNING again")
    # KubeRay's requeue: the same body again changes nothing.
    resp = detached.api.put("/api/serve/applications/", content=kuberay_body(config))
    assert resp.status_code == 200 and all_running()


def test_rest_endpoints_status_codes(detached: Detached) -> None:
    api = detached.api
    version = api.get("/api/ray/version").json()
    assert version["version"] == "4" and version["ray_version"]
    assert api.get("/api/serve/applications").status_code == 404
    bogus = api.get("/api/serve/applications/", params={"api_type": "bogus"})
    assert bogus.status_code == 400
    assert (
        bogus.text == "Invalid 'api_type' value: 'bogus'. Must be one of: imperative, declarative"
    )
    assert api.put("/api/serve/applications/", json={}).status_code == 400
    for path in ("/api/gcs_healthz", "/api/local_raylet_healthz"):
        resp = api.get(path)
        assert resp.status_code == 200 and resp.text == "success"
    assert detached.http.get("/-/healthz").status_code in (200, 503)


def test_scale_endpoint(detached: Detached) -> None:
    config = fruit_config()
    detached.deploy(config)
    detached.wait_running("fruit")
    path = "/api/v1/applications/fruit/deployments/FruitMarket/scale"
    resp = detached.api.post(path, json={"target_num_replicas": 3})
    assert resp.status_code == 412 and "external_scaler_enabled" in resp.json()["error"]
    config["applications"][0]["external_scaler_enabled"] = True
    detached.deploy(config)
    wait_for(lambda: detached.app("fruit")["external_scaler_enabled"], message="flag")  # type: ignore[index]
    detached.wait_running("fruit")
    assert detached.api.post(path, json={"target_num_replicas": -1}).status_code == 400
    missing = "/api/v1/applications/fruit/deployments/Nope/scale"
    assert detached.api.post(missing, json={"target_num_replicas": 1}).status_code == 404
    resp = detached.api.post(path, json={"target_num_replicas": 3})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: len(detached.pids("fruit", "FruitMarket")) == 3, message="scaled to 3")
    detached.api.delete("/api/serve/applications/")


def test_unknown_keys_are_ignored_but_warned_about(detached: Detached) -> None:
    config = fruit_config(MangoStand={"num_replica": 2})
    config["applications"][0]["route_prefx"] = "/typo"
    (detached.dir / "typo.yaml").write_text(yaml.safe_dump(config))
    out = detached.cli("deploy", "typo.yaml")
    assert "Sent deploy request successfully" in out.stdout
    assert "num_replica: unknown key, ignored; did you mean 'num_replicas'?" in out.stderr
    assert "route_prefx: unknown key, ignored; did you mean 'route_prefix'?" in out.stderr
    detached.wait_running("fruit")
    app = detached.app("fruit")
    assert app is not None
    assert "num_replica: unknown key" in app["message"]
    assert price(detached, "MANGO", 1) == 3
    detached.deploy(fruit_config())
    wait_for(lambda: detached.app("fruit")["message"] == "", message="the warning to go")  # type: ignore[index]


def test_deleting_another_application_under_load_fails_nothing(detached: Detached) -> None:
    two = fruit_config()
    two["applications"].append(
        {"name": "other", "route_prefix": "/other", "import_path": "fruit:app"}
    )
    detached.deploy(two)
    detached.wait_running("fruit", "other")
    with Load(f"http://127.0.0.1:{detached.http_port}/fruit", body=["PEAR", 1]) as load:
        detached.deploy(fruit_config())
        wait_for(lambda: "other" not in detached.details()["applications"], message="deleted")
        mark = load.ok
        wait_for(lambda: load.ok > mark + 100, message="more answers after the deletion")
    assert load.failures == [], load.failures[:5]
    print(f"deleting another app: {load.ok} ok, {len(load.failures)} failed")
