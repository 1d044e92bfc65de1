"""Traffic policies through config files, the admin API, the CLI and status, on a real
instance (``schooner start``, ``schooner deploy``, real HTTP to the admin API).

What is checked here is the controller's state (``serve.get_traffic``, the admin
API, status); how requests are then split is tested with the data path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from detached import Detached
from helpers import wait_for

APP_CODE = """
import os

import schooner as serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Version:
    async def __call__(self, request):
        return {"pid": os.getpid()}


app = Version.bind()
"""

SPLIT = [{"app": "app", "weight": 0.9}, {"app": "app_canary", "weight": 0.1}]
SHADOWS = [{"app": "app_shadow", "fraction": 0.5}]


def entry(name: str, route_prefix: str | None = None, **more: Any) -> dict[str, Any]:
    return {"name": name, "route_prefix": route_prefix, "import_path": "tapp:app", **more}


def config(
    traffic: Any = None, *extra: dict[str, Any], with_traffic: bool = True
) -> dict[str, Any]:
    owner = entry("app", "/")
    if with_traffic:
        owner["traffic"] = {"split": SPLIT, "shadows": SHADOWS} if traffic is None else traffic
    return {"applications": [owner, entry("app_canary"), entry("app_shadow"), *extra]}


def get_traffic_via_python(inst: Detached, app: str) -> dict[str, Any]:
    """``serve.get_traffic(app)`` from a driver attached to the instance."""
    code = f"import json, schooner as serve; print(json.dumps(serve.get_traffic({app!r})))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=inst.dir,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SCHOONER_ADDRESS": inst.admin},
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def traffic(inst: Detached, app: str = "app") -> dict[str, Any]:
    resp = inst.api.get(f"/api/schooner/traffic/{app}")
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def policy(inst: Detached, app: str = "app") -> dict[str, Any]:
    body = traffic(inst, app)
    return {"split": body["split"], "shadows": body["shadows"]}


def all_pids(inst: Detached) -> dict[str, set[int]]:
    return {name: inst.pids(name, "Version") for name in ("app", "app_canary", "app_shadow")}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Detached]:
    workdir = tmp_path_factory.mktemp("traffic")
    (workdir / "tapp.py").write_text(APP_CODE)
    instance = Detached(workdir)
    old = os.environ.get("SCHOONER_METRICS_REPORT_INTERVAL_S")
    os.environ["SCHOONER_METRICS_REPORT_INTERVAL_S"] = "0.3"  # inherited by the instance
    try:
        instance.start()
    finally:
        if old is None:
            del os.environ["SCHOONER_METRICS_REPORT_INTERVAL_S"]
        else:
            os.environ["SCHOONER_METRICS_REPORT_INTERVAL_S"] = old
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def deployed(inst: Detached) -> Detached:
    """The three applications running, with the config's policy on 'app' and none on the
    others (whatever an earlier test left)."""
    for name in ("app_canary", "app_shadow"):
        inst.api.put(f"/api/schooner/traffic/{name}", json={})
    inst.deploy(config())
    inst.wait_running("app", "app_canary", "app_shadow")
    wait_for(lambda: policy(inst)["split"] == {"app": 0.9, "app_canary": 0.1})
    return inst


def test_a_config_traffic_section_sets_the_policy_everywhere(deployed: Detached) -> None:
    inst = deployed
    expected = {"split": {"app": 0.9, "app_canary": 0.1}, "shadows": {"app_shadow": 0.5}}
    assert get_traffic_via_python(inst, "app") == expected
    assert policy(inst) == expected
    assert policy(inst, "app_canary") == {"split": {}, "shadows": {}}
    # The details carry it when asked; by default they keep exactly Ray's keys.
    details = inst.api.get("/api/serve/applications/", params={"include": "traffic"}).json()
    assert details["applications"]["app"]["traffic"] == expected
    assert details["applications"]["app_canary"]["traffic"] is None
    assert "traffic" not in inst.details()["applications"]["app"]
    # The config round trip keeps the section, and sending it back changes nothing.
    printed = inst.cli("config", "--name", "app").stdout
    section = yaml.safe_load(printed)["traffic"]
    assert section == {"split": SPLIT, "shadows": SHADOWS}
    entries = list(yaml.safe_load_all(inst.cli("config").stdout))
    assert sorted(e["name"] for e in entries) == ["app", "app_canary", "app_shadow"]
    inst.deploy({"applications": entries}, name="printed.yaml")
    assert policy(inst) == expected
    # The CLI.
    out = inst.cli("traffic", "app").stdout
    assert "app_canary  0.1" in out and "app_shadow  0.5" in out, out
    assert "REQ/S" in out and "P99 MS" in out, out
    status = yaml.safe_load(inst.cli("status").stdout)
    assert status["applications"]["app"]["traffic"] == expected
    assert "traffic" not in status["applications"]["app_canary"]
    code = (
        "import json, schooner as serve; s = serve.status().applications; "
        "print(json.dumps([s['app'].traffic, s['app_canary'].traffic]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=inst.dir,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SCHOONER_ADDRESS": inst.admin},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [expected, None]


def test_changing_only_the_weights_changes_the_policy_without_restarting_replicas(
    deployed: Detached,
) -> None:
    inst = deployed
    before = all_pids(inst)
    assert all(before.values()), before
    half = [{"app": "app", "weight": 0.5}, {"app": "app_canary", "weight": 0.5}]
    inst.deploy(config({"split": half}))
    wait_for(
        lambda: policy(inst) == {"split": {"app": 0.5, "app_canary": 0.5}, "shadows": {}},
        message="the new weights",
    )
    # An entry without 'traffic' leaves the policy as it is ...
    inst.deploy(config(with_traffic=False))
    assert policy(inst) == {"split": {"app": 0.5, "app_canary": 0.5}, "shadows": {}}
    # ... and 'traffic: {}' removes it.
    inst.deploy(config({}))
    wait_for(lambda: policy(inst) == {"split": {}, "shadows": {}}, message="no policy")
    inst.wait_running("app", "app_canary", "app_shadow")
    assert all_pids(inst) == before


BAD_SECTIONS = [
    pytest.param(
        {"split": [{"app": "app", "weight": 0.5}, {"app": "nope", "weight": 0.5}]},
        None,
        ["traffic of application 'app'", "no application 'nope'"],
        id="unknown-app",
    ),
    pytest.param(
        {"split": [{"app": "app", "weight": 0.8}, {"app": "app_canary", "weight": 0.1}]},
        None,
        ["applications[0] ('app').traffic", "sum to 0.9"],
        id="weights-sum-to-0.9",
    ),
    pytest.param(
        {"split": [{"app": "app_canary", "weight": 0.5}, {"app": "app_canary", "weight": 0.5}]},
        None,
        ["applications[0] ('app').traffic", "split[1] ('app_canary')", "listed twice"],
        id="app-twice",
    ),
    pytest.param(
        {"shadows": [{"app": "app_shadow", "fraction": 0.5}]},
        {"shadows": {"app": 0.1}},
        ["cycle of shadows", "app_shadow -> app -> app_shadow"],
        id="shadow-cycle",
    ),
]


@pytest.mark.parametrize(("section", "shadow_section", "words"), BAD_SECTIONS)
def test_a_bad_traffic_section_rejects_the_whole_document(
    deployed: Detached, section: dict[str, Any], shadow_section: Any, words: list[str]
) -> None:
    inst = deployed
    before = policy(inst)
    pids = all_pids(inst)
    bad = config(section, entry("extra"))  # would add an application if it were accepted
    if shadow_section is not None:
        bad["applications"][2]["traffic"] = shadow_section
    (inst.dir / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = inst.cli("deploy", "bad.yaml", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    for word in words:
        assert word in out.stderr, out.stderr
    resp = inst.api.put("/api/serve/applications/", json=bad)
    assert resp.status_code == 400
    for word in words:
        assert word in resp.text, resp.text
    # Nothing changed: no new application, the same policies, the same replicas.
    assert "extra" not in inst.details()["applications"]
    assert policy(inst) == before
    assert policy(inst, "app_shadow") == {"split": {}, "shadows": {}}
    assert all_pids(inst) == pids


def test_the_admin_put_of_a_config_sets_the_policy(deployed: Detached) -> None:
    inst = deployed
    doc = config({"split": {"app": 0.7, "app_canary": 0.3}, "shadows": {"app_shadow": 0.2}})
    resp = inst.api.put("/api/serve/applications/", json=doc)
    assert resp.status_code == 200, resp.text
    assert policy(inst) == {
        "split": {"app": 0.7, "app_canary": 0.3},
        "shadows": {"app_shadow": 0.2},
    }


def test_schooner_traffic_set_shadow_and_clear(deployed: Detached) -> None:
    inst = deployed
    out = inst.cli("traffic", "app", "--set", "app=0.8", "app_canary=0.2").stdout
    assert "app_canary  0.2" in out, out
    assert policy(inst) == {
        "split": {"app": 0.8, "app_canary": 0.2},
        "shadows": {"app_shadow": 0.5},
    }
    inst.cli("traffic", "app", "--shadow", "app_shadow=0.25", "--shadow", "app_canary=1")
    assert policy(inst)["shadows"] == {"app_shadow": 0.25, "app_canary": 1.0}
    inst.cli("traffic", "app", "--shadow", "app_canary=0")
    assert policy(inst)["shadows"] == {"app_shadow": 0.25}
    out = inst.cli("traffic", "app", "--clear").stdout
    assert "Split: none" in out and "Shadows: none" in out, out
    assert policy(inst) == {"split": {}, "shadows": {}}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "app=abc", "app_canary=0.5"], ["--set 'app=abc'", "not a number"]),
        (["--set", "app=0.5"], ["--set app=0.5", "sum to 0.5"]),
        (["--set", "app_canary"], ["--set 'app_canary'", "APP=WEIGHT"]),
        (["--shadow", "app_shadow=2"], ["--shadow 'app_shadow=2'", "between 0 and 1"]),
        (["--set", "app=0.5", "nope=0.5"], ["no application 'nope'"]),
        (["--shadow", "app=0.5"], ["cannot shadow itself"]),
    ],
)
def test_schooner_traffic_bad_input_says_what_is_wrong(
    deployed: Detached, args: list[str], words: list[str]
) -> None:
    inst = deployed
    before = policy(inst)
    out = inst.cli("traffic", "app", *args, check=False)
    assert out.returncode == 1, out.stdout
    for word in words:
        assert word in out.stderr, out.stderr
    assert policy(inst) == before


def test_the_traffic_endpoint(deployed: Detached) -> None:
    inst = deployed
    resp = inst.api.put(
        "/api/schooner/traffic/app", json={"split": {"app": 0.6, "app_canary": 0.4}}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["split"] == {"app": 0.6, "app_canary": 0.4}
    assert resp.json()["shadows"] == {}  # PUT replaces the whole policy
    resp = inst.api.put("/api/schooner/traffic/app", json={"split": {"app": 0.6, "nope": 0.4}})
    assert resp.status_code == 400 and "no application 'nope'" in resp.json()["error"]
    resp = inst.api.put("/api/schooner/traffic/app", json={"split": [{"app": "app"}]})
    assert resp.status_code == 400 and "'weight' is missing" in resp.json()["error"]
    resp = inst.api.put("/api/schooner/traffic/app", content=b"{not json")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    assert inst.api.get("/api/schooner/traffic/nope").status_code == 404
    assert inst.api.put("/api/schooner/traffic/nope", json={}).status_code == 404
    assert policy(inst)["split"] == {"app": 0.6, "app_canary": 0.4}
    # Rates: the owner answers requests (until the data path splits them, all of them).
    rates = traffic(inst)["rates"]
    assert set(rates) == {"app", "app_canary"}
    for _ in range(30):
        assert inst.http.get("/").status_code == 200

    def counted() -> dict[str, Any] | None:
        app = traffic(inst)["rates"]["app"]
        return app if app["request_rate"] > 0 else None

    app_rates = wait_for(counted, timeout_s=30, message="the requests in the rates")
    assert app_rates["error_rate"] == 0.0
    assert app_rates["p99_ms"] is not None and app_rates["p99_ms"] > 0


@pytest.mark.slow
def test_the_policy_survives_a_head_restart(tmp_path: Path) -> None:
    (tmp_path / "tapp.py").write_text(APP_CODE)
    inst = Detached(tmp_path)
    try:
        inst.start()
        inst.deploy(config())
        inst.wait_running("app", "app_canary", "app_shadow")
        inst.cli("traffic", "app", "--set", "app=0.75", "app_canary=0.25")
        expected = {"split": {"app": 0.75, "app_canary": 0.25}, "shadows": {"app_shadow": 0.5}}
        assert policy(inst) == expected
        pids = all_pids(inst)
        old = inst.api.get("/api/schooner/instance").json()["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: inst.api.get("/api/schooner/instance").json()["pid"] != old,
            timeout_s=30,
            message="a new head to answer",
        )
        inst.wait_running("app", "app_canary", "app_shadow")
        # The checkpointed policy (changed after the config) comes back, not the config's.
        assert policy(inst) == expected
        assert get_traffic_via_python(inst, "app") == expected
        assert all_pids(inst) == pids
    finally:
        inst.stop()
