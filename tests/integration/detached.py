"""A detached instance driven through the `schooner` command, and a `schooner run` in the
foreground, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import free_port, schooner_processes, wait_for

EXAMPLES = Path(__file__).parents[2] / "examples"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "schooner.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"schooner {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Detached:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.http_port = free_port()
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30)
        self.api = httpx.Client(base_url=self.admin, timeout=30)
        #: The instance info once started (``GET /api/schooner/instance``); None before.
        self.info: dict[str, Any] | None = None

    def cli(self, *args: str, check: bool = True) -> Any:
        return cli(*args, cwd=self.dir, env={"SCHOONER_ADDRESS": self.admin}, check=check)

    def details(self, api_type: str | None = None) -> dict[str, Any]:
        params = {"api_type": api_type} if api_type else {}
        resp = self.api.get("/api/serve/applications/", params=params)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def app(self, name: str) -> dict[str, Any] | None:
        app: dict[str, Any] | None = self.details()["applications"].get(name)
        return app

    def wait_running(self, *names: str, timeout_s: float = 60) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            apps = self.details()["applications"]
            for name in names:
                status = apps.get(name, {}).get("status")
                if status == "DEPLOY_FAILED":
                    raise AssertionError(apps[name]["message"])
                if status != "RUNNING":
                    return None
            return apps

        return wait_for(ready, timeout_s, message=f"{names} RUNNING")

    def pids(self, app: str, deployment: str) -> set[int]:
        deps = self.details()["applications"][app]["deployments"]
        return {r["pid"] for r in deps[deployment]["replicas"] if r["state"] == "RUNNING"}

    def deploy(self, config: dict[str, Any], name: str = "config.yaml") -> Any:
        (self.dir / name).write_text(yaml.safe_dump(config))
        return self.cli("deploy", name)

    def start(self, *extra: str) -> Any:
        """``schooner start`` on this instance's free ports; returns the command's result."""
        out = cli(
            "start",
            "--http-port",
            str(self.http_port),
            "--admin-port",
            str(self.admin_port),
            *extra,
            cwd=self.dir,
        )
        self.info = self.api.get("/api/schooner/instance").json()
        return out

    def stop(self) -> None:
        """``schooner shutdown``; fails the test if any of its processes is left.

        Without instance info (never started, or ``schooner start`` failed) there is no
        session to check."""
        self.http.close()
        self.api.close()
        cli("shutdown", "-y", "-a", self.admin, cwd=self.dir, check=False)
        if self.info is None:
            return
        session = self.info["session"]
        left = [p for p in schooner_processes() if session in p[1]]
        for pid, _ in left:
            os.kill(pid, 9)
        assert not left, f"schooner shutdown left processes behind: {left}"


def fruit_config(**overrides: Any) -> dict[str, Any]:
    deployments = [
        {"name": "MangoStand", "user_config": {"price": 3}},
        {"name": "OrangeStand", "user_config": {"price": 2}},
        {"name": "PearStand", "user_config": {"price": 4}},
        {"name": "FruitMarket", "num_replicas": 2},
    ]
    for dep in deployments:
        dep.update(overrides.get(dep["name"], {}))
    return {
        "applications": [
            {
                "name": "fruit",
                "route_prefix": "/fruit",
                "import_path": "fruit:app",
                "deployments": deployments,
            }
        ]
    }


class Foreground:
    """A `schooner run ...` process whose output is collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "schooner.cli.main", "run", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_line(self, text: str, after: int = 0, timeout_s: float = 60) -> int:
        def seen() -> int:
            for i, line in enumerate(self.lines[after:], start=after):
                if text in line:
                    return i + 1
            if self.proc.poll() is not None:
                raise AssertionError("schooner run exited:\n" + "".join(self.lines))
            return 0

        return wait_for(seen, timeout_s, message=f"output {text!r}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)
