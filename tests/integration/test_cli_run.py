"""`schooner run` in the foreground: config files, --reload, and using a running instance."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from detached import EXAMPLES, Detached, Foreground, cli, fruit_config
from helpers import free_port, schooner_processes, wait_for


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "fruit.py", tmp_path / "fruit.py")
    return tmp_path


def test_run_config_file_in_the_foreground(workdir: Path) -> None:
    port = free_port()
    config = fruit_config()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (workdir / "fruit.yaml").write_text(yaml.safe_dump(config))
    run = Foreground(["fruit.yaml", "--admin-port", "-1"], workdir)
    try:
        run.wait_line("serving application 'fruit'")
        resp = httpx.post(f"http://127.0.0.1:{port}/fruit", json=["MANGO", 2], timeout=10)
        assert resp.json() == 6
    finally:
        assert run.stop() == 0


def test_run_single_application_config_form(workdir: Path) -> None:
    port = free_port()
    (workdir / "single.yaml").write_text(
        yaml.safe_dump(
            {
                "import_path": "fruit:app",
                "runtime_env": {},
                "port": port,
                "host": "127.0.0.1",
                "deployments": [{"name": "PearStand", "user_config": {"price": 5}}],
            }
        )
    )
    run = Foreground(["single.yaml", "--admin-port", "-1"], workdir)
    try:
        run.wait_line("serving application 'default'")
        resp = httpx.post(f"http://127.0.0.1:{port}/", json=["PEAR", 2], timeout=10)
        assert resp.json() == 10
    finally:
        assert run.stop() == 0


def test_run_reload_redeploys_when_code_changes(workdir: Path) -> None:
    port = free_port()
    (workdir / "echo.py").write_text(
        textwrap.dedent(
            """
            import schooner as serve

            @serve.deployment
            class Echo:
                def __call__(self, request):
                    return "version 1"

            app = Echo.bind()
            """
        )
    )
    run = Foreground(["echo:app", "--reload", "--port", str(port), "--admin-port", "-1"], workdir)
    try:
        line = run.wait_line("serving application 'default'")
        url = f"http://127.0.0.1:{port}/"
        assert httpx.get(url, timeout=10).text == "version 1"
        source = (workdir / "echo.py").read_text()
        (workdir / "echo.py").write_text(source.replace("version 1", "version 2"))
        line = run.wait_line("Change detected", after=line)
        run.wait_line("serving application 'default'", after=line)
        assert httpx.get(url, timeout=10).text == "version 2"
        # A syntax error is reported; the previous version keeps serving.
        (workdir / "echo.py").write_text(source.replace("return", "return return"))
        line = run.wait_line("DEPLOY_FAILED", after=line)
        assert httpx.get(url, timeout=10).text == "version 2"
        (workdir / "echo.py").write_text(source.replace("version 1", "version 3"))
        run.wait_line("serving application 'default'", after=line)
        assert httpx.get(url, timeout=10).text == "version 3"
    finally:
        assert run.stop() == 0


@pytest.fixture
def detached(workdir: Path) -> Iterator[Detached]:
    inst = Detached(workdir)
    inst.start()
    yield inst
    inst.stop()


def test_run_uses_a_running_instance_and_leaves_it_running(
    workdir: Path, detached: Detached
) -> None:
    run = Foreground(
        ["fruit:app", "--name", "fg", "--route-prefix", "/fg"],
        workdir,
        env={"SCHOONER_ADDRESS": detached.admin},
    )
    try:
        run.wait_line("serving application 'fg'")
        assert detached.http.post("/fg", json=["MANGO", 1]).json() == 3
        assert detached.app("fg")["source"] == "imperative"  # type: ignore[index]
    finally:
        assert run.stop() == 0
    # Its application is gone; the instance is still up.
    assert "fg" not in detached.details()["applications"]
    assert detached.api.get("/api/gcs_healthz").text == "success"


def test_shutdown_without_an_instance_says_so(workdir: Path) -> None:
    out = cli("shutdown", "-y", "-a", f"http://127.0.0.1:{free_port()}", cwd=workdir, check=False)
    assert out.returncode == 1 and "No Schooner instance answers" in out.stderr


def test_killing_a_detached_instance_leaves_nothing_behind(workdir: Path) -> None:
    inst = Detached(workdir)
    inst.start()
    info = inst.info
    inst.deploy(fruit_config())
    inst.wait_running("fruit")
    session = info["session"]
    ours = [p for p in schooner_processes() if session in p[1]]
    assert len(ours) >= 7  # supervisor, head, proxy, five replicas (and maybe a spare)
    os.kill(info["supervisor_pid"], signal.SIGKILL)
    wait_for(
        lambda: not [p for p in schooner_processes() if session in p[1]],
        timeout_s=15,
        message="every process of the killed instance to exit",
    )
    inst.http.close()
    inst.api.close()


def test_start_without_http_proxy(workdir: Path) -> None:
    inst = Detached(workdir)
    out = inst.start("--proxy-location", "Disabled")
    try:
        assert "no HTTP proxy" in out.stdout
        details = inst.details()
        assert details["proxies"] == {} and details["proxy_location"] == "Disabled"
        with pytest.raises(httpx.ConnectError):
            inst.http.get("/-/healthz")
    finally:
        inst.stop()


def test_run_config_reload_rereads_the_file(workdir: Path) -> None:
    port = free_port()
    config = fruit_config()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (workdir / "fruit.yaml").write_text(yaml.safe_dump(config))
    run = Foreground(["fruit.yaml", "--reload", "--admin-port", "-1"], workdir)
    url = f"http://127.0.0.1:{port}/fruit"
    try:
        line = run.wait_line("serving application 'fruit'")
        assert httpx.post(url, json=["MANGO", 1], timeout=10).json() == 3
        config = fruit_config(MangoStand={"user_config": {"price": 9}})
        config["http_options"] = {"host": "127.0.0.1", "port": port}
        (workdir / "fruit.yaml").write_text(yaml.safe_dump(config))
        line = run.wait_line("Change detected", after=line)
        wait_for(
            lambda: httpx.post(url, json=["MANGO", 1], timeout=10).json() == 9,
            message="the price from the edited file",
        )
        (workdir / "fruit.yaml").write_text("applications: [")
        run.wait_line("Not redeployed", after=line)
        assert httpx.post(url, json=["MANGO", 1], timeout=10).json() == 9
    finally:
        assert run.stop() == 0


def test_run_with_reload_on_a_shared_instance_leaves_other_apps_alone(
    workdir: Path, detached: Detached
) -> None:
    detached.deploy(fruit_config())
    detached.wait_running("fruit")
    (workdir / "echo.py").write_text(
        textwrap.dedent(
            """
            import schooner as serve

            @serve.deployment
            def echo(request):
                return "echo"

            app = echo.bind()
            """
        )
    )
    run = Foreground(
        ["echo:app", "--reload", "--name", "echo", "--route-prefix", "/echo"],
        workdir,
        env={"SCHOONER_ADDRESS": detached.admin},
    )
    try:
        run.wait_line("serving application 'echo'")
        assert detached.http.get("/echo").text == "echo"
        assert detached.app("fruit")["status"] == "RUNNING"  # type: ignore[index]
    finally:
        assert run.stop() == 0
    assert "echo" not in detached.details()["applications"]
    assert detached.http.post("/fruit", json=["PEAR", 1]).json() == 4


def test_run_exits_when_its_instance_is_shut_down(workdir: Path, detached: Detached) -> None:
    run = Foreground(
        ["fruit:app", "--name", "fg", "--route-prefix", "/fg"],
        workdir,
        env={"SCHOONER_ADDRESS": detached.admin},
    )
    run.wait_line("serving application 'fg'")
    cli("shutdown", "-y", "-a", detached.admin, cwd=workdir)
    assert run.proc.wait(30) == 1
    run.stop()
    assert any("instance stopped" in line for line in run.lines)
    detached.start()  # again, for the fixture's shutdown


def test_start_block_and_probe_port(workdir: Path) -> None:
    inst = Detached(workdir)
    probe_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schooner.cli.main",
            "start",
            "--block",
            "--http-port",
            str(inst.http_port),
            "--admin-port",
            str(inst.admin_port),
            "--probe-port",
            str(probe_port),
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(
            lambda: inst.api.get("/api/gcs_healthz").status_code == 200, message="the instance"
        )
        probes = httpx.Client(base_url=f"http://127.0.0.1:{probe_port}", timeout=10)
        assert probes.get("/api/healthz").text == "raylet: success\ngcs: success"
        assert probes.get("/api/local_raylet_healthz").text == "success"
        assert probes.get("/api/serve/applications/").status_code == 404
        probes.close()
        assert proc.poll() is None  # still in the foreground
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        assert "instance stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        inst.http.close()
        inst.api.close()
